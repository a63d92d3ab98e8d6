"""The stream benchmark: 1, 2 and 4 concurrent 30 fps sources of 256×320 JPEG frames, SurgicalSAM
and MAST (the repository's variants), over WS /v1/stream and as per-frame HTTP POSTs to
/v1/segment (each client paced at 30 fps, waiting for each answer), side by side in one run.

Per frame, the stream's time is split as the server reports it (receive + decode, preprocess,
queue, graph, post-process + encode) plus "send": the client's latency less the server's time
(the answer's transfer and the client's own receive). ``non-graph`` is the server's time that is
not graph time; ``non_graph_unwaited`` the same less the wait for the stream's previous frame
(target: at most 5 ms for one stream).

    python -m load bench-stream --frames 90
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import httpx
import numpy as np

from clients.stream_client import StreamReport, stream_frames
from clients.video import encode_frame, latency_summary
from export.phantoms.polyp import make_polyp_clip
from export.phantoms.video import surgical_clip
from load.local_service import ROOT, local_service

SHAPE = (256, 320)
FPS = 30.0
STAGES = ("wait_ms", "receive_decode_ms", "preprocess_ms", "queue_ms", "graph_ms", "hop_ms", "postprocess_ms", "encode_ms")


def clip_frames(model: str, count: int, seed: int) -> list[bytes]:
    """``count`` JPEG frames (quality 90) of a phantom clip for ``model``."""
    if model == "mast":
        rgb = make_polyp_clip(np.random.default_rng(seed), frames=count, shape=SHAPE).frames
    else:
        rgb, _ = surgical_clip(seed, frames=count, shape=SHAPE)
    return [encode_frame(frame, "jpeg", 90) for frame in rgb]


async def http_source(url: str, model: str, frames: list[bytes]) -> tuple[list[float], float]:
    """POST each frame at 30 fps (the next one as soon as the answer is in when behind):
    (latencies ms, achieved fps)."""
    latencies = []
    async with httpx.AsyncClient(timeout=120) as client:
        started = time.perf_counter()
        for index, data in enumerate(frames):
            delay = started + index / FPS - time.perf_counter()
            if delay > 0:
                await anyio.sleep(delay)
            sent = time.perf_counter()
            response = await client.post(f"{url}/v1/segment", files={"file": ("f.jpg", data, "image/jpeg")},
                                         data={"model": model, "output": "png"})
            response.raise_for_status()
            latencies.append((time.perf_counter() - sent) * 1000)
        seconds = time.perf_counter() - started
    return latencies, len(frames) / seconds


async def concurrently(count: int, make: Callable[[int], object]) -> list:
    results: list = [None] * count

    async def one(index: int) -> None:
        results[index] = await make(index)  # type: ignore[misc]

    async with anyio.create_task_group() as group:
        for index in range(count):
            group.start_soon(one, index)
    return results


def stage_medians(reports: list[StreamReport]) -> dict[str, float]:
    answered = [r for report in reports for r in report.results if r.error is None]
    medians = {stage: statistics.median(r.header["timing"][stage] for r in answered) for stage in STAGES}
    medians["send_ms"] = statistics.median(r.latency_ms - r.header["timing"]["server_ms"] for r in answered)
    medians["non_graph_ms"] = statistics.median(r.header["timing"]["non_graph_ms"] for r in answered)
    medians["non_graph_unwaited_ms"] = statistics.median(
        r.header["timing"]["non_graph_ms"] - r.header["timing"]["wait_ms"] for r in answered
    )
    return medians


def run_stream_benchmark(frames: int, streams: tuple[int, ...], models: tuple[str, ...]) -> None:
    with tempfile.TemporaryDirectory(prefix="medseg-bench-stream-") as scratch, local_service(
        ROOT / "model_repository", Path(scratch)
    ) as service:
        print(f"{frames} frames per source, {SHAPE[0]}x{SHAPE[1]} JPEG q90, sources paced at {FPS:g} fps")
        for model in models:
            clips = [clip_frames(model, frames, seed) for seed in range(41, 41 + max(streams))]
            anyio.run(stream_frames, service.url, clips[0][:10], model)  # warm-up
            print(f"\n{model}")
            print(f"{'':10s} {'route':6s} {'p50 ms':>7s} {'p95 ms':>7s} {'max ms':>7s} {'fps/src':>8s} {'dropped':>8s}")
            for count in streams:
                reports: list[StreamReport] = anyio.run(
                    concurrently, count, lambda i: stream_frames(service.url, clips[i], model, fps=FPS)
                )
                ws = latency_summary([r.latency_ms for rep in reports for r in rep.results if r.error is None])
                fps = statistics.mean(rep.achieved_fps for rep in reports)
                dropped = sum(rep.dropped for rep in reports)
                print(f"{count} stream(s) {'ws':6s} {ws['p50']:7.1f} {ws['p95']:7.1f} {ws['max']:7.1f} {fps:8.1f} {dropped:8d}")
                posted = anyio.run(concurrently, count, lambda i: http_source(service.url, model, clips[i]))
                http = latency_summary([ms for latencies, _ in posted for ms in latencies])
                http_fps = statistics.mean(f for _, f in posted)
                print(f"{'':10s} {'http':6s} {http['p50']:7.1f} {http['p95']:7.1f} {http['max']:7.1f} {http_fps:8.1f} {'-':>8s}")
                print(f"{'':10s} ws/http p50 x{http['p50'] / ws['p50']:.2f}")
                stages = stage_medians(reports)
                split = "  ".join(f"{k.removesuffix('_ms')} {v:.2f}" for k, v in stages.items())
                print(f"{'':10s} ws per-frame medians (ms): {split}")
