"""``python -m load bench-backends``: ONNX Runtime fp32, OpenVINO f32 and OpenVINO bf16 on every
graph, side by side in one run, as achieved GFLOP/s against this CPU's peaks.

For each model and variant the graphs are exported into a temporary repository (demo weights
where they exist, random otherwise: speed does not depend on them), and each graph runs at batch
1 and at its largest batch (SurgicalSAM's prompt stage: one frame, 7 classes) on the three
runtimes, one runtime loaded at a time. FLOPs per call are counted on the PyTorch graph at batch 1
(``torch.utils.flop_counter``: a multiply-add is 2 FLOPs) and scaled by the batch (counted at 4,
hnf_net paper gave 1695.07 GFLOP for 4 × 423.77; eager ViT-B at batch 4 does not fit in 24 GB
beside the runtimes); the peaks are measured in the same run on a large matrix product
compiled by OpenVINO at f32 and bf16. With ``--http``, one request per model through a real
``bentoml serve`` on the embedded and the openvino back end.
"""

from __future__ import annotations

import gc
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from load.bench import median_seconds

RUNTIMES = ("ORT fp32", "OV f32", "OV bf16")
ROOT = Path(__file__).resolve().parent.parent
Run = Callable[[dict[str, np.ndarray]], object]


def matmul_peak_gflops(precision: str, size: int = 2048, repeats: int = 10) -> float:
    """GFLOP/s of one (size × size) @ (size × size) product compiled by OpenVINO at ``precision``."""
    import openvino as ov
    import openvino.opset13 as ops

    from services.runtime.ov_backend import DEVICE, compile_config

    a = ops.parameter([size, size], ov.Type.f32, name="a")
    b = ops.constant(np.random.default_rng(0).random((size, size), dtype=np.float32))
    model = ov.Model([ops.matmul(a, b, False, False)], [a])
    compiled = ov.Core().compile_model(model, DEVICE, compile_config(precision, 0))
    x = np.random.default_rng(1).random((size, size), dtype=np.float32)
    request = compiled.create_infer_request()
    seconds = median_seconds(lambda: request.infer({"a": x}), repeats)
    return 2 * size**3 / seconds / 1e9


