"""Benchmark: ONNX Runtime sessions whose idle threads spin vs block, side by side in one run.

Each graph has its own session and intra-op thread pool. For every model of a repository, one
request's graph calls on bare ONNX Runtime (a CT slice, a MAST pair through encoder and pair head,
a SurgicalSAM frame through encoder and prompt stage with 7 classes, one HNF-Net patch), with
spinning sessions and with blocking ones (what services.runtime.ort_backend.open_session gives),
alternating in rounds so that machine noise hits both alike. Reported: p50 per setting, ratio.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np

from load.bench import ort_runner, request_feeds
from services.contract import discover_cards

def run_spinning_benchmark(repository: Path, rounds: int = 5, calls: int = 10) -> dict[str, dict[str, float]]:
    """Print and return p50 milliseconds per model with spinning and blocking sessions."""
    rng = np.random.default_rng(0)
    results: dict[str, dict[str, float]] = {}
    for name, card in sorted(discover_cards(repository).items()):
        feeds = request_feeds(card, rng)
        runners = {spinning: ort_runner(repository, card, spinning=spinning) for spinning in (True, False)}
        samples: dict[bool, list[float]] = {True: [], False: []}
        for run in runners.values():
            run(feeds)  # warm-up
        for _ in range(rounds):
            for spinning, run in runners.items():
                for _ in range(calls):
                    started = time.perf_counter()
                    run(feeds)
                    samples[spinning].append((time.perf_counter() - started) * 1e3)
        spin, block = statistics.median(samples[True]), statistics.median(samples[False])
        results[name] = {"spinning_ms": spin, "blocking_ms": block}
        print(
            f"{name:14s} {len(card.graphs())} graph(s): spinning {spin:8.1f} ms | blocking {block:8.1f} ms | "
            f"speed-up x{spin / block:.2f}",
            flush=True,
        )
    return results
