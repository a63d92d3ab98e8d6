"""WS /v1/stream as a plain async function over a WebSocket-like object (Starlette's in the
service): the handshake, then two loops per stream. The receiver reads every message as it
arrives and keeps only the latest frame waiting ("latest frame wins": a frame replaced before its
turn is counted as dropped, never silently lost); the processor segments the waiting frame and
sends its answer. A stream therefore holds at most one frame waiting and one being processed,
whatever the client sends or fails to read. Protocol: ``services.streams.protocol``."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio

from services.contract import ModelCard
from services.errors import MedsegError
from services.pipelines.ensemble import TimedGraphRunner
from services.streams.protocol import (
    INTERNAL_ERROR,
    NORMAL,
    POLICY_VIOLATION,
    TRY_AGAIN_LATER,
    HandshakeError,
    close_reason,
    parse_handshake,
)
from services.streams.registry import StreamRegistry, StreamsFull
from services.streams.session import StreamSession

log = logging.getLogger("medseg.stream")

HANDSHAKE_TIMEOUT_S = 10.0
GOING_AWAY = 1001


@dataclass(frozen=True)
class StreamLimits:
    max_pixels: int  # a larger frame gets a per-frame 422
    idle_s: float  # no message for this long: the stream is closed (1001)


class WebSocketLike(Protocol):
    async def receive(self) -> dict[str, Any]: ...  # an ASGI websocket message
    async def send_text(self, data: str) -> None: ...
    async def send_bytes(self, data: bytes) -> None: ...
    async def close(self, code: int = 1000, reason: str | None = None) -> None: ...


@dataclass
class StreamCounts:
    received: int = 0
    answered: int = 0
    errors: int = 0
    dropped: int = 0


@dataclass
class LatestFrame:
    """The one frame waiting for the processor: a newer one replaces it (counted as dropped)."""

    counts: StreamCounts
    waiting: tuple[int, bytes, float] | None = None
    ended: bool = False
    _changed: anyio.Event = field(default_factory=anyio.Event)

    def put(self, index: int, data: bytes, received_s: float) -> None:
        if self.waiting is not None:
            self.counts.dropped += 1
        self.waiting = (index, data, received_s)
        self._wake()

    def end(self) -> None:
        self.ended = True
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def take(self) -> tuple[int, bytes, float] | None:
        """The waiting frame; None once the stream has ended and nothing waits."""
        while self.waiting is None and not self.ended:
            await self._changed.wait()
        frame, self.waiting = self.waiting, None
        return frame


async def run_stream(
    socket: WebSocketLike, cards: dict[str, ModelCard], run_graph_timed: TimedGraphRunner, registry: StreamRegistry,
    limits: StreamLimits, on_frame: Callable[[str], None] | None = None,
) -> StreamCounts:
    """Serve one accepted WebSocket until the client ends the stream or goes away. ``on_frame``
    is told "answered", "error" or "dropped" per frame (metrics)."""
    counts = StreamCounts()
    try:
        with anyio.fail_after(HANDSHAKE_TIMEOUT_S):
            first = await socket.receive()
    except TimeoutError:
        await socket.close(POLICY_VIOLATION, f"no handshake within {HANDSHAKE_TIMEOUT_S:g} s")
        return counts
    if first.get("type") == "websocket.disconnect":
        return counts
    try:
        if first.get("text") is None:
            raise HandshakeError("the first message must be a text JSON handshake")
        settings = parse_handshake(first["text"], cards)
    except HandshakeError as error:
        await socket.close(POLICY_VIOLATION, close_reason(error.message))
        return counts
    try:
        with registry.stream() as stream_id:
            session = StreamSession(settings, run_graph_timed, limits.max_pixels)
            await socket.send_text(json.dumps(settings.ready_message(stream_id)))
            await _serve(socket, session, counts, limits.idle_s, on_frame)
    except StreamsFull as error:
        await socket.close(TRY_AGAIN_LATER, close_reason(str(error)))
    return counts


async def _serve(
    socket: WebSocketLike, session: StreamSession, counts: StreamCounts, idle_s: float,
    on_frame: Callable[[str], None] | None,
) -> None:
    latest = LatestFrame(counts)
    disconnected = False
    send_lock = anyio.Lock()

    async def send(header: dict[str, Any], body: bytes | None = None) -> None:
        async with send_lock:
            await socket.send_text(json.dumps(header))
            if body is not None:
                await socket.send_bytes(body)

    async def receive_all() -> None:
        nonlocal disconnected
        while True:
            try:
                with anyio.fail_after(idle_s):
                    message = await socket.receive()
            except TimeoutError:  # an idle client holds a stream slot: let it go
                disconnected = True
                group.cancel_scope.cancel()
                await socket.close(GOING_AWAY, f"no message for {idle_s:g} s")
                return
            if message.get("type") == "websocket.disconnect":
                disconnected = True
                group.cancel_scope.cancel()
                return
            if message.get("bytes") is not None:
                dropped_before = counts.dropped
                latest.put(counts.received, message["bytes"], time.perf_counter())
                counts.received += 1
                if counts.dropped > dropped_before and on_frame is not None:
                    on_frame("dropped")
                continue
            text = message.get("text") or ""
            try:
                ended = json.loads(text).get("end") is True
            except (ValueError, AttributeError):
                ended = False
            if ended:
                latest.end()
                return
            await send({"error": "bad_message", "message": 'send frames as binary messages and {"end": true} to finish'})

    async def process_all() -> None:
        while (frame := await latest.take()) is not None:
            index, data, received_s = frame
            try:
                answer = await session.answer(index, data, received_s)
            except MedsegError as error:
                counts.errors += 1
                if on_frame is not None:
                    on_frame("error")
                await send({"frame": index, "error": error.code, "message": error.message, "dropped": counts.dropped})
                continue
            counts.answered += 1
            if on_frame is not None:
                on_frame("answered")
            await send({"frame": index, "dropped": counts.dropped, **answer.header}, answer.body)

    try:
        async with anyio.create_task_group() as group:
            group.start_soon(receive_all)
            await process_all()
    except Exception as error:  # noqa: BLE001 - a failure ends this stream, never the worker
        if disconnected:
            return
        log.warning("stream ended by %s", type(error).__name__, exc_info=True)
        try:
            await socket.close(INTERNAL_ERROR, "internal error; the failure was logged")
        except Exception:  # noqa: BLE001 - the connection is already gone
            pass
        return
    if disconnected:
        return
    try:
        await send({"end": True, "frames": counts.received, "answered": counts.answered, "errors": counts.errors,
                    "dropped": counts.dropped})
        await socket.close(NORMAL)
    except Exception:  # noqa: BLE001 - the client left right after its end message
        log.debug("stream client gone before the end message", exc_info=True)