def graph_flops(module: torch.nn.Module, feeds: dict[str, np.ndarray], names: Sequence[str]) -> float:
    """FLOPs of one call of the PyTorch graph on ``feeds`` (inputs in ``names`` order)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        module(*(torch.from_numpy(feeds[name]) for name in names))
    return float(counter.get_total_flops())


def graph_feeds(inputs, batch: int, rng: np.random.Generator, classes: int = 7) -> dict[str, np.ndarray]:  # noqa: ANN001
    """Random inputs of one graph: ``batch`` rows where the batch axis is free; class ids 1..7."""
    feeds = {}
    for spec in inputs:
        if spec.dtype == "int64":
            feeds[spec.name] = np.arange(1, classes + 1, dtype=np.int64)
        else:
            shape = [batch if d == -1 else d for d in spec.shape]
            feeds[spec.name] = rng.random(shape, dtype=np.float32)
    return feeds


def open_runtime(path: Path, name: str) -> Run:
    """One of ``RUNTIMES`` on the graph at ``path``, ready to call with feeds."""
    if name == "ORT fp32":
        from services.runtime.ort_backend import open_session

        session = open_session(path, threads=0)
        return lambda feeds: session.run(None, feeds)
    from export.onnx_export import compile_openvino

    compiled = compile_openvino(path, name.removeprefix("OV "))
    return lambda feeds: compiled.create_infer_request().infer(feeds)


def model_rows(model: str, variant: str, repeats: int, peaks: dict[str, float], http: bool,
               warmup: int = 2, max_batch: int | None = None) -> list[dict[str, object]]:
    """Every graph of one model variant at batch 1 (``repeats`` timed calls) and its largest batch
    (a third of them, at least one; at most ``max_batch``), on each runtime, each after ``warmup``
    untimed calls."""
    from export.registry import get_entry, get_spec
    from export.repository import resolve_weights
    from export.weights_io import load_weights
    from services.contract import discover_cards

    spec, entry = get_spec(model), get_entry(model)
    rows: list[dict[str, object]] = []
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as work:
        repository = Path(work)
        # In a child process: what exporting ViT-H leaves on this process's heap (GBs) stays there.
        subprocess.run([sys.executable, "-m", "export", "build", "--model", model, "--variant", variant,
                        "--repository", str(repository)], check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
        card = discover_cards(repository)[model]
        network = entry.build(variant).eval()
        weights, _ = resolve_weights(spec, variant, None)
        if weights is not None:
            load_weights(network, weights)
        modules = entry.cut_graphs(network) if card.components else {None: network}
        roles = {c.model: c.role for c in card.components}
        graphs = []  # (graph, its file, feeds per batch, FLOPs per row at batch 1: linear in the batch)
        for graph, (graph_file, inputs) in card.graphs().items():
            largest = min(card.batching.max_batch_size, max_batch or card.batching.max_batch_size)
            batches = sorted({1, largest}) if graph not in card.unbatched_graphs() else [1]
            feeds = {batch: graph_feeds(inputs, batch, rng) for batch in batches}
            graphs.append((graph, graph_file, feeds, graph_flops(modules[roles.get(graph)], feeds[1],
                                                                  [t.name for t in inputs])))
        del network, modules  # PyTorch's copy of ViT-H is 2.5 GB
        gc.collect()
        for graph, graph_file, feeds, flops in graphs:
            graph_rows = {batch: {"model": f"{model}/{variant}", "graph": graph, "batch": batch,
                                  "gflop": flops * batch / 1e9} for batch in feeds}
            for name in RUNTIMES:  # one at a time: ViT-B's four-frame runs take GBs per runtime
                call = open_runtime(repository / graph_file, name)
                for batch, row in graph_rows.items():
                    reps = repeats if batch == 1 else max(1, round(repeats / 3))
                    seconds = median_seconds(lambda: call(feeds[batch]), reps, warmup)
                    row[f"{name} ms"] = seconds * 1000
                    row[f"{name} GFLOP/s"] = flops * batch / seconds / 1e9
                call = None  # released before the next runtime loads
                gc.collect()
            for row in graph_rows.values():
                rows.append(row)
                print(format_row(row, peaks), flush=True)
        if http:
            row = http_row(model, variant, repository, repeats)
            rows.append(row)
            print(f"  {row['model']:22} HTTP {row['what']}: embedded {row['embedded ms']:.1f} ms, "
                  f"openvino {row['openvino ms']:.1f} ms (x{row['embedded ms'] / row['openvino ms']:.2f})", flush=True)
    return rows


def http_row(model: str, variant: str, repository: Path, repeats: int) -> dict[str, object]:
    """One request of the model through ``bentoml serve`` on each in-process back end."""
    import httpx

    from load.bench import brats_phantom_channels, frame_request, image_request, surgical_frame_request, volume_request
    from load.local_service import local_service
    from services.contract import discover_cards

    card = discover_cards(repository)[model]
    if card.task == "volume3d":
        route, files, what = volume_request(brats_phantom_channels(), card.channel_names)
    elif card.task == "frame_pair":
        route, files, what = frame_request()
    elif card.task == "class_prompted":
        size = card.preprocessing.size[0]
        route, files, what = surgical_frame_request((size, size * 5 // 4))
    else:
        route, files, what = image_request()
    row: dict[str, object] = {"model": f"{model}/{variant}", "what": what}
    for backend in ("embedded", "openvino"):
        with tempfile.TemporaryDirectory() as work, \
                local_service(repository, Path(work), env={"MEDSEG_BACKEND": backend}) as service, \
                httpx.Client(base_url=service.url, timeout=900) as client:
            post = lambda: client.post(route, files=files, data={"model": model}).raise_for_status()  # noqa: E731
            row[f"{backend} ms"] = median_seconds(post, max(3, repeats // 2)) * 1000
    return row


def format_row(row: dict[str, object], peaks: dict[str, float]) -> str:
    cells = []
    for name in RUNTIMES:
        peak = peaks["bf16"] if name.endswith("bf16") else peaks["f32"]
        cells.append(f"{name} {row[f'{name} ms']:9.2f} ms {row[f'{name} GFLOP/s']:7.1f} GFLOP/s "
                     f"({row[f'{name} GFLOP/s'] / peak:4.0%})")
    return (f"  {row['model']:22} {row['graph']:30} b{row['batch']:<2} {row['gflop']:8.2f} GFLOP | "
            + " | ".join(cells) + f" | bf16 vs ORT x{row['ORT fp32 ms'] / row['OV bf16 ms']:.2f}")


def run_backend_benchmark(targets: Sequence[tuple[str, str]], repeats: int = 10, http: bool = False,
                          warmup: int = 2, max_batch: int | None = None) -> list[dict]:
    peaks = {precision: matmul_peak_gflops(precision) for precision in ("f32", "bf16")}
    print(f"peaks (OpenVINO, 2048² matmul): f32 {peaks['f32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s; "
          "per graph: median ms, achieved GFLOP/s (share of the peak of its precision)", flush=True)
    rows = []
    for model, variant in targets:
        rows += model_rows(model, variant, repeats, peaks, http, warmup, max_batch)
    return rows
