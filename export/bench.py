"""Benchmark: PyTorch eager vs ONNX Runtime vs the HTTP route, side by side in one run.

For each variant: batch-1 latency and batch-8 throughput of PyTorch eager and ONNX Runtime on the
same weights and inputs, and the round trip of POST /v1/segment (a 512x512 CT DICOM slice) on a
real `bentoml serve` of that variant, against bare ONNX Runtime at batch 1. Figures are medians
over ``repeats`` runs after warm-up; ratios are what to compare across machines.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import torch

from clients.local_service import local_service
from export.repository import build_model_folder, resolve_weights
from export.specs import MODEL_BUILDERS, get_spec
from export.weights_io import load_weights
from services.runtime.ort_backend import open_session

ROOT = Path(__file__).resolve().parent.parent


def median_seconds(run: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        run()
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def http_round_trip(repository: Path, model: str, payload: bytes, repeats: int) -> float:
    """Median seconds of POST /v1/segment (output=png) on a fresh `bentoml serve` of ``repository``."""
    with tempfile.TemporaryDirectory() as workdir, local_service(repository, Path(workdir)) as service:
        with httpx.Client(base_url=service.url, timeout=300) as http:

            def call() -> None:
                response = http.post(
                    "/v1/segment", files={"file": ("x.dcm", payload, "application/dicom")}, data={"model": model}
                )
                response.raise_for_status()

            return median_seconds(call, repeats)


def phantom_dicom() -> bytes:
    """A 512x512 CT phantom slice as DICOM (the writer of the test fixtures)."""
    sys.path.insert(0, str(ROOT))
    from export.phantoms.ct_liver import make_ct_slice
    from tests.fixtures.dicom_writer import write_ct_slice

    phantom = make_ct_slice(np.random.default_rng(7))
    return write_ct_slice(phantom.hu, phantom.spacing_mm)


def run_benchmark(model: str, variants: list[str], repeats: int = 10) -> dict[str, dict[str, float]]:
    """Print and return the figures per variant."""
    torch.set_num_threads(os.cpu_count() or 1)
    spec = get_spec(model)
    payload = phantom_dicom()
    results: dict[str, dict[str, float]] = {}
    for variant in variants:
        with tempfile.TemporaryDirectory() as tmp:
            repository = Path(tmp)
            card = build_model_folder(spec, variant, repository)
            network = MODEL_BUILDERS[model](variant).eval()
            weights_file, _ = resolve_weights(spec, variant, None)
            if weights_file is not None:
                load_weights(network, weights_file)
            session = open_session(repository / model / card.graph_file, threads=0)
            input_name = card.inputs[0].name
            rng = np.random.default_rng(0)
            figures: dict[str, float] = {}
            for batch in (1, 8):
                x = rng.random((batch, *card.inputs[0].dims), dtype=np.float32)
                x_torch = torch.from_numpy(x)
                reps = repeats if batch == 1 else max(3, repeats // 3)
                with torch.inference_mode():
                    figures[f"torch_b{batch}_s"] = median_seconds(lambda: network(x_torch), reps)
                figures[f"ort_b{batch}_s"] = median_seconds(lambda: session.run(None, {input_name: x}), reps)
            figures["http_s"] = http_round_trip(repository, model, payload, repeats)
            results[variant] = figures
            print(_report(model, variant, figures), flush=True)
    return results


def _report(model: str, variant: str, f: dict[str, float]) -> str:
    return "\n".join(
        [
            f"## {model} / {variant}",
            f"batch 1 latency   : PyTorch eager {f['torch_b1_s'] * 1e3:8.1f} ms | ONNX Runtime {f['ort_b1_s'] * 1e3:8.1f} ms"
            f" | ORT speed-up x{f['torch_b1_s'] / f['ort_b1_s']:.2f}",
            f"batch 8 throughput: PyTorch eager {8 / f['torch_b8_s']:8.1f} img/s | ONNX Runtime {8 / f['ort_b8_s']:8.1f} img/s"
            f" | ORT speed-up x{f['torch_b8_s'] / f['ort_b8_s']:.2f}",
            f"HTTP /v1/segment  : {f['http_s'] * 1e3:8.1f} ms (512x512 CT DICOM) vs bare ORT batch 1 {f['ort_b1_s'] * 1e3:.1f} ms"
            f" | overhead {(f['http_s'] - f['ort_b1_s']) * 1e3:.1f} ms, x{f['http_s'] / f['ort_b1_s']:.2f}",
        ]
    )
