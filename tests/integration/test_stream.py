"""WS /v1/stream through a real `bentoml serve`: phantom polyp and surgical clips written as mp4
with PyAV (``export.phantoms.video``), decoded with PyAV (``clients.video.open_video``) and sent
frame by frame as PNG or JPEG messages.

- MAST keeps its reference per stream ("previous", "first" or every N frames), answers every
  frame with one encoder pass (two graph calls), gives POST /v1/segment's label map for the same
  frame and reference and reaches the HTTP route's Dice (the same clips); "rle" output gives the
  "png" output's masks; the threshold is applied.
- SurgicalSAM with the clip's classes prompted reaches the HTTP route's mean IoU, and each label
  map equals POST /v1/segment's for the same frame bytes.
- Concurrent streams, bad frames and messages inside a stream, clients that go away (close frame,
  TCP reset, a frame over the 16 MiB message limit: 1009), MEDSEG_MAX_STREAMS (1013), bad
  handshakes and no handshake within 10 s (1008); medseg_streams and
  medseg_stream_frames_total on /metrics follow.
- Backpressure: a client that sends 300 large frames without reading gets "latest frame wins":
  bounded server memory, every frame answered or counted as dropped.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
import wsproto
import wsproto.events
from httpx_ws import WebSocketDisconnect, aconnect_ws
from PIL import Image

from clients.video import encode_frame, open_video
from export.phantoms.video import polyp_video, surgical_video
from load.process_memory import PeakRss, tree_rss
from load.local_service import LocalService, local_service

pytestmark = pytest.mark.integration

REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"

# the HTTP routes' quality bars and phantoms (test_frame_pair_http.py, test_surgical_sam_http.py)
MIN_DICE = 0.85
POLYP_SHAPES = ((288, 384), (240, 320), (256, 256))
POLYP_FRAMES = 6
MIN_MEAN_IOU = 0.80
SURGICAL_SHAPE = (256, 320)  # the shape the demo weights were trained and checked at
# Many short clips rather than one long one: each clip is one phantom scene (a camera panning over
# it), so its frames are strongly correlated and the scene is the sampling unit (scene means spread
# ~0.10). 160 scenes x 3 frames (~950 (frame, class) pairs) put the standard error near 0.008; over
# 400 other scenes the stream's mean IoU was 0.82, like the HTTP test's (the label maps are the same).
SURGICAL_CLIPS = 160
SURGICAL_CLIP_FRAMES = 3

TIMING_KEYS = {
    "receive_decode_ms", "preprocess_ms", "queue_ms", "graph_ms", "hop_ms", "postprocess_ms",
    "encode_ms", "server_ms", "non_graph_ms", "graph_calls",
}
EXPECTED_REFERENCES = {
    "previous": [0, 0, 1, 2, 3, 4],
    "first": [0, 0, 0, 0, 0, 0],
    3: [0, 0, 0, 3, 3, 3],
}

BACKPRESSURE_FRAMES = 300
BACKPRESSURE_SHAPE = (720, 1280)  # ~1.7 MB PNG per frame: ~500 MB sent in all
MAX_RSS_GROWTH_MB = 150

POLICY_VIOLATION, TRY_AGAIN_LATER = 1008, 1013


# --------------------------------------------------------------------------- services and clips


@pytest.fixture(scope="module")
def stream_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalService]:
    with local_service(REPOSITORY, tmp_path_factory.mktemp("stream-service")) as running:
        yield running


@pytest.fixture(scope="module")
def one_stream_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalService]:
    with local_service(
        REPOSITORY, tmp_path_factory.mktemp("one-stream-service"), env={"MEDSEG_MAX_STREAMS": "1"}
    ) as running:
        yield running


@dataclass(frozen=True)
class Clip:
    frames: list[bytes]  # one encoded image per message
    truth: np.ndarray  # (frames, rows, cols): bool polyp masks or uint8 label maps

    @property
    def shape(self) -> tuple[int, int]:
        return self.truth.shape[1:]


def read_mp4(path: Path, frames: int, shape: tuple[int, int], fmt: str = "png") -> list[bytes]:
    """The mp4's frames decoded with PyAV, each encoded as one stream message."""
    decoded = list(open_video(path))
    assert len(decoded) == frames and all(f.shape == (*shape, 3) for f in decoded)
    return [encode_frame(f, fmt, quality=95) for f in decoded]


