"""``python -m load bench-int8``: post-training INT8 of swtr_unet, measured against fp32 and bf16.

The graph of ``model_repository/swtr_unet`` is quantized by ONNX Runtime's static quantizer
(QDQ, per-channel weights, signed 8-bit activations), calibrated on ``--calibration`` CT
phantom slices prepared exactly as the service prepares them. Then, side by side in one run:
latency at batch 1 and 8 (medians) of ONNX Runtime fp32, ONNX Runtime INT8, OpenVINO bf16 and
OpenVINO running the INT8 graph, and the liver / lesion Dice of each on ``--cases`` other
phantoms (512², through the service's pre- and post-processing). The issue's rule: keep INT8 if
it is at least 1.3 times faster than bf16 at no more than one Dice point lost.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from load.bench import median_seconds
from load.local_service import ROOT

REPOSITORY = ROOT / "model_repository"
Runner = Callable[[np.ndarray], np.ndarray]


def prepared_phantom(seed: int, card) -> tuple[object, np.ndarray]:  # noqa: ANN001 - a ModelCard
    """A 512² CT phantom slice as the service prepares it, and its labels."""
    from export.phantoms.ct_liver import make_ct_slice
    from services.codecs.decoded import DecodedImage
    from services.pipelines.image2d import prepare_frames

    phantom = make_ct_slice(np.random.default_rng(seed), shape=(512, 512), spacing_mm=(0.8, 0.8))
    image = DecodedImage(pixels=phantom.hu[None].astype(np.float32), modality="CT", source="dicom",
                         pixel_spacing_mm=(0.8, 0.8), slice_spacing_mm=None, window=None, photometric="MONOCHROME2")
    return prepare_frames(image, card), phantom.labels


def quantize(source: Path, target: Path, calibration: list[np.ndarray], input_name: str) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter([{input_name: tensor} for tensor in calibration])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.feeds, None)

    quantize_static(str(source), str(target), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)


def runners(fp32: Path, int8: Path, input_name: str) -> dict[str, Runner]:
    import openvino as ov

    from services.runtime.ort_backend import open_session
    from services.runtime.ov_backend import compile_graph

    core = ov.Core()

    def ort_runner(path: Path) -> Runner:
        session = open_session(path, threads=0)
        return lambda x: session.run(None, {input_name: x})[0]

    def ov_runner(path: Path, precision: str) -> Runner:
        compiled = compile_graph(core, path, precision)
        return lambda x: compiled.create_infer_request().infer({input_name: x})[0]

    return {"ONNX Runtime fp32": ort_runner(fp32), "ONNX Runtime INT8": ort_runner(int8),
            "OpenVINO bf16": ov_runner(fp32, "bf16"), "OpenVINO INT8": ov_runner(int8, "bf16")}


def median_ms(run: Runner, x: np.ndarray, repeats: int) -> float:
    return median_seconds(lambda: run(x), repeats, warmup=3) * 1000


def global_dice(predictions: list[np.ndarray], truths: list[np.ndarray]) -> float:
    p, t = np.concatenate([m.ravel() for m in predictions]), np.concatenate([m.ravel() for m in truths])
    return 2.0 * float((p & t).sum()) / max(1.0, float(p.sum() + t.sum()))


def run_int8_benchmark(calibration: int = 32, cases: int = 20, repeats: int = 15) -> dict[str, dict[str, float]]:
    from services.contract import discover_cards
    from services.pipelines.image2d import labels_from_logits

    card = discover_cards(REPOSITORY)["swtr_unet"]
    name = card.inputs[0].name
    fp32 = REPOSITORY / "swtr_unet" / card.graph_file
    held_out = [prepared_phantom(10_000 + i, card) for i in range(cases)]
    figures: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as work:
        int8 = Path(work) / "model.int8.onnx"
        quantize(fp32, int8, [prepared_phantom(100 + i, card)[0].tensors for i in range(calibration)], name)
        for label, run in runners(fp32, int8, name).items():
            row = {f"batch {b} ms": median_ms(run, np.concatenate([p.tensors for p, _ in held_out[:b]]), repeats)
                   for b in (1, 8)}
            maps = [labels_from_logits(run(p.tensors), p.boxes)[0] for p, _ in held_out]
            truths = [labels for _, labels in held_out]
            row["liver Dice"] = global_dice([m > 0 for m in maps], [t > 0 for t in truths])
            row["lesion Dice"] = global_dice([m == 2 for m in maps], [t == 2 for t in truths])
            figures[label] = row
    print(f"swtr_unet INT8 (ONNX Runtime static quantizer, QDQ, {calibration} calibration slices), "
          f"{cases} held-out 512² phantoms, medians of {repeats}:")
    for label, row in figures.items():
        print(f"  {label:20} " + "  ".join(f"{k} {v:7.2f}" if "ms" in k else f"{k} {v:.4f}" for k, v in row.items()))
    bf16, best_int8 = figures["OpenVINO bf16"], min((figures["ONNX Runtime INT8"], figures["OpenVINO INT8"]),
                                                      key=lambda r: r["batch 1 ms"])
    speedup = bf16["batch 1 ms"] / best_int8["batch 1 ms"]
    lost = max(bf16["liver Dice"] - best_int8["liver Dice"], bf16["lesion Dice"] - best_int8["lesion Dice"])
    keep = speedup >= 1.3 and lost <= 0.01
    print(f"  fastest INT8 vs OpenVINO bf16 at batch 1: x{speedup:.2f}, Dice points lost {100 * lost:.1f}: "
          f"{'keep' if keep else 'drop'} (rule: x1.3 faster at <= 1 point lost)")
    return figures
