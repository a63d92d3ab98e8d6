"""``python -m load bench-pipeline``: where a 2-D slice's time goes, stage by stage, in one run.

A 512² CT phantom slice as an 8-bit PNG through ``swtr_unet``: the service's own functions called
in-process (decode, letterbox, graph on ONNX Runtime fp32 and on OpenVINO, logits back to the
source grid and arg-maxed, PNG encode of the label map), the post-processing as it was before
OpenCV (Pillow's resize per class, numpy's argmax) side by side, then the same request over HTTP
through a real ``bentoml serve`` on each back end. Medians of ``--repeats`` calls after warm-up;
compare within one run (the machine is noisy).
"""

from __future__ import annotations

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


def stage_times(data: bytes, model: str, repeats: int) -> dict[str, float]:
    """Median ms per in-process stage (the service's functions) for one upload."""
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
    return {
        "decode (PNG)": median_ms(lambda: decode(data), repeats),
        "prepare (letterbox)": median_ms(lambda: prepare_frames(image, card), repeats),
        "graph, ONNX Runtime fp32": median_ms(lambda: ort.run(model, feeds), repeats),
        f"graph, OpenVINO {openvino.precision}": median_ms(lambda: openvino.run(model, feeds), repeats),
        "post-process (OpenCV + comparisons)": median_ms(lambda: labels_from_logits(logits, prepared.boxes), repeats),
        "post-process before (Pillow + argmax)": median_ms(lambda: pillow_label_map(logits[0], prepared.boxes[0]), repeats),
        "encode (label PNG)": median_ms(lambda: png_bytes(labels[0]), repeats),
    }


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
    data, _ = phantom_png(size)
    stages = stage_times(data, model, repeats)
    non_graph = sum(v for k, v in stages.items() if not k.startswith(("graph", "post-process before")))
    before = non_graph - stages["post-process (OpenCV + comparisons)"] + stages["post-process before (Pillow + argmax)"]
    print(f"{model}, one {size}x{size} PNG slice, in-process, median of {repeats} (ms):")
    for name, value in stages.items():
        print(f"  {name:40} {value:8.2f}")
    print(f"  {'non-graph work (decode+prepare+post+encode)':40} {non_graph:8.2f}   (with the Pillow post-process: "
          f"{before:.2f}, x{before / non_graph:.2f})")
    figures = {**stages, "non-graph": non_graph, "non-graph before": before}
    if backends:
        web = http_times(data, model, repeats, backends)
        for name, value in web.items():
            print(f"  {name:40} {value:8.2f}")
        figures.update(web)
    return figures
