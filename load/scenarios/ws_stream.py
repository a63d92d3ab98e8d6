"""The video scenario's custom client, without locust (unit-tested in-process): one WebSocket
stream of ``WS /v1/stream`` over websocket-client, its frames sent paced in the calling greenlet
and its answers read in a second one, every frame / drop / connect / end reported through a
locust-style ``fire(request_type=..., name=..., response_time=..., ...)`` callable. Under locust
(gevent monkey-patched sockets) the two greenlets run side by side. Events: see video.py."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import gevent
import websocket
from websocket import ABNF

from load.scenarios.common import env_number, env_text, request_name

SCENARIO = "video"
REQUEST_TYPE = "WS"
DROPPED = request_name(SCENARIO, "dropped")
CONNECT = request_name(SCENARIO, "connect")
END = request_name(SCENARIO, "end")
MODELS = ("mast", "surgical_sam", "swtr_unet")


def frame_name(model: str) -> str:
    return request_name(SCENARIO, f"{model} frame")


class StreamFailure(Exception):
    """A stream refused, cut short or whose counts do not add up (no UIDs in the message)."""


class FrameError(Exception):
    """A frame answered with an error header."""


@dataclass(frozen=True)
class VideoSettings:
    model: str = "mast"
    fps: float = 30.0
    seconds: float = 10.0
    classes: str | None = None
    timeout_s: float = 30.0

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> VideoSettings:
        model = env_text("LOAD_VIDEO_MODEL", cls.model, environ)
        if model not in MODELS:
            raise ValueError(f"LOAD_VIDEO_MODEL must be one of {', '.join(MODELS)}, not {model!r}")
        return cls(
            model=model,
            fps=env_number("LOAD_VIDEO_FPS", cls.fps, environ, minimum=0.1),
            seconds=env_number("LOAD_VIDEO_SECONDS", cls.seconds, environ, minimum=0.1),
            classes=env_text("LOAD_VIDEO_CLASSES", "", environ) or None,
            timeout_s=env_number("LOAD_VIDEO_TIMEOUT_S", cls.timeout_s, environ, minimum=1.0),
        )

    @property
    def frames(self) -> int:
        return max(1, round(self.fps * self.seconds))

    def handshake(self) -> dict[str, Any]:
        message: dict[str, Any] = {"model": self.model, "output": "png"}
        if self.classes and self.model == "surgical_sam":
            message["classes"] = self.classes
        return message


def ws_url(host: str) -> str:
    """http(s)://host[:port][/] → ws(s)://host[:port]/v1/stream."""
    url = host.rstrip("/")
    if url.startswith("https://"):
        url = "wss://" + url[len("https://"):]
    elif url.startswith("http://"):
        url = "ws://" + url[len("http://"):]
    return url + "/v1/stream"


def close_details(data: bytes) -> tuple[int, str]:
    """A close frame's payload → (code, reason); (1005, "") when it carries none (RFC 6455 §7.1.5)."""
    if len(data) < 2:
        return 1005, ""
    return int.from_bytes(data[:2], "big"), data[2:].decode("utf-8", errors="replace")


Fire = Callable[..., None]


@dataclass
class StreamTally:
    """What the reader saw of one stream."""

    sent_at: dict[int, float] = field(default_factory=dict)
    answered: int = 0
    errors: int = 0
    dropped_seen: int = 0  # the server's running total, as last reported
    end: dict[str, Any] | None = None
    closed: tuple[int, str] | None = None  # a close before the end summary
    failure: str | None = None  # the reader's own failure (a timeout, a broken connection)


