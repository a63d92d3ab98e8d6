"""Benchmark: PyTorch eager vs ONNX Runtime vs the HTTP route, side by side in one run.

For each model and variant: batch-1 latency and full-batch throughput of PyTorch eager and ONNX
Runtime on the same weights and inputs, and the HTTP round trip on a real `bentoml serve` of that
variant against the same work on bare ONNX Runtime in-process. Figures are medians over
``repeats`` runs after warm-up; ratios are what to compare across machines.
"""

from __future__ import annotations

import asyncio
import gc
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

from load.local_service import local_service
from export.repository import build_model_folder, resolve_weights
from export.registry import get_entry, get_spec
from export.weights_io import load_weights
from services.contract import ModelCard, TensorSpec
from services.pipelines.ensemble import run_ensemble
from services.pipelines.volume3d import segment_volume
from services.runtime.ort_backend import open_session

PROMPTED_CLASSES = 7  # SurgicalSAM frames are timed with every instrument class prompted


def median_seconds(run: Callable[[], object], repeats: int, warmup: int = 2, label: str = "") -> float:
    """Median wall seconds of ``repeats`` calls after ``warmup`` untimed ones; with a ``label``,
    each sample is logged to stderr as it lands (big variants take minutes per call)."""
    for _ in range(warmup):
        run()
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        samples.append(time.perf_counter() - started)
        if label:
            print(f"  {label}: sample {len(samples)}/{repeats} {samples[-1]:.2f} s", file=sys.stderr, flush=True)
    return statistics.median(samples)


Files = dict[str, tuple[str, bytes, str]]


def http_round_trip(repository: Path, route: str, model: str, files: Files, repeats: int, warmup: int = 2) -> float:
    """Median seconds of one POST of ``files`` to ``route`` on a fresh `bentoml serve` of ``repository``."""
    with tempfile.TemporaryDirectory() as workdir, local_service(repository, Path(workdir)) as service:
        with httpx.Client(base_url=service.url, timeout=600) as http:

            def call() -> None:
                http.post(route, files=files, data={"model": model}).raise_for_status()

            return median_seconds(call, repeats, warmup, label="HTTP round trip")


def image_request() -> tuple[str, Files, str]:
    """POST /v1/segment of a 512x512 CT phantom slice as DICOM."""
    from export.phantoms.ct_liver import make_ct_slice
    from export.phantoms.dicom_writer import write_ct_slice

    phantom = make_ct_slice(np.random.default_rng(7))
    dicom = write_ct_slice(phantom.hu, phantom.spacing_mm)
    return "/v1/segment", {"file": ("slice.dcm", dicom, "application/dicom")}, "512x512 CT DICOM"


def volume_request(channels: np.ndarray, names: tuple[str, ...]) -> tuple[str, Files, str]:
    """POST /v1/segment/volume of (C, X, Y, Z) channels as gzip int16 NIfTI files, one per channel."""
    import gzip

    import nibabel as nib

    files = {
        name: (f"{name}.nii.gz", gzip.compress(nib.Nifti1Image(np.round(c).astype(np.int16), np.eye(4)).to_bytes()), "application/gzip")
        for name, c in zip(names, channels)
    }
    return "/v1/segment/volume", files, f"{'x'.join(map(str, channels.shape[1:]))} 4-channel NIfTI"


def brats_phantom_channels() -> np.ndarray:
    from export.phantoms.brats import make_brats_case

    return make_brats_case(np.random.default_rng(7)).channels


