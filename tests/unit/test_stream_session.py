"""WS /v1/stream without a server: LatestFrame (latest frame wins), run_stream over a scripted fake
WebSocket, StreamSession's answers and timing, and the frame-pair stream state (reference
"first" / "previous" / every N frames; one encoder pass per frame), with fake MAST graphs."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
from PIL import Image

from services.contract import discover_cards
from services.errors import UnsupportedMediaType
from services.pipelines import FRAME_PIPELINES
from services.pipelines.ensemble import GraphTiming
from services.streams.protocol import parse_handshake
from services.streams.registry import StreamRegistry
from services.streams.session import StreamSession, decode_frame
from services.usecases import stream as stream_usecase
from services.usecases.stream import LatestFrame, StreamCounts, StreamLimits, run_stream

LIMITS = StreamLimits(max_pixels=3840 * 2160, idle_s=60.0)

ROOT = Path(__file__).resolve().parents[2]
CARDS = discover_cards(ROOT / "model_repository")
MAST = CARDS["mast"]
TIMING_FIELDS = {
    "wait_ms", "receive_decode_ms", "preprocess_ms", "queue_ms", "graph_ms", "hop_ms", "postprocess_ms", "encode_ms",
    "server_ms", "non_graph_ms", "graph_calls",
}


def run(function: Callable[[], Awaitable[Any]]) -> Any:
    return anyio.run(function)


def png_frame(value: int, rows: int = 24, cols: int = 32) -> bytes:
    """A uniform grey RGB PNG (the grey level identifies the frame)."""
    buffer = io.BytesIO()
    Image.fromarray(np.full((rows, cols, 3), value, np.uint8), "RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def frame_value(index: int) -> int:
    return 10 + 20 * index


# ---------------------------------------------------------------- fake MAST graphs


def graph_shapes(model: str) -> dict[str, tuple[int, ...]]:
    """The graph's output shapes (without the batch axis) from the card (model_repository)."""
    component = next(c for c in MAST.components if c.model == model)
    return {spec.name: tuple(spec.shape[1:]) for spec in component.outputs}


class FakeMast:
    """A TimedGraphRunner for mast_encoder / mast_pair_head. The encoder's feat4 is filled with the
    index of the frame it encoded (recognised from its prepared tensor); the pair head's logits
    are random. Records every call, and the frame whose feat4 each pair-head call got as feat4_r."""

    def __init__(self, frames: dict[int, bytes] | None = None, seed: int = 0) -> None:
        self.calls: list[str] = []
        self.encoded: list[int] = []  # frame index per encoder call
        self.reference_of_pair: list[int] = []  # feat4_r's frame per pair-head call
        self.rng = np.random.default_rng(seed)
        self.index_by_key: dict[float, int] = {}
        pipeline = FRAME_PIPELINES["frame_pair"]
        for index, data in (frames or {}).items():
            prepared = pipeline.prepare(decode_frame(data, LIMITS.max_pixels), MAST)
            self.index_by_key[self.key(prepared.tensors[0])] = index

    @staticmethod
    def key(tensor: np.ndarray) -> float:
        return round(float(tensor.mean()), 3)

    async def __call__(self, model: str, inputs: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], GraphTiming]:
        started = time.perf_counter()
        await anyio.sleep(0.001)
        self.calls.append(model)
        shapes = graph_shapes(model)
        if model == "mast_encoder":
            (frame,) = inputs.values()
            assert frame.shape[1:] == tuple(MAST.inputs[0].shape[1:])
            indices = [self.index_by_key.get(self.key(row), -1) for row in frame]
            self.encoded.extend(indices)
            outputs = {name: self.rng.standard_normal((len(frame), *shape)).astype(np.float32) for name, shape in shapes.items()}
            outputs["feat4"] = np.stack([np.full(shapes["feat4"], i, np.float32) for i in indices])
        else:
            assert model == "mast_pair_head"
            assert set(inputs) == {"feat2_a", "feat3_a", "feat4_a", "feat4_r"}
            for name, array in inputs.items():
                assert array.shape[1:] == graph_shapes("mast_encoder")[name[:-2]], name
            reference = inputs["feat4_r"]
            assert np.all(reference == reference.flat[0])  # one frame's feat4, untouched
            self.reference_of_pair.append(int(reference.flat[0]))
            batch = len(reference)
            outputs = {"logits": self.rng.standard_normal((batch, *shapes["logits"])).astype(np.float32)}
        elapsed_ms = (time.perf_counter() - started) * 1000
        return outputs, GraphTiming(queue_ms=0.0, run_ms=elapsed_ms * 0.8, hop_ms=elapsed_ms * 0.1)