@pytest.fixture(scope="module")
def polyp_clips(tmp_path_factory: pytest.TempPathFactory) -> list[Clip]:
    """The HTTP test's clips (make_polyp_clip with seeds 3001 + index), as mp4 files."""
    folder = tmp_path_factory.mktemp("polyp-clips")
    clips = []
    for index, shape in enumerate(POLYP_SHAPES):
        path, masks = polyp_video(3001 + index, POLYP_FRAMES, shape, folder / f"polyp_{index}.mp4")
        clips.append(Clip(read_mp4(path, POLYP_FRAMES, shape), masks))
    return clips


@pytest.fixture(scope="module")
def surgical_clips(tmp_path_factory: pytest.TempPathFactory) -> list[Clip]:
    folder = tmp_path_factory.mktemp("surgical-clips")
    clips = []
    for index in range(SURGICAL_CLIPS):
        path, labels = surgical_video(
            5101 + index, SURGICAL_CLIP_FRAMES, SURGICAL_SHAPE, folder / f"surgical_{index}.mp4"
        )
        clips.append(Clip(read_mp4(path, SURGICAL_CLIP_FRAMES, SURGICAL_SHAPE), labels))
    return clips


# --------------------------------------------------------------------------- a stream client


def stream_url(service: LocalService) -> str:
    return f"{service.url}/v1/stream"


def run(coroutine, timeout_s: float = 120):
    """Run a test's client side with a deadline: a stream that hangs fails the test."""

    async def bounded():
        return await asyncio.wait_for(coroutine, timeout_s)

    return asyncio.run(bounded())


