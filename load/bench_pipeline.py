"""``python -m load bench-pipeline``: where a 2-D slice's time goes, stage by stage, in one run.

A 512² CT phantom slice as an 8-bit PNG through ``swtr_unet``: the service's own functions called
in-process (decode, letterbox, graph on ONNX Runtime fp32 and on OpenVINO, logits back to the
source grid and arg-maxed, PNG encode of the label map), the post-processing as it was before
OpenCV (Pillow's resize per class, numpy's argmax) side by side, then the same request over HTTP
through a real ``bentoml serve`` on each back end. The in-process stages run with the service's
allocator settings (``services.memory.tune_malloc``) and, side by side in a child process, with
glibc's defaults, each with its minor page faults per slice. Medians of ``--repeats`` calls after
warm-up; compare within one run (the machine is noisy).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from export.sample_requests import png_bytes
from load.bench import median_seconds
from load.local_service import ROOT, local_service

REPOSITORY = ROOT / "model_repository"


def median_ms(call: Callable[[], Any], repeats: int, warmup: int = 3) -> float:
    return median_seconds(call, repeats, warmup) * 1000


def phantom_png(size: int) -> tuple[bytes, np.ndarray]:
    """A CT liver phantom slice in the model's window as an 8-bit PNG, and its labels."""
    from export.phantoms.ct_liver import make_ct_slice

    phantom = make_ct_slice(np.random.default_rng(1301), shape=(size, size), spacing_mm=(0.8, 0.8))
    grey = np.clip((phantom.hu - (60.0 - 200.0)) / 400.0, 0.0, 1.0) * 255.0
    return png_bytes(np.round(grey).astype(np.uint8)), phantom.labels


def pillow_label_map(logits: np.ndarray, box: Any) -> np.ndarray:
    """The post-processing before OpenCV: Pillow's bilinear resize per class, numpy's argmax."""
    maps = logits[:, : box.scaled[0], : box.scaled[1]]
    resized = [np.asarray(Image.fromarray(np.ascontiguousarray(m), mode="F").resize(box.source[::-1], Image.BILINEAR))
               for m in maps]
    return np.argmax(np.stack(resized), axis=0).astype(np.uint8)


def minor_faults_per_call(call: Callable[[], Any], repeats: int) -> float:
    """Minor page faults (fresh pages touched) of this process per call, after one warm-up."""
    call()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(repeats):
        call()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / repeats


def stage_times(data: bytes, model: str, repeats: int) -> dict[str, float]:
    """Median ms per in-process stage (the service's functions) for one upload, and the minor
    page faults per slice of the non-graph stages together."""
    from services.codecs import decode
    from services.codecs.render import png_bytes
    from services.contract import discover_cards
    from services.pipelines.image2d import labels_from_logits, prepare_frames
    from services.runtime.ort_backend import OrtBackend
    from services.runtime.ov_backend import OvBackend

    card = discover_cards(REPOSITORY)[model]
    ort = OrtBackend(REPOSITORY, models=[model])
    with tempfile.TemporaryDirectory() as cache:
        openvino = OvBackend(REPOSITORY, models=[model], cache_dir=Path(cache))
    image = decode(data)
    prepared = prepare_frames(image, card)
    feeds = {card.inputs[0].name: prepared.tensors}
    logits = ort.run(model, feeds)[card.outputs[0].name]
    labels = labels_from_logits(logits, prepared.boxes)

    def non_graph() -> None:
        png_bytes(labels_from_logits(logits, prepare_frames(decode(data), card).boxes)[0])

    return {
        "decode (PNG)": median_ms(lambda: decode(data), repeats),
        "prepare (letterbox)": median_ms(lambda: prepare_frames(image, card), repeats),
        "graph, ONNX Runtime fp32": median_ms(lambda: ort.run(model, feeds), repeats),
        f"graph, OpenVINO {openvino.precision}": median_ms(lambda: openvino.run(model, feeds), repeats),
        "post-process (OpenCV + comparisons)": median_ms(lambda: labels_from_logits(logits, prepared.boxes), repeats),
        "post-process before (Pillow + argmax)": median_ms(lambda: pillow_label_map(logits[0], prepared.boxes[0]), repeats),
        "encode (label PNG)": median_ms(lambda: png_bytes(labels[0]), repeats),
        FAULTS: minor_faults_per_call(non_graph, repeats),
    }