def test_the_fake_uses_the_repository_shapes() -> None:
    assert graph_shapes("mast_encoder") == {"feat2": (32, 28, 28), "feat3": (32, 14, 14), "feat4": (32, 7, 7)}
    assert graph_shapes("mast_pair_head") == {"logits": (1, 224, 224)}
    frames = {i: png_frame(frame_value(i)) for i in range(3)}
    assert len(FakeMast(frames).index_by_key) == 3  # the frames are told apart


# ---------------------------------------------------------------- fake WebSocket


def text(payload: Any) -> dict[str, Any]:
    return {"type": "websocket.receive", "text": payload if isinstance(payload, str) else json.dumps(payload)}


def binary(data: bytes) -> dict[str, Any]:
    return {"type": "websocket.receive", "bytes": data}


DISCONNECT = {"type": "websocket.disconnect", "code": 1000}
END = text({"end": True})


class FakeSocket:
    """Scripted ASGI messages; then receive() waits forever (a silent client). With ``pace``, every
    message after the handshake waits until each frame delivered so far has been answered (a
    client that sends the next frame once it has the last answer: no frame is dropped)."""

    def __init__(self, script: list[dict[str, Any]], pace: bool = True) -> None:
        self.script = list(script)
        self.pace = pace
        self.sent: list[tuple[str, Any]] = []
        self.closes: list[tuple[int, str | None]] = []
        self.delivered = 0
        self.received = 0

    def frame_answers(self) -> int:
        return sum(1 for kind, value in self.sent if kind == "text" and "frame" in value)

    async def receive(self) -> dict[str, Any]:
        if not self.script:
            await anyio.sleep_forever()
        if self.pace and self.received > 0:
            with anyio.fail_after(5):
                while self.frame_answers() < self.delivered:
                    await anyio.sleep(0.001)
        message = self.script.pop(0)
        self.received += 1
        if message.get("bytes") is not None:
            self.delivered += 1
        return message

    async def send_text(self, data: str) -> None:
        assert not self.closes, "sent after close"
        self.sent.append(("text", json.loads(data)))

    async def send_bytes(self, data: bytes) -> None:
        assert not self.closes, "sent after close"
        self.sent.append(("bytes", data))

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        self.closes.append((code, reason))

    def texts(self) -> list[dict[str, Any]]:
        return [value for kind, value in self.sent if kind == "text"]


class Stream:
    """One run_stream over a FakeSocket, with a registry whose counts and the frame outcomes are recorded."""

    def __init__(self, script: list[dict[str, Any]], max_streams: int = 2, pace: bool = True, graphs: FakeMast | None = None,
                 limits: StreamLimits = LIMITS) -> None:
        self.socket = FakeSocket(script, pace)
        self.limits = limits
        self.observed: list[int] = []
        self.registry = StreamRegistry(max_streams, self.observed.append)
        self.outcomes: list[str] = []
        self.graphs = graphs or FakeMast()
        self.counts: StreamCounts | None = None

    async def run(self) -> Stream:
        with anyio.fail_after(20):
            self.counts = await run_stream(self.socket, CARDS, self.graphs, self.registry, self.limits, self.outcomes.append)
        return self


def serve(script: list[dict[str, Any]], **kwargs: Any) -> Stream:
    stream = Stream(script, **kwargs)
    return run(stream.run)


# ---------------------------------------------------------------- LatestFrame


def test_latest_frame_keeps_the_newest_and_counts_one_dropped() -> None:
    async def main() -> None:
        counts = StreamCounts()
        latest = LatestFrame(counts)
        latest.put(0, b"a", 1.0)
        latest.put(1, b"b", 2.0)
        assert counts.dropped == 1
        assert await latest.take() == (1, b"b", 2.0)
        assert latest.waiting is None and counts.dropped == 1

    run(main)


def test_latest_frame_take_waits_for_a_put() -> None:
    async def main() -> None:
        latest = LatestFrame(StreamCounts())
        got: list[Any] = []

        async def taker() -> None:
            got.append(await latest.take())

        async with anyio.create_task_group() as group:
            group.start_soon(taker)
            await anyio.sleep(0.02)
            assert got == []  # still waiting
            latest.put(7, b"x", 3.0)
        assert got == [(7, b"x", 3.0)]

    run(main)