def png_labels(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return np.asarray(image)


def decode_runs(counts: list[int], shape: tuple[int, int]) -> np.ndarray:
    """Run lengths (row-major, the first run background) → bool mask."""
    assert sum(counts) == shape[0] * shape[1], "the runs do not cover the frame"
    values = np.arange(len(counts)) % 2 == 1
    return np.repeat(values, counts).reshape(shape)


async def receive_message(ws, output: str = "png", timeout_s: float = 60) -> tuple[dict, np.ndarray | None]:
    """One answer: the text header and, for an answered "png" frame, its label map."""
    header = json.loads(await ws.receive_text(timeout_s))
    if "frame" in header and "error" not in header and output == "png":
        return header, png_labels(await ws.receive_bytes(timeout_s))
    return header, None


async def handshake(ws, settings: dict | str) -> dict:
    await ws.send_text(settings if isinstance(settings, str) else json.dumps(settings))
    ready = json.loads(await ws.receive_text(30))
    assert ready.get("ready") is True, ready
    return ready


async def end_stream(ws, output: str = "png") -> dict:
    await ws.send_text(json.dumps({"end": True}))
    header, _ = await receive_message(ws, output)
    assert header.get("end") is True, header
    with pytest.raises(WebSocketDisconnect) as closed:
        await ws.receive_text(10)
    assert closed.value.code == 1000
    return header


@dataclass
class StreamRun:
    ready: dict
    answers: list[tuple[dict, np.ndarray | None]]  # every header after the handshake, in order
    end: dict


async def stream_clip(url: str, settings: dict, frames: list[bytes]) -> StreamRun:
    """Send each frame and wait for its answer before the next (so nothing is dropped)."""
    output = settings.get("output", "png")
    async with httpx.AsyncClient() as http, aconnect_ws(url, http) as ws:
        ready = await handshake(ws, settings)
        answers = []
        for frame in frames:
            await ws.send_bytes(frame)
            answers.append(await receive_message(ws, output))
        end = await end_stream(ws, output)
    return StreamRun(ready, answers, end)


async def refused(url: str, first: str | bytes) -> WebSocketDisconnect:
    """The close the server answers ``first`` (a handshake it should refuse) with."""
    async with httpx.AsyncClient() as http, aconnect_ws(url, http) as ws:
        if isinstance(first, bytes):
            await ws.send_bytes(first)
        else:
            await ws.send_text(first)
        try:
            message = await ws.receive_text(30)
        except WebSocketDisconnect as closed:
            return closed
    raise AssertionError(f"the handshake was accepted: {message}")


def http_mast(service: LocalService, frame: bytes, reference: bytes) -> np.ndarray:
    """POST /v1/segment's MAST label map of ``frame`` against ``reference`` (itself: none sent)."""
    files = {"file": ("frame.png", frame, "image/png")}
    if reference != frame:
        files["reference"] = ("reference.png", reference, "image/png")
    response = httpx.post(f"{service.url}/v1/segment", files=files, data={"model": "mast"}, timeout=60)
    assert response.status_code == 200, response.text
    return png_labels(response.content)


def global_dice(pairs: list[tuple[np.ndarray, np.ndarray]]) -> float:
    inter = sum(float(np.logical_and(p, t).sum()) for p, t in pairs)
    total = sum(float(p.sum() + t.sum()) for p, t in pairs)
    return 2.0 * inter / total


def metric_values(service: LocalService) -> dict[str, float]:
    """/metrics samples by 'name{labels}' (summed over processes where repeated)."""
    values: dict[str, float] = {}
    for line in httpx.get(f"{service.url}/metrics", timeout=10).text.splitlines():
        match = re.match(r"^(medseg_stream\w*(?:\{[^}]*\})?)\s+(\S+)$", line)
        if match:
            values[match[1]] = values.get(match[1], 0.0) + float(match[2])
    return values


def open_streams(service: LocalService) -> float:
    return metric_values(service)["medseg_streams"]


def frames_counted(service: LocalService, outcome: str) -> float:
    return metric_values(service).get(f'medseg_stream_frames_total{{outcome="{outcome}"}}', 0.0)


def wait_for_open_streams(service: LocalService, count: int, within_s: float = 5) -> None:
    deadline = time.monotonic() + within_s
    while (seen := open_streams(service)) != count:
        assert time.monotonic() < deadline, f"medseg_streams is {seen}, not {count}, after {within_s} s"
        time.sleep(0.1)


async def drop_connection(service: LocalService, settings: dict, frames: list[bytes], answers: int = 1) -> None:
    """A raw WebSocket client (wsproto over a socket) that handshakes, sends ``frames``, reads
    ``answers`` answer headers and then resets the TCP connection: no close frame, no end."""
    url = urlsplit(service.url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    connection = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    writer.write(connection.send(wsproto.events.Request(host=url.netloc, target="/v1/stream")))
    events: list[wsproto.events.Event] = []

    async def next_event() -> wsproto.events.Event:
        while not events:
            data = await asyncio.wait_for(reader.read(65536), 30)
            assert data, "the server closed the connection"
            connection.receive_data(data)
            events.extend(connection.events())
        return events.pop(0)

    assert isinstance(await next_event(), wsproto.events.AcceptConnection)
    writer.write(connection.send(wsproto.events.TextMessage(json.dumps(settings))))
    ready = await next_event()
    assert isinstance(ready, wsproto.events.TextMessage) and json.loads(ready.data)["ready"] is True
    for frame in frames:
        writer.write(connection.send(wsproto.events.BytesMessage(frame)))
    await writer.drain()
    seen = 0
    while seen < answers:
        event = await next_event()
        if isinstance(event, wsproto.events.TextMessage):
            assert "frame" in json.loads(event.data)
            seen += 1
    writer.transport.abort()  # RST: the server learns it from the socket, not from a close frame


# --------------------------------------------------------------------------- MAST


@pytest.mark.parametrize("reference", ["previous", "first", 3])
def test_mast_stream_answers_every_frame_with_its_reference_and_one_encoder_pass(
    stream_service, polyp_clips, reference
) -> None:
    url, pairs = stream_url(stream_service), []
    for clip in polyp_clips:
        result = run(stream_clip(url, {"model": "mast", "reference": reference}, clip.frames))
        assert result.ready["model"] == "mast" and result.ready["task"] == "frame_pair"
        assert result.ready["reference"] == reference and result.ready["output"] == "png"
        headers = [header for header, _ in result.answers]
        assert [h.get("frame") for h in headers] == list(range(POLYP_FRAMES)), headers
        assert all("error" not in h and h["dropped"] == 0 for h in headers), headers
        assert [h["reference_frame"] for h in headers] == EXPECTED_REFERENCES[reference]
        for header, labels in result.answers:
            assert header["size"] == list(clip.shape) and header["threshold"] == result.ready["threshold"]
            timing = header["timing"]
            assert set(timing) >= TIMING_KEYS, timing
            assert timing["graph_calls"] == 2, f"frame {header['frame']}: {timing['graph_calls']} graph calls"
            assert all(timing[k] >= 0 for k in TIMING_KEYS), timing
            assert timing["server_ms"] >= timing["graph_ms"]
            assert labels.shape == clip.shape and labels.dtype == np.uint8 and set(np.unique(labels)) <= {0, 1}
            assert header["pixels"] == {"1": int((labels == 1).sum())}
        assert result.end == {"end": True, "frames": POLYP_FRAMES, "answered": POLYP_FRAMES, "errors": 0, "dropped": 0}
        pairs += [(labels == 1, truth) for (_, labels), truth in zip(result.answers, clip.truth)]
        # the kept reference features are the reference frame's: POST /v1/segment with that frame
        # as the reference (its own frame: no reference) gives the same label map
        for (header, labels), frame in zip(result.answers, clip.frames):
            np.testing.assert_array_equal(
                http_mast(stream_service, frame, clip.frames[header["reference_frame"]]), labels,
                err_msg=f"reference {reference!r}, frame {header['frame']} against {header['reference_frame']}",
            )
    assert global_dice(pairs) >= MIN_DICE, f"reference {reference!r}: Dice {global_dice(pairs):.3f}"


def test_mast_rle_output_gives_the_png_masks(stream_service, polyp_clips) -> None:
    url = stream_url(stream_service)
    for clip in polyp_clips:
        pngs = run(stream_clip(url, {"model": "mast", "reference": "previous"}, clip.frames))
        runs = run(stream_clip(url, {"model": "mast", "reference": "previous", "output": "rle"}, clip.frames))
        assert runs.ready["output"] == "rle"
        for (png_header, labels), (header, body) in zip(pngs.answers, runs.answers):
            assert body is None  # receive_message read only the header: no binary follows an "rle" answer
            assert header["frame"] == png_header["frame"] and header["size"] == list(clip.shape)
            assert [entry["id"] for entry in header["rle"]] == [1]
            mask = decode_runs(header["rle"][0]["counts"], clip.shape)
            np.testing.assert_array_equal(mask, labels == 1, err_msg=f"frame {header['frame']}")
            assert header["pixels"] == {"1": int(mask.sum())}
        assert runs.end["answered"] == POLYP_FRAMES


def test_mast_stream_threshold_is_applied_and_reported(stream_service, polyp_clips) -> None:
    url, frames = stream_url(stream_service), polyp_clips[1].frames[:2]
    low = run(stream_clip(url, {"model": "mast", "threshold": 0.05}, frames))
    high = run(stream_clip(url, {"model": "mast", "threshold": 0.95}, frames))
    assert low.ready["threshold"] == 0.05 and high.ready["threshold"] == 0.95
    for (low_header, low_labels), (high_header, high_labels) in zip(low.answers, high.answers):
        assert (low_header["threshold"], high_header["threshold"]) == (0.05, 0.95)
        assert (high_labels <= low_labels).all() and low_labels.sum() > high_labels.sum()


# --------------------------------------------------------------------------- SurgicalSAM


def present_classes(labels: np.ndarray) -> list[int]:
    return sorted(int(c) for c in np.unique(labels) if c)


def test_surgical_sam_stream_reaches_mean_iou_and_matches_http(stream_service, surgical_clips) -> None:
    url, ious = stream_url(stream_service), []
    with httpx.Client(base_url=stream_service.url, timeout=60) as http:
        for number, clip in enumerate(surgical_clips):
            prompted = present_classes(clip.truth)
            result = run(stream_clip(url, {"model": "surgical_sam", "classes": prompted}, clip.frames))
            assert result.ready["classes"] == prompted and result.ready["task"] == "class_prompted"
            assert result.end["answered"] == SURGICAL_CLIP_FRAMES and result.end["dropped"] == 0
            for (header, labels), truth in zip(result.answers, clip.truth):
                assert "error" not in header, header
                assert header["size"] == list(SURGICAL_SHAPE) and labels.shape == SURGICAL_SHAPE
                assert set(np.unique(labels)) <= {0, *prompted}
                assert header["timing"]["graph_calls"] >= 2
                classes = header["classes"]
                assert [entry["id"] for entry in classes] == prompted, classes
                for entry in classes:
                    assert isinstance(entry["name"], str) and entry["name"]
                    assert isinstance(entry["predicted_iou"], float) and 0.0 <= entry["predicted_iou"] <= 1.5
                    # the class's own mask; the merged map gives overlaps to the higher predicted IoU
                    assert entry["pixels"] >= int((labels == entry["id"]).sum())
                assert header["pixels"] == {str(c): int((labels == c).sum()) for c in range(1, 8)}
                for c in present_classes(truth):
                    p, t = labels == c, truth == c
                    ious.append(float((p & t).sum() / (p | t).sum()))
            # the stream and POST /v1/segment give the same label map for the same frame bytes
            chosen_header, chosen_labels = result.answers[number % SURGICAL_CLIP_FRAMES]
            response = http.post(
                "/v1/segment",
                files={"file": ("frame.png", clip.frames[number % SURGICAL_CLIP_FRAMES], "image/png")},
                data={"model": "surgical_sam", "classes": ",".join(map(str, prompted)), "output": "png"},
            )
            assert response.status_code == 200, response.text
            np.testing.assert_array_equal(
                png_labels(response.content), chosen_labels, err_msg=f"clip {number} frame {chosen_header['frame']}"
            )
    assert np.mean(ious) >= MIN_MEAN_IOU, f"mean IoU {np.mean(ious):.3f} over {len(ious)} (frame, class) pairs"


# --------------------------------------------------------------------------- streams together, bad frames


def corrupt_frames(seed: int, valid: bytes) -> list[bytes]:
    rng = np.random.default_rng(seed)
    garbage = rng.integers(0, 256, 4000, dtype=np.uint8).tobytes()
    truncated = valid[: len(valid) // 3]  # a PNG or JPEG signature, then nothing decodable
    return [garbage, truncated]


async def stream_with_bad_frames(url: str, settings: dict, frames: list[bytes], bad: list[bytes], at: int):
    """``frames`` with ``bad`` inserted at index ``at``, and a text message that is neither a
    frame nor the end just before them; every answer awaited."""
    output = settings.get("output", "png")
    sent = [*frames[:at], *bad, *frames[at:]]
    async with httpx.AsyncClient() as http, aconnect_ws(url, http) as ws:
        ready = await handshake(ws, settings)
        answers, notice = [], None
        for index, frame in enumerate(sent):
            if index == at:
                await ws.send_text(json.dumps({"hello": "not a frame"}))
                notice, _ = await receive_message(ws, output)
            await ws.send_bytes(frame)
            answers.append(await receive_message(ws, output))
        end = await end_stream(ws, output)
    return StreamRun(ready, answers, end), notice, sent


def check_bad_frames_run(result: StreamRun, notice: dict, sent: list[bytes], at: int, bad: int) -> None:
    assert notice is not None and notice.get("error") == "bad_message" and "frame" not in notice, notice
    headers = [header for header, _ in result.answers]
    assert [h["frame"] for h in headers] == list(range(len(sent)))
    for header in headers[at : at + bad]:
        assert set(header) >= {"frame", "error", "message"}, header
        assert isinstance(header["error"], str) and header["error"] and header["message"], header
    for header, labels in result.answers[:at] + result.answers[at + bad :]:
        assert "error" not in header and labels is not None, header
    end = result.end
    assert end["frames"] == len(sent) == end["answered"] + end["errors"] + end["dropped"], end
    assert (end["answered"], end["errors"], end["dropped"]) == (len(sent) - bad, bad, 0), end


def test_concurrent_streams_with_bad_frames_answer_every_frame(stream_service, polyp_clips, surgical_clips) -> None:
    url = stream_url(stream_service)
    answered, errors = frames_counted(stream_service, "answered"), frames_counted(stream_service, "error")
    polyp = polyp_clips[0]
    polyp_jpeg = [encode_frame(np.asarray(Image.open(io.BytesIO(f))), "jpeg", 95) for f in polyp.frames]
    surgical_frames = [f for clip in surgical_clips[:2] for f in clip.frames]
    polyp_bad, surgical_bad = corrupt_frames(71, polyp_jpeg[0]), corrupt_frames(72, surgical_frames[0])

    async def both():
        return await asyncio.gather(
            stream_with_bad_frames(url, {"model": "mast", "reference": "previous"}, polyp_jpeg, polyp_bad, 3),
            stream_with_bad_frames(url, {"model": "surgical_sam"}, surgical_frames, surgical_bad, 4),
        )

    (mast_run, mast_notice, mast_sent), (sam_run, sam_notice, sam_sent) = run(both())
    check_bad_frames_run(mast_run, mast_notice, mast_sent, 3, 2)
    check_bad_frames_run(sam_run, sam_notice, sam_sent, 4, 2)
    assert mast_run.answers[3][0]["error"] == "unsupported_media_type"  # not a PNG or JPEG at all
    # JPEG frames give MAST's masks too; the reference skips the frames that failed
    good = [(labels == 1, truth) for (h, labels), truth in zip(mast_run.answers[:3] + mast_run.answers[5:], polyp.truth)]
    assert global_dice(good) >= MIN_DICE
    assert mast_run.answers[5][0]["reference_frame"] == 2, "frame 5's reference is the last answered frame"
    assert sam_run.ready["classes"] == list(range(1, 8))  # none asked: all classes prompted
    assert frames_counted(stream_service, "answered") - answered == mast_run.end["answered"] + sam_run.end["answered"]
    assert frames_counted(stream_service, "error") - errors == 4
    wait_for_open_streams(stream_service, 0)


# --------------------------------------------------------------------------- clients that go away


def test_a_client_gone_mid_stream_frees_the_stream(stream_service, polyp_clips) -> None:
    url, clip = stream_url(stream_service), polyp_clips[0]
    wait_for_open_streams(stream_service, 0)

    async def close_without_end() -> None:
        async with httpx.AsyncClient() as http, aconnect_ws(url, http) as ws:
            await handshake(ws, {"model": "mast"})
            assert open_streams(stream_service) == 1
            for frame in clip.frames:
                await ws.send_bytes(frame)
            await receive_message(ws)
        # leaving the block closes the WebSocket (close frame 1000) with frames still in flight

    run(close_without_end())
    wait_for_open_streams(stream_service, 0)

    # a client whose connection is reset (no close frame) after one answer, frames still coming
    run(drop_connection(stream_service, {"model": "mast", "reference": "first"}, clip.frames * 3))
    wait_for_open_streams(stream_service, 0)

    # and one that goes before sending anything after its handshake
    async def gone_after_handshake() -> None:
        async with httpx.AsyncClient() as http, aconnect_ws(url, http) as ws:
            await handshake(ws, {"model": "surgical_sam"})

    run(gone_after_handshake())
    wait_for_open_streams(stream_service, 0)

    # a message over the server's WebSocket size limit (16 MiB): uvicorn closes with 1009
    async def oversized() -> WebSocketDisconnect:
        async with httpx.AsyncClient() as http, aconnect_ws(url, http) as ws:
            await handshake(ws, {"model": "mast"})
            await ws.send_bytes(b"\x89PNG\r\n\x1a\n" + bytes(17 << 20))
            try:
                message = await ws.receive_text(30)
            except WebSocketDisconnect as closed:
                return closed
        raise AssertionError(f"a 17 MiB frame was not refused: {message[:200]}")

    assert run(oversized()).code == 1009
    wait_for_open_streams(stream_service, 0)

    # the service keeps serving: HTTP and a new stream
    assert httpx.get(f"{stream_service.url}/readyz", timeout=10).status_code == 200
    result = run(stream_clip(url, {"model": "mast"}, clip.frames))
    assert result.end["answered"] == POLYP_FRAMES
    wait_for_open_streams(stream_service, 0)


# --------------------------------------------------------------------------- refusals


def test_a_stream_over_max_streams_is_closed_with_1013_until_one_ends(one_stream_service, polyp_clips) -> None:
    url, clip = stream_url(one_stream_service), polyp_clips[1]

    async def scenario() -> None:
        async with httpx.AsyncClient() as http:
            async with aconnect_ws(url, http) as first:
                await handshake(first, {"model": "mast"})
                closed = await refused(url, json.dumps({"model": "mast"}))
                assert closed.code == TRY_AGAIN_LATER and closed.reason, (closed.code, closed.reason)
                closed = await refused(url, json.dumps({"model": "surgical_sam"}))
                assert closed.code == TRY_AGAIN_LATER
                # the open stream is unaffected by the refusals
                await first.send_bytes(clip.frames[0])
                header, labels = await receive_message(first)
                assert header["frame"] == 0 and labels.shape == clip.shape
                end = await end_stream(first)
                assert end["answered"] == 1
            # right after the end message, a new stream is accepted
            result = await stream_clip(url, {"model": "mast"}, clip.frames[:2])
            assert result.end["answered"] == 2
            # a client reset mid-stream frees the slot too (within a few seconds)
            await drop_connection(one_stream_service, {"model": "mast"}, clip.frames * 2)
            deadline = time.monotonic() + 5
            while True:
                try:
                    result = await stream_clip(url, {"model": "mast"}, clip.frames[:1])
                    break
                except WebSocketDisconnect as closed:
                    assert closed.code == TRY_AGAIN_LATER
                    assert time.monotonic() < deadline, "the reset stream's slot was not freed within 5 s"
                    await asyncio.sleep(0.2)
            assert result.end["answered"] == 1

    run(scenario())


BAD_HANDSHAKES = [
    pytest.param(json.dumps({"model": "unknown"}), "'model' must be one of", id="unknown-model"),
    pytest.param(json.dumps({}), "'model' must be one of", id="no-model"),
    pytest.param(json.dumps({"model": "hnf_net"}), "not a 2-D frame model", id="volume-model"),
    pytest.param(json.dumps({"model": "mast", "classes": "1"}), "'classes' does not apply", id="classes-for-mast"),
    pytest.param(
        json.dumps({"model": "swtr_unet", "reference": "first"}), "'reference' does not apply", id="reference-for-unet"
    ),
    pytest.param(
        json.dumps({"model": "surgical_sam", "reference": 2}), "'reference' does not apply", id="reference-for-sam"
    ),
    pytest.param(json.dumps({"model": "surgical_sam", "classes": "9"}), "valid classes", id="class-9"),
    pytest.param(json.dumps({"model": "mast", "threshold": 1.5}), "threshold", id="threshold-1.5"),
    pytest.param(json.dumps({"model": "mast", "threshold": "0.5"}), "'threshold' must be a number", id="threshold-text"),
    pytest.param(json.dumps({"model": "mast", "reference": 0}), "'reference' must be", id="reference-0"),
    pytest.param(json.dumps({"model": "mast", "reference": "last"}), "'reference' must be", id="reference-last"),
    pytest.param(json.dumps({"model": "mast", "output": "nifti"}), "'output' must be one of", id="output-nifti"),
    pytest.param(json.dumps({"model": "mast", "fps": 30}), "unknown handshake field", id="unknown-field"),
    pytest.param(json.dumps(["mast"]), "JSON object", id="json-list"),
    pytest.param("model=mast", "JSON handshake", id="not-json"),
    pytest.param(b"\x89PNG\r\n\x1a\n", "text JSON handshake", id="binary-first"),
]


@pytest.mark.parametrize(("first", "reason"), BAD_HANDSHAKES)
def test_a_bad_handshake_is_closed_with_1008_and_a_reason(stream_service, first, reason) -> None:
    closed = run(refused(stream_url(stream_service), first))
    assert closed.code == POLICY_VIOLATION, (closed.code, closed.reason)
    assert reason in closed.reason and len(closed.reason.encode()) <= 123, closed.reason


def test_a_connection_without_handshake_is_closed_with_1008_after_10_s(stream_service) -> None:
    async def silent() -> tuple[WebSocketDisconnect, float]:
        async with httpx.AsyncClient() as http, aconnect_ws(url, http) as ws:
            start = time.monotonic()
            try:
                message = await ws.receive_text(30)
            except WebSocketDisconnect as closed:
                return closed, time.monotonic() - start
        raise AssertionError(f"the server sent {message[:200]} before any handshake")

    url = stream_url(stream_service)
    closed, after_s = run(silent())
    assert closed.code == POLICY_VIOLATION and "handshake" in closed.reason
    assert 9 <= after_s <= 15, after_s
    assert open_streams(stream_service) == 0


def test_a_refused_handshake_holds_no_stream(stream_service) -> None:
    run(refused(stream_url(stream_service), json.dumps({"model": "hnf_net"})))
    assert open_streams(stream_service) == 0


# --------------------------------------------------------------------------- backpressure


@pytest.fixture(scope="module")
def large_frames(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    """Eight 720p polyp frames (mp4 → PyAV → PNG, ~1.7 MB each), cycled by the sender."""
    path, _ = polyp_video(3401, 8, BACKPRESSURE_SHAPE, tmp_path_factory.mktemp("large") / "polyp_720p.mp4")
    return read_mp4(path, 8, BACKPRESSURE_SHAPE)


def test_a_client_that_does_not_read_gets_latest_frame_wins_with_bounded_memory(stream_service, large_frames) -> None:
    url, pid = stream_url(stream_service), stream_service.process.pid
    assert sum(map(len, large_frames)) / len(large_frames) > 1_000_000
    warm = run(stream_clip(url, {"model": "mast"}, large_frames[:3]))  # the stream graphs and buffers, warm
    assert warm.end["answered"] == 3
    dropped_before = frames_counted(stream_service, "dropped")
    baseline = tree_rss(pid)

    async def blast() -> tuple[dict, list[dict], float]:
        async with httpx.AsyncClient() as http, aconnect_ws(url, http) as ws:
            await handshake(ws, {"model": "mast", "reference": "previous"})
            with PeakRss(pid) as during_send:
                for index in range(BACKPRESSURE_FRAMES):
                    await ws.send_bytes(large_frames[index % len(large_frames)])
                await ws.send_text(json.dumps({"end": True}))
            headers = []
            while True:
                header, labels = await receive_message(ws)
                if header.get("end"):
                    break
                assert labels is not None and labels.shape == BACKPRESSURE_SHAPE, header
                headers.append(header)
            with pytest.raises(WebSocketDisconnect):
                await ws.receive_text(10)
        return header, headers, during_send.peak

    end, headers, peak = run(blast(), timeout_s=240)
    growth_mb = (peak - baseline) / 2**20
    assert growth_mb < MAX_RSS_GROWTH_MB, f"service RSS grew {growth_mb:.0f} MB while {BACKPRESSURE_FRAMES} frames came in"
    indices = [h["frame"] for h in headers]
    assert all("error" not in h for h in headers), [h for h in headers if "error" in h][:3]
    assert all(a < b for a, b in zip(indices, indices[1:])), indices
    assert indices[-1] == BACKPRESSURE_FRAMES - 1, "the last frame sent is never dropped"
    assert end["frames"] == BACKPRESSURE_FRAMES == end["answered"] + end["errors"] + end["dropped"], end
    assert end["answered"] == len(headers) and end["errors"] == 0 and end["dropped"] > 0, end
    dropped_counts = [h["dropped"] for h in headers]
    assert dropped_counts == sorted(dropped_counts) and dropped_counts[-1] <= end["dropped"]
    assert frames_counted(stream_service, "dropped") - dropped_before == end["dropped"]
    wait_for_open_streams(stream_service, 0)


def encoder_runs_with_rows(service: LocalService, graph: str) -> dict[str, float]:
    """Cumulative bucket counts of medseg_inference_batch_rows for ``graph`` (le → runs)."""
    buckets: dict[str, float] = {}
    for line in httpx.get(f"{service.url}/metrics", timeout=10).text.splitlines():
        match = re.match(r'^medseg_inference_batch_rows_bucket\{(.*)\}\s+(\S+)$', line)
        if match and f'graph="{graph}"' in match[1]:
            le = re.search(r'le="([^"]+)"', match[1])[1]
            buckets[le] = buckets.get(le, 0.0) + float(match[2])
    return buckets


def test_concurrent_streams_share_one_batcher_and_their_encoder_calls_are_merged(stream_service, polyp_clips) -> None:
    """Four streams sending at once: some encoder runs carry frames of several streams."""
    before = encoder_runs_with_rows(stream_service, "mast_encoder")
    clips = [polyp_clips[i % len(polyp_clips)] for i in range(4)]

    async def all_streams() -> list[StreamRun]:
        return await asyncio.gather(*(
            stream_clip(stream_url(stream_service), {"model": "mast", "reference": "previous"}, clip.frames * 3)
            for clip in clips
        ))

    runs = run(all_streams())
    assert all(r.end["answered"] == len(clips[0].frames) * 3 for r in runs)
    after = encoder_runs_with_rows(stream_service, "mast_encoder")
    runs_total = after["+Inf"] - before.get("+Inf", 0.0)
    single = after["1.0"] - before.get("1.0", 0.0)
    assert runs_total > 0
    assert runs_total - single > 0, "no encoder run carried more than one stream's frame"
