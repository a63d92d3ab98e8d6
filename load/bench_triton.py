"""Benchmark: the service on Triton vs embedded, side by side in one run.

For each model, the same request (one per model, as in the Triton tests) is sent at concurrency
1, 4 and 16 to a `bentoml serve` on the embedded back end and to one in front of a real
tritonserver serving the same repository. Reported: p50 / p95 latency and throughput per
configuration, Triton/embedded ratios, and Triton's own per-graph queue and compute times
(from its statistics: cumulative ns / count over the run).
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import tritonclient.grpc as triton_grpc

from load.local_service import local_service
from load.triton_server import triton_server
from export.sample_requests import requests_per_model
from services.contract import discover_cards

CONCURRENCY = (1, 4, 16)


async def load_run(url: str, route: str, files: dict, fields: dict, concurrency: int, requests: int) -> dict[str, float]:
    """``requests`` POSTs with ``concurrency`` in flight → p50/p95 seconds and requests/s."""
    latencies: list[float] = []
    queue = asyncio.Queue()
    for _ in range(requests):
        queue.put_nowait(None)
    async with httpx.AsyncClient(base_url=url, timeout=600) as http:

        async def worker() -> None:
            while not queue.empty():
                queue.get_nowait()
                started = time.perf_counter()
                response = await http.post(route, files=files, data=fields)
                response.raise_for_status()
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    ordered = sorted(latencies)
    return {
        "p50_s": statistics.median(ordered),
        "p95_s": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
        "rps": len(ordered) / wall,
    }


def triton_times(grpc_url: str, graphs: list[str]) -> dict[str, tuple[int, float, float, int]]:
    """Per graph: (inferences, mean queue ms, mean compute ms, executions) since server start."""
    client = triton_grpc.InferenceServerClient(grpc_url)
    out = {}
    for graph in graphs:
        s = client.get_inference_statistics(graph).model_stats[0]
        count = max(1, s.inference_stats.success.count)
        out[graph] = (
            s.inference_count,
            s.inference_stats.queue.ns / count / 1e6,
            s.inference_stats.compute_infer.ns / count / 1e6,
            s.execution_count,
        )
    return out


def run_triton_benchmark(repository: Path, models: list[str], requests_per_level: int = 24) -> dict:
    """Print and return the figures per model, concurrency and back end."""
    cards = discover_cards(repository)
    bodies = requests_per_model()
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        with local_service(repository, work / "embedded") as embedded, triton_server(repository, work / "triton") as server:
            env = {"MEDSEG_BACKEND": "triton", "TRITON_URLS": server.grpc_url}
            with local_service(repository, work / "bentoml-triton", env=env) as fronted:
                for model in models:
                    route, files, fields = bodies[model]
                    form = {"model": model, **fields}
                    for backend, service in (("embedded", embedded), ("triton", fronted)):
                        asyncio.run(load_run(service.url, route, files, form, 1, 2))  # warm-up
                    before = triton_times(server.grpc_url, list(cards[model].graphs()))
                    for concurrency in CONCURRENCY:
                        count = max(requests_per_level, 2 * concurrency)
                        row = {
                            backend: asyncio.run(load_run(service.url, route, files, form, concurrency, count))
                            for backend, service in (("embedded", embedded), ("triton", fronted))
                        }
                        results[(model, concurrency)] = row
                        e, t = row["embedded"], row["triton"]
                        print(
                            f"{model:13s} c={concurrency:2d} | embedded p50 {e['p50_s'] * 1e3:7.0f} ms p95 {e['p95_s'] * 1e3:7.0f} ms"
                            f" {e['rps']:6.2f} req/s | triton p50 {t['p50_s'] * 1e3:7.0f} ms p95 {t['p95_s'] * 1e3:7.0f} ms"
                            f" {t['rps']:6.2f} req/s | triton/embedded p50 x{t['p50_s'] / e['p50_s']:.2f}"
                            f" throughput x{t['rps'] / e['rps']:.2f}",
                            flush=True,
                        )
                    after = triton_times(server.grpc_url, list(cards[model].graphs()))
                    for graph in after:
                        n = after[graph][0] - before[graph][0]
                        runs = after[graph][3] - before[graph][3]
                        print(
                            f"    triton {graph}: {n} inferences in {runs} executions (mean batch {n / max(1, runs):.2f});"
                            f" per inference since start: queue {after[graph][1]:.1f} ms, compute {after[graph][2]:.1f} ms",
                            flush=True,
                        )
    return results