def test_latest_frame_end_with_nothing_waiting_returns_none() -> None:
    async def main() -> None:
        latest = LatestFrame(StreamCounts())
        got: list[Any] = []

        async def taker() -> None:
            got.append(await latest.take())

        async with anyio.create_task_group() as group:
            group.start_soon(taker)
            await anyio.sleep(0.02)
            assert got == []
            latest.end()
        assert got == [None]
        assert await latest.take() is None  # stays ended

    run(main)


def test_latest_frame_end_with_a_frame_waiting_gives_the_frame_first() -> None:
    async def main() -> None:
        counts = StreamCounts()
        latest = LatestFrame(counts)
        latest.put(4, b"y", 5.0)
        latest.end()
        assert await latest.take() == (4, b"y", 5.0)
        assert await latest.take() is None
        assert counts.dropped == 0

    run(main)


# ---------------------------------------------------------------- run_stream: refusals


@pytest.mark.parametrize(
    "first",
    [
        binary(png_frame(10)),  # a frame before the handshake
        text("not json"),
        text(["mast"]),
        text({"model": "nope"}),
        text({"model": "hnf_net"}),
        text({"model": "mast", "output": "jpeg"}),
        text({"model": "mast", "classes": "1"}),
        text({"model": "mast", "fps": 30}),
        text({"model": "mast", "reference": 0}),
        text({"model": "surgical_sam", "classes": "scalpel"}),
    ],
)
def test_a_bad_handshake_closes_with_1008(first: dict[str, Any]) -> None:
    stream = serve([first, binary(png_frame(10)), END])
    assert len(stream.socket.closes) == 1
    code, reason = stream.socket.closes[0]
    assert code == 1008 and reason and len(reason.encode()) <= 123
    assert stream.socket.sent == []  # no ready message
    assert stream.observed == [] and stream.registry.open == set()
    assert stream.graphs.calls == []


def test_a_long_refusal_reason_is_cut_to_123_bytes() -> None:
    stream = serve([text({"model": "mast", **{f"{'é' * 30}{i}": i for i in range(4)}})])
    (code, reason), = stream.socket.closes
    assert code == 1008 and reason.startswith("unknown handshake field") and len(reason.encode()) <= 123


def test_a_handshake_echoing_a_lone_surrogate_still_closes_with_1008() -> None:
    """A key with a lone surrogate (valid JSON: "\\ud800") is echoed in the refusal; the close
    must still happen with 1008 instead of run_stream raising UnicodeEncodeError."""
    stream = Stream([text('{"model": "mast", "\\ud800": 1}')])
    run(stream.run)
    assert [code for code, _ in stream.socket.closes] == [1008]


def test_no_handshake_in_time_closes_with_1008(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stream_usecase, "HANDSHAKE_TIMEOUT_S", 0.05)
    started = time.perf_counter()
    stream = serve([])  # the client says nothing
    assert time.perf_counter() - started < 5
    (code, reason), = stream.socket.closes
    assert code == 1008 and "handshake" in reason
    assert stream.socket.sent == [] and stream.observed == []


def test_a_disconnect_before_the_handshake_ends_quietly() -> None:
    stream = serve([DISCONNECT])
    assert stream.socket.closes == [] and stream.socket.sent == [] and stream.observed == []


def test_a_full_registry_closes_with_1013() -> None:
    stream = Stream([text({"model": "mast"}), binary(png_frame(10)), END], max_streams=1)

    async def main() -> None:
        with stream.registry.stream():
            await stream.run()

    run(main)
    (code, reason), = stream.socket.closes
    assert code == 1013 and reason and len(reason.encode()) <= 123
    assert stream.socket.sent == [] and stream.graphs.calls == []
    assert stream.observed == [1, 0]  # only the slot held by the test


# ---------------------------------------------------------------- run_stream: sessions