class VideoStream:
    """One stream: the sender runs in the calling greenlet, the reader in its own."""

    def __init__(self, host: str, settings: VideoSettings, frames: Sequence[bytes], fire: Fire) -> None:
        if not frames:
            raise ValueError("a stream needs frames")
        self.url, self.settings, self.frames, self._fire = ws_url(host), settings, frames, fire
        self.frame_name = frame_name(settings.model)

    def event(self, name: str, response_time: float, length: int = 0, exception: Exception | None = None) -> None:
        self._fire(
            request_type=REQUEST_TYPE, name=name, response_time=response_time, response_length=length,
            exception=exception, context={}, response=None, url=self.url,
        )

    def run(self) -> StreamTally | None:
        """Stream ``settings.frames`` frames; the tally, or None when the stream never opened."""
        started = time.perf_counter()
        try:
            ws = websocket.create_connection(self.url, timeout=self.settings.timeout_s, enable_multithread=True)
        except Exception as error:  # noqa: BLE001 - any connection failure is the event's exception
            failure = StreamFailure(f"connect: {type(error).__name__}")
            self.event(CONNECT, (time.perf_counter() - started) * 1000, exception=failure)
            return None
        reader: gevent.Greenlet | None = None
        tally: StreamTally | None = None
        try:
            ws.send(json.dumps(self.settings.handshake()))
            opcode, data = ws.recv_data()
            if opcode == ABNF.OPCODE_CLOSE:
                code, reason = close_details(data)
                self.event(CONNECT, (time.perf_counter() - started) * 1000,
                           exception=StreamFailure(f"refused ({code}): {reason[:80]}"))
                return None
            ready = json.loads(data)
            if not ready.get("ready"):
                failure = StreamFailure("no ready message")
                self.event(CONNECT, (time.perf_counter() - started) * 1000, exception=failure)
                return None
            self.event(CONNECT, (time.perf_counter() - started) * 1000, len(data))
            tally = StreamTally()
            reader = gevent.spawn(self._read, ws, tally)
            sent = self._send_paced(ws, tally, reader)
            end_sent = time.perf_counter()
            if not reader.dead:
                ws.send(json.dumps({"end": True}))
                reader.join(timeout=self.settings.timeout_s)
            self._finish(tally, sent, (time.perf_counter() - end_sent) * 1000, timed_out=not reader.dead)
            return tally
        except (websocket.WebSocketException, OSError, ValueError) as error:
            if reader is not None:
                reader.join(timeout=1)  # a close the reader is reading says more than a failed send
            seen = tally is not None and (tally.closed or tally.failure)
            problem = end_problem(tally, len(tally.sent_at)) if seen else f"stream broken: {type(error).__name__}"
            self.event(END, 0.0, exception=StreamFailure(problem))
            return None
        finally:
            if reader is not None:
                reader.kill(block=False)
            try:
                ws.close(timeout=1)
            except (websocket.WebSocketException, OSError):
                ws.shutdown()

    def _send_paced(self, ws: websocket.WebSocket, tally: StreamTally, reader: gevent.Greenlet) -> int:
        """Send frame i at start + i / fps (at once when late); stop early if the reader ended."""
        fps, count = self.settings.fps, self.settings.frames
        started = time.perf_counter()
        for index in range(count):
            delay = started + index / fps - time.perf_counter()
            if delay > 0:
                gevent.sleep(delay)
            if reader.dead:  # closed by the server, or the reader failed
                return index
            tally.sent_at[index] = time.perf_counter()
            ws.send_binary(self.frames[index % len(self.frames)])
        return count

    def _read(self, ws: websocket.WebSocket, tally: StreamTally) -> None:
        try:
            while True:
                opcode, data = ws.recv_data()
                if opcode == ABNF.OPCODE_CLOSE:
                    tally.closed = close_details(data)
                    return
                if opcode != ABNF.OPCODE_TEXT:
                    continue  # a binary message with no header before it: not ours to count
                header = json.loads(data)
                if header.get("end"):
                    tally.end = header
                    return
                if "frame" not in header:
                    continue  # a message about the stream, not a frame
                self.on_header(ws, tally, header, len(data))
        except websocket.WebSocketTimeoutException:
            tally.failure = f"no message for {self.settings.timeout_s:g} s"
        except (websocket.WebSocketException, OSError, ValueError) as error:
            tally.failure = f"reader: {type(error).__name__}"

    def on_header(self, ws: websocket.WebSocket, tally: StreamTally, header: dict[str, Any], length: int) -> None:
        index = int(header["frame"])
        self.count_drops(tally, int(header.get("dropped", tally.dropped_seen)))
        if "error" in header:
            tally.errors += 1
            sent = tally.sent_at.get(index)
            self.event(self.frame_name, (time.perf_counter() - sent) * 1000 if sent else 0.0,
                       exception=FrameError(str(header["error"])[:40]))
            return
        opcode, label_map = ws.recv_data()  # the PNG label map follows its header
        if opcode != ABNF.OPCODE_BINARY:
            raise ValueError("a frame header was not followed by its label map")
        length += len(label_map)
        tally.answered += 1
        sent = tally.sent_at.get(index)
        if sent is None:
            raise ValueError(f"an answer for frame {index}, which was never sent")
        self.event(self.frame_name, (time.perf_counter() - sent) * 1000, length)

    def count_drops(self, tally: StreamTally, total: int) -> None:
        """The server reports a running total of dropped frames: one event per new drop."""
        for _ in range(max(0, total - tally.dropped_seen)):
            self.event(DROPPED, 0.0)
        tally.dropped_seen = max(tally.dropped_seen, total)

    def _finish(self, tally: StreamTally, sent: int, drain_ms: float, timed_out: bool) -> None:
        problem = end_problem(tally, sent)
        if tally.end is not None:
            self.count_drops(tally, int(tally.end.get("dropped", tally.dropped_seen)))
        elif timed_out:
            problem = f"no end summary within {self.settings.timeout_s:g} s"
        self.event(END, drain_ms, exception=StreamFailure(problem) if problem else None)


def end_problem(tally: StreamTally, sent: int) -> str | None:
    """Why a stream did not end as it should (None when it did)."""
    if tally.failure:
        return tally.failure
    if tally.end is None:
        if tally.closed is not None:
            code, reason = tally.closed
            return f"closed ({code}) before the end: {reason[:80]}"
        return "no end summary"
    end = tally.end
    frames, answered, errors, dropped = (int(end.get(k, -1)) for k in ("frames", "answered", "errors", "dropped"))
    if frames != sent:
        return f"the server counted {frames} frames, {sent} were sent"
    if answered + errors + dropped != frames:
        return f"{frames - answered - errors - dropped} frame(s) lost (neither answered, refused nor dropped)"
    if answered != tally.answered or errors != tally.errors:
        return (f"the server answered {answered} frames and refused {errors}; "
                f"{tally.answered} and {tally.errors} arrived")
    return None
