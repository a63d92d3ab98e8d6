"""The WebSocket stream protocol of ``WS /v1/stream``: the handshake and the messages.

client → text  {"model": ..., "output": "png" | "rle", "classes": "1,4", "threshold": 0.5,
                "reference": "first" | "previous" | N}
server → text  {"ready": true, "stream": id, ...}            (a bad handshake: close 1008 + reason)
client → binary one frame (PNG or JPEG bytes) per message, numbered by arrival from 0
server → text  {"frame": i, "dropped": d, "size": [rows, cols], "timing": {...}, ...}
         then, for "png", one binary PNG label map of the frame's size ("rle": runs in the header)
server → text  {"frame": i, "error": code, "message": ...}   (the stream goes on)
client → text  {"end": true}
server → text  {"end": true, "frames": n, "answered": a, "errors": e, "dropped": d}, close 1000

Other closes: 1013 past MEDSEG_MAX_STREAMS; 1001 after MEDSEG_STREAM_IDLE_S without a message;
1009 for a message over 16 MiB (the web server's limit); 1011 on an internal failure.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from services.contract import ModelCard
from services.errors import BadInput
from services.pipelines import FRAME_PIPELINES
from services.pipelines.base import StreamOptions, check_threshold
from services.pipelines.class_prompted import parse_classes, promptable_classes

OUTPUTS = ("png", "rle")
REFERENCE_MODES = ("first", "previous")

# WebSocket close codes (RFC 6455 §7.4.1; 1013 from the IANA registry)
NORMAL = 1000
POLICY_VIOLATION = 1008  # a bad handshake or message
TRY_AGAIN_LATER = 1013  # MEDSEG_MAX_STREAMS streams already open
INTERNAL_ERROR = 1011


class HandshakeError(BadInput):
    """A handshake the server refuses (closed with 1008 and the message as reason)."""


@dataclass(frozen=True)
class StreamSettings:
    """A validated handshake: the model, the output kind and the pipeline's stream options."""

    card: ModelCard
    output: str
    options: StreamOptions

    def ready_message(self, stream_id: str) -> dict[str, Any]:
        card, options = self.card, self.options
        message: dict[str, Any] = {
            "ready": True,
            "stream": stream_id,
            "model": card.name,
            "version": card.version,
            "task": card.task,
            "output": self.output,
            "labels": [{"id": label.id, "name": label.name} for label in card.labels],
        }
        if options.threshold is not None:
            message["threshold"] = options.threshold
        if options.reference is not None:
            message["reference"] = options.reference
        if card.task == "class_prompted":
            message["classes"] = list(options.classes or promptable_classes(card))
        return message


def parse_handshake(text: str, cards: dict[str, ModelCard]) -> StreamSettings:
    """The client's first message → settings; HandshakeError (the close reason) otherwise."""
    try:
        message = json.loads(text)
    except ValueError:
        raise HandshakeError("the first message must be a JSON handshake") from None
    if not isinstance(message, dict):
        raise HandshakeError("the handshake must be a JSON object")
    unknown = sorted(set(message) - {"model", "output", "classes", "threshold", "reference"})
    if unknown:
        raise HandshakeError(f"unknown handshake field(s): {', '.join(repr(k)[:24] for k in unknown[:4])}")
    name = message.get("model")
    if not isinstance(name, str) or name not in cards:
        raise HandshakeError(f"'model' must be one of {', '.join(cards)}")
    card = cards[name]
    if card.task not in FRAME_PIPELINES:
        raise HandshakeError(f"{name} ({card.task}) is not a 2-D frame model; stream {', '.join(_frame_models(cards))}")
    output = message.get("output", "png")
    if output not in OUTPUTS:
        raise HandshakeError(f"'output' must be one of {', '.join(OUTPUTS)}")
    fields = FRAME_PIPELINES[card.task].fields
    for field in ("classes", "threshold", "reference"):
        if field in message and field not in fields:
            raise HandshakeError(f"'{field}' does not apply to {name} ({card.task})")
    threshold = message.get("threshold")
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))):
        raise HandshakeError("'threshold' must be a number between 0 and 1")
    classes = message.get("classes")
    if classes is not None and not isinstance(classes, (str, int, list)):
        raise HandshakeError("'classes' must be a string of ids or names, or a list")
    try:
        threshold = check_threshold(threshold, card.threshold) if "threshold" in fields else None
        chosen = parse_classes(_class_text(classes), card) if "classes" in fields else None
    except BadInput as error:
        raise HandshakeError(error.message) from None
    reference = _reference(message.get("reference", "previous")) if "reference" in fields else None
    return StreamSettings(card, output, StreamOptions(threshold, chosen, reference))


def _class_text(value: Any) -> str | None:
    if value is None:
        return None
    return ",".join(str(v) for v in value) if isinstance(value, list) else str(value)


def _reference(value: Any) -> str | int:
    if value in REFERENCE_MODES:
        return str(value)
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 10_000:
        return value
    raise HandshakeError("'reference' must be \"first\", \"previous\" or a whole number of frames (1-10000)")


def _frame_models(cards: dict[str, ModelCard]) -> list[str]:
    return [name for name, card in cards.items() if card.task in FRAME_PIPELINES]


def close_reason(text: str) -> str:
    """A close reason fits in 123 bytes of UTF-8 (RFC 6455 §5.5)."""
    encoded = text.encode("utf-8", errors="backslashreplace")[:123]  # a lone surrogate from JSON cannot be UTF-8
    return encoded.decode("utf-8", errors="ignore")