def test_a_png_session_answers_every_frame_then_ends_with_1000() -> None:
    frames = [png_frame(frame_value(i), rows=24 + i, cols=32) for i in range(3)]
    graphs = FakeMast({i: f for i, f in enumerate(frames)})
    stream = serve([text({"model": "mast"}), *(binary(f) for f in frames), END], graphs=graphs)
    sent = stream.socket.sent
    assert sent[0][0] == "text" and sent[0][1]["ready"] is True and sent[0][1]["model"] == "mast"
    assert sent[0][1]["reference"] == "previous" and isinstance(sent[0][1]["stream"], str)
    body = sent[1:-1]
    assert [kind for kind, _ in body] == ["text", "bytes"] * 3
    for i in range(3):
        header, png = body[2 * i][1], body[2 * i + 1][1]
        assert header["frame"] == i and header["dropped"] == 0 and header["size"] == [24 + i, 32]
        assert set(header["timing"]) == TIMING_FIELDS and header["timing"]["graph_calls"] == 2
        assert header["reference_frame"] == (0 if i == 0 else i - 1)
        assert set(header["pixels"]) == {"1"}
        labels = np.asarray(Image.open(io.BytesIO(png)))
        assert labels.shape == (24 + i, 32) and int((labels == 1).sum()) == header["pixels"]["1"]
    assert sent[-1] == ("text", {"end": True, "frames": 3, "answered": 3, "errors": 0, "dropped": 0})
    assert stream.socket.closes == [(1000, None)]
    assert stream.observed == [1, 0] and stream.registry.open == set()
    assert stream.outcomes == ["answered"] * 3
    assert stream.counts == StreamCounts(received=3, answered=3, errors=0, dropped=0)
    assert graphs.calls == ["mast_encoder", "mast_pair_head"] * 3


def test_an_rle_session_sends_no_binary_messages() -> None:
    stream = serve([text({"model": "mast", "output": "rle", "reference": "first"}), binary(png_frame(10)), binary(png_frame(30)), END])
    kinds = [kind for kind, _ in stream.socket.sent]
    assert kinds == ["text"] * 4
    headers = stream.socket.texts()[1:3]
    for i, header in enumerate(headers):
        assert header["frame"] == i and [run["id"] for run in header["rle"]] == [1]
        assert sum(header["rle"][0]["counts"]) == 24 * 32  # the runs cover the frame
        assert header["reference_frame"] == 0
    assert stream.socket.texts()[-1]["end"] is True and stream.socket.closes == [(1000, None)]


def test_a_non_image_frame_gets_an_error_and_the_next_frame_is_answered() -> None:
    junk = np.random.default_rng(1).bytes(500)
    truncated = png_frame(40)[:40]
    stream = serve([text({"model": "mast"}), binary(junk), binary(truncated), binary(png_frame(50)), END])
    headers = stream.socket.texts()[1:]
    assert headers[0]["frame"] == 0 and headers[0]["error"] == UnsupportedMediaType.code and headers[0]["message"]
    assert headers[1]["frame"] == 1 and headers[1]["error"] == "bad_input"
    assert headers[2]["frame"] == 2 and "error" not in headers[2] and headers[2]["size"] == [24, 32]
    assert headers[2]["reference_frame"] == 2  # the first segmented frame is its own reference
    assert headers[3] == {"end": True, "frames": 3, "answered": 1, "errors": 2, "dropped": 0}
    assert [kind for kind, _ in stream.socket.sent].count("bytes") == 1
    assert stream.outcomes == ["error", "error", "answered"]
    assert stream.socket.closes == [(1000, None)]


@pytest.mark.parametrize("message", ["hello", '{"end": false}', '{"stop": true}', "[1]", '"end"', ""])
def test_a_text_message_that_is_not_end_gets_bad_message(message: str) -> None:
    stream = serve([text({"model": "mast"}), text(message), binary(png_frame(10)), END])
    texts = stream.socket.texts()
    assert texts[1]["error"] == "bad_message" and "frame" not in texts[1] and texts[1]["message"]
    assert texts[2]["frame"] == 0 and "error" not in texts[2]
    assert texts[-1] == {"end": True, "frames": 1, "answered": 1, "errors": 0, "dropped": 0}
    assert stream.socket.closes == [(1000, None)]


def test_an_idle_stream_is_closed_with_1001_and_frees_its_slot() -> None:
    stream = serve([text({"model": "mast"}), binary(png_frame(10))], limits=StreamLimits(3840 * 2160, idle_s=0.3))
    texts = stream.socket.texts()
    assert texts[0]["ready"] is True and texts[1]["frame"] == 0
    assert stream.socket.closes and stream.socket.closes[-1][0] == 1001
    assert stream.observed == [1, 0] and stream.registry.open == set()


def test_a_frame_over_the_pixel_limit_is_a_per_frame_422_and_the_stream_goes_on() -> None:
    limits = StreamLimits(max_pixels=64 * 64, idle_s=60.0)
    big = png_frame(frame_value(0), rows=100, cols=100)  # 10 000 pixels
    stream = serve([text({"model": "mast"}), binary(big), binary(png_frame(frame_value(1))), text({"end": True})], limits=limits)
    frames = [t for t in stream.socket.texts() if "frame" in t]
    assert frames[0]["error"] == "unprocessable_image" and "megapixels" in frames[0]["message"]
    assert "error" not in frames[1]


