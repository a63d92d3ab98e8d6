"""Benchmark: the worker's batching policy, BentoML's adaptive batcher vs GraphBatcher, side by side.

Scheduler part: both schedulers drive the same simulated backend, a coroutine that takes ``compute_ms`` plus
``row_ms`` per row (sleeping, so the figures do not depend on this machine's load), through the
same phases: lone calls on a fresh scheduler, a burst of concurrent calls, lone calls again. The
adaptive batcher is BentoML's own CorkDispatcher, configured as a batchable API with our former
settings (max batch 8, max latency 20 s). Reported: p50 of the lone calls before and after the
burst, the burst's throughput and mean rows per run.

Service part (``--service``): a real ``bentoml serve`` of the repository (embedded back end):
lone MAST frames, a burst of BraTS volumes at concurrency 16, lone MAST frames and CT slices
again; p50s and the after/before ratio.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable

import tempfile
from pathlib import Path

import httpx
import numpy as np
from bentoml._internal.marshal.dispatcher import CorkDispatcher

from load.local_service import local_service
from load.bench_triton import load_run
from export.sample_requests import requests_per_model
from services.runtime.graph_batcher import GraphBatcher

Call = Callable[[], Awaitable[object]]


class SimulatedBackend:
    """``compute_ms + row_ms × rows`` per run; counts runs and rows."""

    def __init__(self, compute_ms: float, row_ms: float) -> None:
        self.compute_s, self.row_s = compute_ms / 1e3, row_ms / 1e3
        self.runs = self.rows = 0

    async def run(self, rows: int) -> None:
        self.runs += 1
        self.rows += rows
        await asyncio.sleep(self.compute_s + self.row_s * rows)


async def lone_p50_ms(call: Call, count: int) -> float:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        await call()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e3


async def phases(call: Call, backend: SimulatedBackend, burst: int, lone: int) -> dict[str, float]:
    await lone_p50_ms(call, 16)  # warm-up (BentoML trains its latency model on the first calls)
    fresh = await lone_p50_ms(call, lone)
    runs_before, rows_before = backend.runs, backend.rows
    started = time.perf_counter()
    await asyncio.gather(*(call() for _ in range(burst)))
    burst_s = time.perf_counter() - started
    mean_rows = (backend.rows - rows_before) / max(1, backend.runs - runs_before)
    after = await lone_p50_ms(call, lone)
    return {"fresh_ms": fresh, "burst_rps": burst / burst_s, "mean_rows": mean_rows, "after_ms": after}


async def adaptive_figures(compute_ms: float, row_ms: float, burst: int, lone: int) -> dict[str, float]:
    backend = SimulatedBackend(compute_ms, row_ms)

    async def run_batch(items: tuple[np.ndarray, ...]) -> list[np.ndarray]:
        await backend.run(len(items))
        return list(items)

    dispatcher = CorkDispatcher(20000, 8, fallback=lambda: None, get_batch_size=lambda _: 1)
    batched = dispatcher(run_batch)
    row = np.zeros((1, 4), dtype=np.float32)
    try:
        return await phases(lambda: batched(row), backend, burst, lone)
    finally:
        dispatcher.shutdown()


async def greedy_figures(compute_ms: float, row_ms: float, burst: int, lone: int) -> dict[str, float]:
    backend = SimulatedBackend(compute_ms, row_ms)

    async def infer(model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        await backend.run(len(inputs["x"]))
        return {"y": inputs["x"]}

    batcher = GraphBatcher(infer, {"g": 8})
    row = {"x": np.zeros((1, 4), dtype=np.float32)}
    return await phases(lambda: batcher.run("g", row), backend, burst, lone)


def run_batching_benchmark(compute_ms: float = 60, row_ms: float = 15, burst: int = 240, lone: int = 24) -> dict:
    """Print and return both schedulers' figures and their ratios."""
    adaptive = asyncio.run(adaptive_figures(compute_ms, row_ms, burst, lone))
    greedy = asyncio.run(greedy_figures(compute_ms, row_ms, burst, lone))
    print(f"simulated backend: {compute_ms:g} ms + {row_ms:g} ms per row; burst of {burst} one-row calls")
    for name, f in (("BentoML adaptive", adaptive), ("GraphBatcher", greedy)):
        print(
            f"{name:17s} | lone p50 fresh {f['fresh_ms']:7.1f} ms | burst {f['burst_rps']:6.1f} calls/s, "
            f"mean {f['mean_rows']:.2f} rows/run | lone p50 after the burst {f['after_ms']:7.1f} ms"
        )
    print(
        f"GraphBatcher / adaptive: lone fresh x{greedy['fresh_ms'] / adaptive['fresh_ms']:.2f}, "
        f"burst throughput x{greedy['burst_rps'] / adaptive['burst_rps']:.2f}, "
        f"lone after the burst x{greedy['after_ms'] / adaptive['after_ms']:.2f}"
    )
    return {"adaptive": adaptive, "greedy": greedy}


def lone_requests_ms(url: str, model: str, count: int) -> list[float]:
    """``count`` sequential requests of the model's sample body → milliseconds each."""
    route, files, fields = requests_per_model()[model]
    times = []
    with httpx.Client(base_url=url, timeout=600) as http:
        for _ in range(count):
            started = time.perf_counter()
            http.post(route, files=files, data={"model": model, **fields}).raise_for_status()
            times.append((time.perf_counter() - started) * 1e3)
    return times


def run_service_benchmark(repository: Path, lone: int = 20, burst: int = 32) -> dict[str, float]:
    """Lone MAST requests before and after a burst of hnf_net volumes at concurrency 16."""
    route, files, fields = requests_per_model()["hnf_net"]
    with tempfile.TemporaryDirectory() as tmp, local_service(repository, Path(tmp) / "serve") as service:
        lone_requests_ms(service.url, "mast", 12)  # warm-up
        lone_requests_ms(service.url, "swtr_unet", 4)
        before = statistics.median(lone_requests_ms(service.url, "mast", lone))
        load = asyncio.run(load_run(service.url, route, files, {"model": "hnf_net", **fields}, 16, burst))
        after = statistics.median(lone_requests_ms(service.url, "mast", lone))
        after_ct = statistics.median(lone_requests_ms(service.url, "swtr_unet", lone))
    print(
        f"bentoml serve, embedded: lone mast p50 {before:.0f} ms | burst of {burst} hnf_net volumes at c=16: "
        f"p50 {load['p50_s']:.2f} s, {load['rps']:.2f} req/s | lone mast p50 after {after:.0f} ms "
        f"(x{after / before:.2f} of before), lone swtr_unet p50 after {after_ct:.0f} ms"
    )
    return {"before_ms": before, "after_ms": after, "after_ct_ms": after_ct, **load}
