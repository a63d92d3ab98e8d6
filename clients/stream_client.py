"""The client side of ``WS /v1/stream``: send frames (paced at the source's rate, or as fast as
possible), collect every answer, and measure latency per frame (send → answer received)."""

from __future__ import annotations

import io
import json
import time
from collections.abc import AsyncIterable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
import numpy as np
from httpx_ws import aconnect_ws
from PIL import Image

from clients.video import latency_summary
from services.postprocess import rle_decode


class StreamRefused(RuntimeError):
    """The server closed the stream at the handshake (``code`` 1008 bad handshake, 1013 full)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"stream refused ({code}): {reason}")
        self.code, self.reason = code, reason


@dataclass
class FrameResult:
    """One frame's answer: its header, the label map (rows, cols) uint8 (None for an error), and
    the latency in ms from sending the frame to receiving its whole answer."""

    index: int
    header: dict[str, Any]
    labels: np.ndarray | None
    latency_ms: float

    @property
    def error(self) -> str | None:
        return self.header.get("error")


@dataclass
class StreamReport:
    ready: dict[str, Any]
    results: list[FrameResult] = field(default_factory=list)
    end: dict[str, Any] = field(default_factory=dict)
    sent: int = 0
    seconds: float = 0.0  # first frame sent → end received

    def latency_ms(self) -> dict[str, float | int | None]:
        """count, mean, p50 / p95 / max latency of the answered frames (ms)."""
        return latency_summary([r.latency_ms for r in self.results if r.error is None])

    @property
    def achieved_fps(self) -> float:
        answered = sum(1 for r in self.results if r.error is None)
        return answered / self.seconds if self.seconds > 0 else 0.0

    @property
    def dropped(self) -> int:
        return int(self.end.get("dropped", 0))


def rle_labels(header: dict[str, Any]) -> np.ndarray:
    """The "rle" output's runs (row-major, starting with a background run) → (rows, cols) labels."""
    shape = tuple(header["size"])
    labels = np.zeros(shape, np.uint8)
    for entry in header["rle"]:
        labels[rle_decode(entry["counts"], shape)] = entry["id"]
    return labels


def _ws_url(url: str) -> str:
    return url.replace("https://", "wss://", 1).replace("http://", "ws://", 1).rstrip("/") + "/v1/stream"


async def stream_frames(
    url: str,
    frames: Iterable[bytes] | AsyncIterable[bytes],
    model: str,
    *,
    output: str = "png",
    classes: str | list[int | str] | None = None,
    threshold: float | None = None,
    reference: str | int | None = None,
    fps: float | None = None,
    on_result: Callable[[FrameResult], None] | None = None,
    timeout_s: float = 120.0,
) -> StreamReport:
    """Stream encoded frames (PNG / JPEG bytes) to ``url``'s /v1/stream; ``fps`` paces the sending
    (None: as fast as possible). Returns once the server's end message arrives."""
    handshake: dict[str, Any] = {"model": model, "output": output}
    for key, value in (("classes", classes), ("threshold", threshold), ("reference", reference)):
        if value is not None:
            handshake[key] = value
    sent_at: dict[int, float] = {}
    async with httpx.AsyncClient(timeout=timeout_s) as http, aconnect_ws(_ws_url(url), http) as ws:
        await ws.send_text(json.dumps(handshake))
        try:
            ready = json.loads(await ws.receive_text())
        except Exception as error:  # noqa: BLE001 - the server closed the handshake
            code = getattr(error, "code", None) or 0
            raise StreamRefused(int(code), str(getattr(error, "reason", "") or error)) from None
        report = StreamReport(ready)
        started = time.perf_counter()

        async def send_all() -> None:
            iterator = frames.__aiter__() if hasattr(frames, "__aiter__") else _aiter(frames)
            index = 0
            async for data in iterator:
                if fps:
                    delay = started + index / fps - time.perf_counter()
                    if delay > 0:
                        await anyio.sleep(delay)
                sent_at[index] = time.perf_counter()
                await ws.send_bytes(data)
                index += 1
            report.sent = index
            await ws.send_text(json.dumps({"end": True}))

        async with anyio.create_task_group() as group:
            group.start_soon(send_all)
            while True:
                header = json.loads(await ws.receive_text())
                if header.get("end"):
                    report.end = header
                    break
                if "frame" not in header:  # a message about the stream, not a frame
                    continue
                labels = None
                if "error" not in header:
                    if output == "png":
                        labels = np.asarray(Image.open(io.BytesIO(await ws.receive_bytes())))
                    else:
                        labels = rle_labels(header)
                index = int(header["frame"])
                result = FrameResult(index, header, labels, (time.perf_counter() - sent_at[index]) * 1000)
                report.results.append(result)
                if on_result is not None:
                    on_result(result)
        report.seconds = time.perf_counter() - started
    return report


async def _aiter(items: Iterable[bytes]):  # noqa: ANN202 - an async generator
    for item in items:
        yield item