def test_a_disconnect_ends_without_an_end_message_and_frees_the_slot() -> None:
    stream = serve([text({"model": "mast"}), binary(png_frame(10)), DISCONNECT])
    texts = stream.socket.texts()
    assert texts[0]["ready"] is True and texts[1]["frame"] == 0
    assert not any("end" in t for t in texts)
    assert stream.socket.closes == []  # the client is gone: nothing to close
    assert stream.observed == [1, 0] and stream.registry.open == set()


def test_a_disconnect_while_a_frame_is_processed_frees_the_slot() -> None:
    class SlowGraphs(FakeMast):
        def __init__(self) -> None:
            super().__init__()
            self.started = anyio.Event()

        async def __call__(self, model: str, inputs: dict[str, np.ndarray]) -> Any:
            self.started.set()
            await anyio.sleep(10)
            raise AssertionError("unreachable: the stream is cancelled first")

    stream = Stream([text({"model": "mast"}), binary(png_frame(10)), DISCONNECT], pace=False, graphs=SlowGraphs())
    receive = stream.socket.receive

    async def receive_after_the_graph_started() -> dict[str, Any]:
        if stream.socket.script and stream.socket.script[0] is DISCONNECT:
            await stream.graphs.started.wait()
        return await receive()

    stream.socket.receive = receive_after_the_graph_started  # type: ignore[method-assign]
    started = time.perf_counter()
    run(stream.run)
    assert time.perf_counter() - started < 5  # the graph call was cancelled, not waited for
    assert stream.graphs.started.is_set()
    assert len(stream.socket.texts()) == 1  # ready only
    assert stream.socket.closes == [] and stream.observed == [1, 0] and stream.registry.open == set()
    assert stream.outcomes == []


def test_a_client_gone_right_after_end_does_not_raise_out_of_run_stream() -> None:
    """The client sends {"end": true} and closes at once: sending the end message then fails
    (Starlette raises WebSocketDisconnect(1006) on a send to a gone client). run_stream should
    end quietly (the stream is over either way), as it does for a disconnect seen by its receiver."""
    from starlette.websockets import WebSocketDisconnect

    class GoneAfterEnd(FakeSocket):
        gone = False

        async def receive(self) -> dict[str, Any]:
            message = await super().receive()
            self.gone = message is END
            return message

        async def send_text(self, data: str) -> None:
            if self.gone:
                raise WebSocketDisconnect(1006)
            await super().send_text(data)

        async def close(self, code: int = 1000, reason: str | None = None) -> None:
            if self.gone:
                raise RuntimeError('Cannot call "send" once a close message has been sent.')
            await super().close(code, reason)

    stream = Stream([])
    stream.socket = GoneAfterEnd([text({"model": "mast"}), binary(png_frame(10)), END])
    run(stream.run)  # raises WebSocketDisconnect today
    assert stream.counts == StreamCounts(received=1, answered=1, errors=0, dropped=0)
    assert stream.observed == [1, 0]


def test_the_latest_frame_wins_when_frames_arrive_faster_than_answers() -> None:
    # unpaced: the fake receive never yields, so frames 0-2 and the end arrive before the first is taken
    frames = [png_frame(frame_value(i)) for i in range(3)]
    stream = serve([text({"model": "mast"}), *(binary(f) for f in frames), END], pace=False)
    texts = stream.socket.texts()
    assert [t.get("frame") for t in texts[1:-1]] == [2]
    assert texts[1]["dropped"] == 2 and texts[1]["reference_frame"] == 2
    assert texts[-1] == {"end": True, "frames": 3, "answered": 1, "errors": 0, "dropped": 2}
    assert sorted(stream.outcomes) == ["answered", "dropped", "dropped"]
    assert stream.socket.closes == [(1000, None)]


def test_a_graph_failure_closes_with_1011_and_frees_the_slot() -> None:
    class BrokenGraphs(FakeMast):
        async def __call__(self, model: str, inputs: dict[str, np.ndarray]) -> Any:
            raise RuntimeError("the graph failed")

    stream = serve([text({"model": "mast"}), binary(png_frame(10)), END], graphs=BrokenGraphs())
    assert stream.socket.closes and stream.socket.closes[0][0] == 1011
    assert not any("end" in t for t in stream.socket.texts())
    assert stream.observed == [1, 0]


# ---------------------------------------------------------------- frame-pair stream state