def frame_request() -> tuple[str, Files, str]:
    """POST /v1/segment of one 288x384 RGB PNG frame (no reference: the frame is its own)."""
    import io

    from PIL import Image

    pixels = (np.random.default_rng(7).random((288, 384, 3)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return "/v1/segment", {"file": ("frame.png", buffer.getvalue(), "image/png")}, "288x384 RGB PNG frame"


def surgical_frame_request(shape: tuple[int, int]) -> tuple[str, Files, str]:
    """POST /v1/segment of one procedural endoscopic frame as PNG, all 7 classes prompted."""
    import io

    from PIL import Image

    from export.phantoms.surgical import make_surgical_frame

    frame = make_surgical_frame(np.random.default_rng(7), shape)
    buffer = io.BytesIO()
    Image.fromarray(frame.rgb).save(buffer, format="PNG")
    what = f"{shape[0]}x{shape[1]} RGB PNG frame, 7 classes"
    return "/v1/segment", {"file": ("frame.png", buffer.getvalue(), "image/png")}, what


def series_repeats(batch: int, repeats: int) -> int:
    """Timed calls of a series: ``repeats`` at batch 1, a third of them (at least 3) for the
    slower full-batch and whole-volume series."""
    return repeats if batch == 1 else max(3, repeats // 3)


def request_feeds(card: ModelCard, rng: np.random.Generator, rows: int = 1) -> dict[str, np.ndarray]:
    """Random inputs of a card: ``rows`` rows of float inputs when batched, the full shapes when
    not; integer inputs (class ids) count 1, 2, ..."""

    def feed(spec: TensorSpec) -> np.ndarray:
        shape = (rows, *spec.dims) if card.batched else tuple(PROMPTED_CLASSES if d == -1 else d for d in spec.shape)
        if spec.dtype == "int64":
            return np.arange(1, int(np.prod(shape)) + 1, dtype=np.int64).reshape(shape)
        return rng.random(shape, dtype=np.float32)

    return {spec.name: feed(spec) for spec in card.inputs}


def frame_inputs(card: ModelCard, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """SurgicalSAM inputs: ``max_batch_size`` random images (N, 3, S, S) and class ids 1..7."""
    encoder = card.component("image_encoder")
    images = rng.random((card.batching.max_batch_size, *encoder.inputs[0].dims), dtype=np.float32)
    return images, np.arange(1, PROMPTED_CLASSES + 1, dtype=np.int64)


def eager_frame_figures(
    network: torch.nn.Module, images: np.ndarray, ids: np.ndarray, repeats: int, warmup: int
) -> dict[str, float]:
    """SurgicalSAM on PyTorch: one frame with all 7 classes (batch 1), then all ``images`` with
    the encoder batched and one prompt call per frame (throughput)."""
    tensor_ids = torch.from_numpy(ids)

    def frames(count: int) -> None:
        embeddings = network.image_encoder(torch.from_numpy(images[:count]))
        for i in range(count):
            network.predict(embeddings[i : i + 1], tensor_ids)

    figures: dict[str, float] = {"throughput_batch": len(images)}
    with torch.inference_mode():
        for batch in (1, len(images)):
            reps = series_repeats(batch, repeats)
            figures[f"torch_b{batch}_s"] = median_seconds(lambda: frames(batch), reps, warmup, f"eager batch {batch}")
    return figures


def ort_frame_figures(
    repository: Path, card: ModelCard, images: np.ndarray, ids: np.ndarray, repeats: int, warmup: int
) -> dict[str, float]:
    """The same frames as eager_frame_figures on bare ONNX Runtime (encoder graph, then the prompt
    graph per frame), and the prompt stage alone."""
    encoder, prompt = card.component("image_encoder"), card.component("prompt_decoder")
    encode = open_session(repository / encoder.model / encoder.graph_file, threads=0)
    decode = open_session(repository / prompt.model / prompt.graph_file, threads=0)

    def frames(count: int) -> None:
        (embeddings,) = encode.run(None, {"image": images[:count]})
        for i in range(count):
            decode.run(None, {"image_embedding": embeddings[i : i + 1], "class_ids": ids})

    figures: dict[str, float] = {}
    for batch in (1, len(images)):
        reps = series_repeats(batch, repeats)
        figures[f"ort_b{batch}_s"] = median_seconds(lambda: frames(batch), reps, warmup, f"ORT batch {batch}")
    (embedding,) = encode.run(None, {"image": images[:1]})
    figures["prompt_stage_s"] = median_seconds(
        lambda: decode.run(None, {"image_embedding": embedding, "class_ids": ids}), repeats, warmup, "prompt stage"
    )
    return figures


def batch_figures(
    network: torch.nn.Module,
    ort_run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
    card: ModelCard,
    rng: np.random.Generator,
    repeats: int,
    warmup: int,
) -> dict[str, float]:
    """Single-input-per-row models: PyTorch eager vs bare ONNX Runtime on the same random rows,
    at batch 1 and at the card's maximum batch size."""
    throughput_batch = card.batching.max_batch_size
    figures: dict[str, float] = {"throughput_batch": throughput_batch}
    for batch in (1, throughput_batch):
        feeds = request_feeds(card, rng, rows=batch)
        tensors = [torch.from_numpy(feeds[t.name]) for t in card.inputs]
        reps = series_repeats(batch, repeats)
        with torch.inference_mode():
            figures[f"torch_b{batch}_s"] = median_seconds(lambda: network(*tensors), reps, warmup)
        figures[f"ort_b{batch}_s"] = median_seconds(lambda: ort_run(feeds), reps, warmup)
    return figures


def ort_runner(
    repository: Path, card: ModelCard, spinning: bool = False
) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
    """Bare ONNX Runtime for a card: its one session, or its graphs chained as the ensemble says."""
    sessions = {
        name: open_session(repository / graph_file, threads=0, spinning=spinning)
        for name, (graph_file, _) in card.graphs().items()
    }

    def run_graph_sync(name: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        session = sessions[name]
        return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))

    if not card.components:
        return lambda feeds: run_graph_sync(card.name, feeds)

    async def run_graph(name: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return run_graph_sync(name, feeds)

    return lambda feeds: asyncio.run(run_ensemble(card, feeds, run_graph))


def run_benchmark(model: str, variants: list[str], repeats: int = 10, warmup: int = 2) -> dict[str, dict[str, float]]:
    """Print and return the figures per variant.

    Batch-1 latency and throughput at the model's maximum batch size (8 slices or frame pairs for
    2-D models, 4 patches for 3-D ones), PyTorch eager vs ONNX Runtime on the same weights and
    inputs. Then the HTTP round trip against the same work done in-process on bare ONNX Runtime:
    one slice, one self-referenced frame, or the whole sliding window over a 96x96x80 phantom.
    Frame-pair models also time a stream step (one encoder pass, cached reference features)
    against a full pair (two encoder passes); class-prompted models time frames with all 7
    classes prompted, and the prompt stage alone.
    """
    torch.set_num_threads(os.cpu_count() or 1)
    spec = get_spec(model)
    results: dict[str, dict[str, float]] = {}
    for variant in variants:
        with tempfile.TemporaryDirectory() as tmp:
            repository = Path(tmp)
            card = build_model_folder(spec, variant, repository)
            network = get_entry(model).build(variant).eval()
            weights_file, _ = resolve_weights(spec, variant, None)
            if weights_file is not None:
                load_weights(network, weights_file)
            rng = np.random.default_rng(0)
            extra = ""
            if card.task == "class_prompted":
                images, ids = frame_inputs(card, rng)
                figures = eager_frame_figures(network, images, ids, repeats, warmup)
                del network  # each runtime timed with the other's memory released (ViT-H at batch 4 needs it)
                gc.collect()
                figures |= ort_frame_figures(repository, card, images, ids, repeats, warmup)
                size = card.preprocessing.size[0]
                route, files, what = surgical_frame_request((size, size * 5 // 4))  # EndoVis 4:5 frames
                figures["bare_s"] = figures["ort_b1_s"]
                bare_what = "bare ORT, encoder + prompt stage"
                extra = (
                    f"\nprompt stage      : 7 classes in one call {figures['prompt_stage_s'] * 1e3:.1f} ms = "
                    f"{figures['prompt_stage_s'] / figures['ort_b1_s']:.0%} of a frame on ORT"
                )
            else:
                ort_run = ort_runner(repository, card)
                figures = batch_figures(network, ort_run, card, rng, repeats, warmup)
            if card.task == "volume3d":
                channels = brats_phantom_channels()
                route, files, what = volume_request(channels, card.channel_names)

                def bare() -> None:
                    infer = lambda batch: ort_run({card.inputs[0].name: batch})[card.outputs[0].name]  # noqa: E731
                    segment_volume(channels, infer, card.sliding_window, card.regions, card.threshold)

                figures["bare_s"] = median_seconds(bare, series_repeats(0, repeats), warmup=1)
                bare_what = "in-process sliding window on bare ORT"
            elif card.task == "frame_pair":
                route, files, what = frame_request()
                figures["stream_s"] = stream_step_seconds(repository, card, rng, repeats, warmup)
                figures["bare_s"] = figures["stream_s"]
                bare_what = "bare ORT, one encoder pass + pair head"
                extra = (
                    f"\nstream reuse      : full pair (2 encoder passes) {figures['ort_b1_s'] * 1e3:.1f} ms | "
                    f"stream step (1 pass, cached reference) {figures['stream_s'] * 1e3:.1f} ms | "
                    f"saving x{figures['ort_b1_s'] / figures['stream_s']:.2f}"
                )
            elif card.task == "image2d":
                route, files, what = image_request()
                figures["bare_s"] = figures["ort_b1_s"]
                bare_what = "bare ORT batch 1"
            figures["http_s"] = http_round_trip(repository, route, model, files, max(3, repeats // 2), warmup)
            results[variant] = figures
            unit = {"volume3d": "patch", "frame_pair": "pair", "class_prompted": "frame"}.get(card.task, "img")
            print(_report(model, variant, figures, what, bare_what, unit) + extra, flush=True)
    return results


def stream_step_seconds(repository: Path, card: ModelCard, rng: np.random.Generator, repeats: int, warmup: int = 2) -> float:
    """Median seconds of one stream step at batch 1: encode the new frame, run the pair head
    against reference features computed once beforehand."""
    encoder, head = card.component("encoder"), card.component("pair_head")
    encode = open_session(repository / encoder.model / encoder.graph_file, threads=0)
    pair_head = open_session(repository / head.model / head.graph_file, threads=0)
    frame = rng.random((1, *encoder.inputs[0].dims), dtype=np.float32)
    names = [o.name for o in encode.get_outputs()]
    reference = dict(zip(names, encode.run(None, {encoder.inputs[0].name: frame})))
    anchor_step, reference_step = [s for s in card.ensemble if s.role == "encoder"]
    anchor_map, reference_map = anchor_step.output_map, reference_step.output_map  # feat → feat_a; feat4 → feat4_r

    def step() -> None:
        features = dict(zip(names, encode.run(None, {encoder.inputs[0].name: frame})))
        feeds = {anchor_map[k]: v for k, v in features.items()}
        feeds.update({reference_map[k]: reference[k] for k in reference_map})
        pair_head.run(None, {t.name: feeds[t.name] for t in head.inputs})

    return median_seconds(step, repeats, warmup)


def _report(model: str, variant: str, f: dict[str, float], what: str, bare_what: str, unit: str) -> str:
    n = int(f["throughput_batch"])
    return "\n".join(
        [
            f"## {model} / {variant}",
            f"batch 1 latency   : PyTorch eager {f['torch_b1_s'] * 1e3:8.1f} ms | ONNX Runtime {f['ort_b1_s'] * 1e3:8.1f} ms"
            f" | ORT speed-up x{f['torch_b1_s'] / f['ort_b1_s']:.2f}",
            f"batch {n} throughput: PyTorch eager {n / f[f'torch_b{n}_s']:8.2f} {unit}/s | ONNX Runtime"
            f" {n / f[f'ort_b{n}_s']:8.2f} {unit}/s | ORT speed-up x{f[f'torch_b{n}_s'] / f[f'ort_b{n}_s']:.2f}",
            f"HTTP round trip   : {f['http_s'] * 1e3:8.1f} ms ({what}) vs {bare_what} {f['bare_s'] * 1e3:.1f} ms"
            f" | overhead {(f['http_s'] - f['bare_s']) * 1e3:.1f} ms, x{f['http_s'] / f['bare_s']:.2f}",
        ]
    )
