"""Write one model folder of the Triton model repository: graph, config.pbtxt and medseg.json."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import torch

from export.hashing import sha256_file
from export.onnx_export import export_onnx, measure_parity
from export.specs import MODEL_BUILDERS, WEIGHTS_DIR, ModelSpec
from export.triton_config import render_config
from export.weights_io import load_weights
from services.contract import CARD_FILE, ModelCard, Weights

MAX_RELATIVE_PARITY_FP32 = 1e-4
VERSION = "1"


class ParityError(RuntimeError):
    """ONNX Runtime disagrees with PyTorch beyond the fp32 tolerance."""


def _demo_weights(spec: ModelSpec, variant: str) -> Path | None:
    name = spec.variant(variant).demo_weights
    return WEIGHTS_DIR / name if name else None


def resolve_weights(spec: ModelSpec, variant: str, weights: Path | None) -> tuple[Path | None, Weights]:
    """Which file to load and its provenance record. No file: seeded random initialisation."""
    if weights is not None:
        return weights, Weights("official", weights.name, sha256_file(weights), note="supplied with --weights")
    demo = _demo_weights(spec, variant)
    if demo is not None:
        record_path = demo.with_suffix(".json")
        record = json.loads(record_path.read_text()) if record_path.exists() else {}
        metrics = {k: float(v) for k, v in record.get("held_out", {}).items() if isinstance(v, (int, float))}
        note = (
            "demo weights trained on procedural phantoms by `python -m export train-demo "
            f"{spec.name}`; not for clinical use"
        )
        return demo, Weights("demo", demo.name, sha256_file(demo), note=note, metrics=metrics)
    return None, Weights("random", "seeded random initialisation (torch.manual_seed(0))", None, note="no trained weights")


def build_model_folder(
    spec: ModelSpec,
    variant: str,
    repository: Path,
    weights: Path | None = None,
    say: Callable[[str], None] = print,
) -> ModelCard:
    """Build ``<repository>/<spec.name>/`` from PyTorch; return the card written as medseg.json.

    Raises ParityError when ONNX Runtime and PyTorch differ by more than 1e-4 of the logit range.
    """
    folder = repository / spec.name
    graph = folder / VERSION / "model.onnx"
    steps = 4
    started = time.perf_counter()

    def step(i: int, what: str) -> None:
        say(f"[{spec.name}/{variant}] {i}/{steps} {what} (t={time.perf_counter() - started:.1f}s)")

    step(1, "building the network and loading weights")
    torch.manual_seed(0)
    model = MODEL_BUILDERS[spec.name](variant).eval()
    weights_file, provenance = resolve_weights(spec, variant, weights)
    if weights_file is not None:
        load_weights(model, weights_file)
    inputs, outputs = spec.tensors(variant)

    step(2, f"exporting ONNX to {graph.relative_to(repository)}")
    export_onnx(model, inputs, outputs, graph)

    step(3, "checking ONNX Runtime against PyTorch")
    parity = measure_parity(model, graph, inputs)
    if parity.relative > MAX_RELATIVE_PARITY_FP32:
        raise ParityError(
            f"{spec.name}/{variant}: ONNX Runtime differs from PyTorch by {parity.max_abs_diff:.3g} "
            f"({parity.relative:.3g} of the logit range; limit {MAX_RELATIVE_PARITY_FP32})"
        )

    step(4, "writing medseg.json and config.pbtxt")
    card = ModelCard(
        name=spec.name,
        display_name=spec.display_name,
        task=spec.task,
        variant=variant,
        version=VERSION,
        description=spec.description,
        inputs=inputs,
        outputs=outputs,
        activation=spec.activation,
        preprocessing=spec.preprocessing(variant),
        labels=spec.labels,
        batching=spec.batching,
        weights=provenance,
        parity=parity,
        graph_file=str(graph.relative_to(folder)),
        graph_sha256=sha256_file(graph),
        regions=spec.regions,
        sliding_window=spec.sliding_window(variant),
        threshold=spec.threshold,
        channel_names=spec.channel_names,
    )
    (folder / "config.pbtxt").write_text(render_config(card))
    (folder / CARD_FILE).write_text(card.to_json())
    say(
        f"[{spec.name}/{variant}] done in {time.perf_counter() - started:.1f}s: weights={provenance.kind}, "
        f"parity max|diff|={parity.max_abs_diff:.2e} ({parity.relative:.2e} of range)"
    )
    return card