def mast_session(reference: Any, count: int) -> tuple[StreamSession, FakeMast, list[bytes]]:
    frames = [png_frame(frame_value(i)) for i in range(count)]
    graphs = FakeMast(dict(enumerate(frames)))
    settings = parse_handshake(json.dumps({"model": "mast", "reference": reference}), CARDS)
    return StreamSession(settings, graphs, LIMITS.max_pixels), graphs, frames


def answer_all(session: StreamSession, frames: list[bytes]) -> list[dict[str, Any]]:
    async def main() -> list[dict[str, Any]]:
        return [(await session.answer(i, data, time.perf_counter())).header for i, data in enumerate(frames)]

    return run(main)


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("previous", [0, 0, 1, 2, 3, 4, 5]),
        ("first", [0, 0, 0, 0, 0, 0, 0]),
        (3, [0, 0, 0, 3, 3, 3, 6]),
        (1, [0, 1, 2, 3, 4, 5, 6]),
    ],
)
def test_reference_modes_encode_each_frame_once(reference: Any, expected: list[int]) -> None:
    session, graphs, frames = mast_session(reference, 7)
    headers = answer_all(session, frames)
    assert graphs.calls == ["mast_encoder", "mast_pair_head"] * 7  # one encoder pass per frame, never two
    assert graphs.encoded == list(range(7))  # each frame encoded, in order, as itself
    assert graphs.reference_of_pair == expected  # the pair head got that frame's feat4 as feat4_r
    assert [h["reference_frame"] for h in headers] == expected
    assert all(h["threshold"] == MAST.threshold for h in headers)


def test_previous_reference_follows_arrival_numbers_across_gaps() -> None:
    session, graphs, frames = mast_session("previous", 3)

    async def main() -> list[dict[str, Any]]:
        # frames 1 and 3 were dropped by the stream: answers for arrival numbers 0, 2, 4
        return [(await session.answer(n, data, time.perf_counter())).header for n, data in zip((0, 2, 4), frames)]

    headers = run(main)
    assert [h["reference_frame"] for h in headers] == [0, 0, 2]
    assert graphs.reference_of_pair == [0, 0, 1]  # the frame data behind arrival numbers 0, 0, 2


def test_refresh_period_counts_arrival_numbers() -> None:
    session, graphs, frames = mast_session(3, 3)

    async def main() -> list[dict[str, Any]]:
        return [(await session.answer(n, data, time.perf_counter())).header for n, data in zip((0, 2, 5), frames)]

    headers = run(main)
    assert [h["reference_frame"] for h in headers] == [0, 0, 5]  # 5 - 0 >= 3: a new reference
    assert graphs.reference_of_pair == [0, 0, 2]


def test_a_failed_first_frame_does_not_become_the_reference() -> None:
    session, graphs, frames = mast_session("first", 2)

    async def main() -> list[dict[str, Any]]:
        with pytest.raises(UnsupportedMediaType):
            await session.answer(0, b"not an image", time.perf_counter())
        return [(await session.answer(n + 1, data, time.perf_counter())).header for n, data in enumerate(frames)]

    headers = run(main)
    assert [h["reference_frame"] for h in headers] == [1, 1]
    assert graphs.reference_of_pair == [0, 0]


def test_answer_timing_fields_are_present_and_non_negative() -> None:
    session, graphs, frames = mast_session("previous", 2)

    async def main() -> list[dict[str, Any]]:
        headers = []
        for i, data in enumerate(frames):
            received = time.perf_counter()
            await anyio.sleep(0.002)  # waited in LatestFrame for the previous frame: wait_ms
            headers.append((await session.answer(i, data, received)).header)
        return headers

    for header in run(main):
        timing = header["timing"]
        assert set(timing) == TIMING_FIELDS
        assert timing["graph_calls"] == 2 and isinstance(timing["graph_calls"], int)
        for name, value in timing.items():
            assert isinstance(value, (int, float)) and value >= 0, (name, value)
        assert timing["wait_ms"] >= 2
        assert timing["server_ms"] >= timing["wait_ms"] + timing["receive_decode_ms"] + timing["preprocess_ms"]
        assert timing["graph_ms"] > 0 and timing["hop_ms"] > 0 and timing["queue_ms"] == 0
        assert timing["server_ms"] >= timing["graph_ms"] + timing["hop_ms"]
        assert timing["non_graph_ms"] == pytest.approx(timing["server_ms"] - timing["graph_ms"], abs=0.01)
        assert header["size"] == [24, 32]