FAULTS = "minor page faults per slice (non-graph)"


def glibc_default_stage_times(size: int, model: str, repeats: int) -> dict[str, float]:
    """``stage_times`` in a child process that keeps glibc's allocator defaults."""
    script = ("import json, sys; from load.bench_pipeline import phantom_png, stage_times; "
              "print(json.dumps(stage_times(phantom_png(int(sys.argv[1]))[0], sys.argv[2], int(sys.argv[3]))))")
    from services.memory import SETTINGS

    tuned = {variable for _, variable, _ in SETTINGS}
    env = {k: v for k, v in os.environ.items() if k not in tuned}
    out = subprocess.run([sys.executable, "-c", script, str(size), model, str(repeats)], cwd=ROOT, env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def non_graph_ms(stages: dict[str, float], post_process: str = "post-process (OpenCV + comparisons)") -> float:
    """Decode + prepare + the given post-process + encode, ms."""
    return sum(stages[k] for k in ("decode (PNG)", "prepare (letterbox)", post_process, "encode (label PNG)"))


def http_times(data: bytes, model: str, repeats: int, backends: tuple[str, ...]) -> dict[str, float]:
    """Median ms of ``POST /v1/segment`` (output png) per back end, a service started for each."""
    figures = {}
    for backend in backends:
        with tempfile.TemporaryDirectory() as work, \
                local_service(REPOSITORY, Path(work), env={"MEDSEG_BACKEND": backend}) as service, \
                httpx.Client(base_url=service.url, timeout=120) as client:
            def post() -> None:
                response = client.post("/v1/segment", files={"file": ("slice.png", data, "image/png")},
                                       data={"model": model, "output": "png"})
                response.raise_for_status()

            figures[f"HTTP, {backend}"] = median_ms(post, repeats, warmup=5)
    return figures


def run_pipeline_benchmark(size: int = 512, model: str = "swtr_unet", repeats: int = 50,
                           backends: tuple[str, ...] = ("embedded", "openvino")) -> dict[str, float]:
    from services.memory import tune_malloc

    data, _ = phantom_png(size)
    tune_malloc()  # as the service's processes do
    stages = stage_times(data, model, repeats)
    glibc = glibc_default_stage_times(size, model, repeats)
    non_graph = non_graph_ms(stages)
    rows = {**{k: (stages[k], glibc[k]) for k in stages},
            "non-graph work (decode+prepare+post+encode)": (non_graph, non_graph_ms(glibc)),
            "non-graph, with the Pillow post-process": (non_graph_ms(stages, "post-process before (Pillow + argmax)"),
                                                        non_graph_ms(glibc, "post-process before (Pillow + argmax)"))}
    print(f"{model}, one {size}x{size} PNG slice, in-process, median of {repeats} (ms):")
    print(f"  {'':44} {'service malloc':>14} {'glibc defaults':>14}")
    for name, (tuned, default) in rows.items():
        print(f"  {name:44} {tuned:14.2f} {default:14.2f}")
    print(f"  non-graph: x{rows['non-graph, with the Pillow post-process'][1] / non_graph:.2f} over the Pillow "
          f"post-process on glibc's defaults, x{non_graph_ms(glibc) / non_graph:.2f} over glibc's defaults alone")
    figures = {**stages, "non-graph": non_graph, **{f"{k}, glibc defaults": v for k, v in glibc.items()},
               "non-graph, glibc defaults": non_graph_ms(glibc)}
    if backends:
        web = http_times(data, model, repeats, backends)
        for name, value in web.items():
            print(f"  {name:44} {value:14.2f}")
        figures.update(web)
    return figures
