"""One video stream's frames through its model: decode, prepare, the pipeline's stream step
(with the stream's kept state), encode; and where each frame's time went."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import anyio
import numpy as np

from services.codecs.decoded import DecodedImage
from services.codecs.raster import decode_raster
from services.codecs.render import png_bytes
from services.errors import UnsupportedMediaType
from services.pipelines import FRAME_PIPELINES
from services.pipelines.base import Segmentation, StreamState
from services.pipelines.ensemble import GraphTiming, TimedGraphRunner
from services.postprocess import rle_encode
from services.streams.protocol import StreamSettings

_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")


def decode_frame(data: bytes, max_pixels: int) -> DecodedImage:
    """One stream frame, PNG or JPEG → DecodedImage; 415 for anything else, 422 past
    ``max_pixels`` (read from the header: a small file cannot make the API process decode a huge
    image; streams are decoded here, not in the decoder pool, to save the hop)."""
    if not data.startswith(_SIGNATURES):
        raise UnsupportedMediaType("a stream frame must be one PNG or JPEG image per binary message")
    return decode_raster(data, max_pixels)


@dataclass(frozen=True)
class FrameAnswer:
    header: dict[str, Any]  # the text message
    body: bytes | None  # the PNG label map ("png" output), sent after the header


def answer_header(seg: Segmentation, output: str) -> tuple[dict[str, Any], bytes | None]:
    """The frame's label map as the stream's output: pixel counts per label, the task's details
    and extras, and the runs ("rle", row-major, starting with a background run) or a PNG."""
    labels = seg.labels[0]
    counts = np.bincount(labels.ravel(), minlength=256)
    header: dict[str, Any] = {
        "size": [int(labels.shape[0]), int(labels.shape[1])],
        "pixels": {str(label.id): int(counts[label.id]) for label in seg.card.labels if label.id != 0},
        **seg.details,
        **seg.extras,
    }
    if output == "rle":
        header["rle"] = [
            {"id": label.id, "counts": rle_encode(labels == label.id)} for label in seg.card.labels if label.id != 0
        ]
        return header, None
    return header, png_bytes(labels)


@dataclass
class StreamSession:
    """A stream's model, settings and state; ``answer`` segments one frame."""

    settings: StreamSettings
    run_graph_timed: TimedGraphRunner
    max_pixels: int
    state: StreamState = field(default_factory=StreamState)

    async def answer(self, index: int, data: bytes, received_s: float) -> FrameAnswer:
        """Frame ``index`` (bytes received at ``received_s``, ``time.perf_counter``) → its answer;
        raises a typed error for a frame that cannot be segmented. Timing (ms): ``wait`` in the
        stream's slot while its previous frame finished, then decode, preprocess, the graph calls'
        queue / run / hop, post-processing, encoding; ``server`` from arrival to the encoded
        answer, ``non_graph`` the part of it that is not graph run time."""
        card, pipeline = self.settings.card, FRAME_PIPELINES[self.settings.card.task]
        taken_s = time.perf_counter()  # after waiting for the stream's previous frame
        image = await anyio.to_thread.run_sync(decode_frame, data, self.max_pixels)
        decoded_s = time.perf_counter()
        prepared = await anyio.to_thread.run_sync(pipeline.prepare, image, card)
        prepared_s = time.perf_counter()
        calls: list[GraphTiming] = []

        async def run_graph(model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            outputs, timing = await self.run_graph_timed(model, inputs)
            calls.append(timing)
            return outputs

        self.state.index = index
        seg = await pipeline.stream_frame(image, prepared, card, run_graph, self.settings.options, self.state)
        finished_s = time.perf_counter()
        header, body = await anyio.to_thread.run_sync(answer_header, seg, self.settings.output)
        encoded_s = time.perf_counter()
        graph_wall_ms = sum(c.queue_ms + c.run_ms + c.hop_ms for c in calls)
        graph_ms = sum(c.run_ms for c in calls)
        server_ms = (encoded_s - received_s) * 1000
        header["timing"] = {
            "wait_ms": round((taken_s - received_s) * 1000, 3),
            "receive_decode_ms": round((decoded_s - taken_s) * 1000, 3),
            "preprocess_ms": round((prepared_s - decoded_s) * 1000, 3),
            "queue_ms": round(sum(c.queue_ms for c in calls), 3),
            "graph_ms": round(graph_ms, 3),
            "hop_ms": round(sum(c.hop_ms for c in calls), 3),
            "postprocess_ms": round(max(0.0, (finished_s - prepared_s) * 1000 - graph_wall_ms), 3),
            "encode_ms": round((encoded_s - finished_s) * 1000, 3),
            "server_ms": round(server_ms, 3),
            "non_graph_ms": round(server_ms - graph_ms, 3),
            "graph_calls": len(calls),
        }
        return FrameAnswer(header, body)
