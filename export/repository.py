"""Write one model folder of the Triton model repository: graph, config.pbtxt and medseg.json."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
from tritonclient.grpc import model_config_pb2 as mc

from export.hashing import sha256_file, sha256_graph
from export.onnx_export import export_onnx, measure_parity
from export.registry import REGISTRY, WEIGHTS_DIR, ModelSpec, get_entry
from export.triton.config import TARGETS, ensemble_config, graph_config, model_config, render_config, warmup_files
from export.weights_io import load_weights
from services.contract import CARD_FILE, Component, ModelCard, Parity, Weights

MAX_RELATIVE_PARITY_FP32 = 1e-4
VERSION = "1"


class ParityError(RuntimeError):
    """ONNX Runtime disagrees with PyTorch beyond the fp32 tolerance."""


def _demo_weights(spec: ModelSpec, variant: str) -> Path | None:
    name = spec.variant(variant).demo_weights
    return WEIGHTS_DIR / name if name else None


def resolve_weights(
    spec: ModelSpec, variant: str, weights: Path | None, sam_checkpoint: Path | None = None
) -> tuple[Path | None, Weights]:
    """Which file to load and its provenance record. No file: seeded random initialisation."""
    if sam_checkpoint is not None and (weights is None or not get_entry(spec.name).needs_sam_checkpoint):
        sam_models = sorted(name for name, entry in REGISTRY.items() if entry.needs_sam_checkpoint)
        raise ValueError(
            f"--sam-checkpoint goes with --weights, for models built on Segment Anything ({', '.join(sam_models)})"
        )
    if weights is not None:
        if sam_checkpoint is None:
            return weights, Weights("official", weights.name, sha256_file(weights), note="supplied with --weights")
        note = (
            f"supplied with --weights; image encoder and dense positional encoding from --sam-checkpoint "
            f"{sam_checkpoint.name} (sha256 {sha256_file(sam_checkpoint)})"
        )
        return weights, Weights("official", f"{weights.name} + {sam_checkpoint.name}", sha256_file(weights), note=note)
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


def check_parity(name: str, parity: Parity) -> Parity:
    """Raise ParityError above the fp32 tolerance; return ``parity`` otherwise."""
    if parity.relative > MAX_RELATIVE_PARITY_FP32:
        raise ParityError(
            f"{name}: ONNX Runtime differs from PyTorch by {parity.max_abs_diff:.3g} "
            f"({parity.relative:.3g} of the output range; limit {MAX_RELATIVE_PARITY_FP32})"
        )
    return parity


PYTHON_MODEL = Path(__file__).resolve().parent / "triton" / "python_model.py"


def write_triton_files(folder: Path, config: mc.ModelConfig, target: str) -> None:
    """config.pbtxt of one graph folder, its ``warmup/`` data files, and ``<version>/model.py``
    for the python backend (cpu)."""
    (folder / "config.pbtxt").write_text(render_config(config))
    for name, data in warmup_files(config).items():
        (folder / "warmup").mkdir(exist_ok=True)
        (folder / "warmup" / name).write_bytes(data)
    script = folder / VERSION / "model.py"
    if target == "cpu":
        script.write_text(PYTHON_MODEL.read_text())
    else:
        script.unlink(missing_ok=True)


def build_model_folder(
    spec: ModelSpec,
    variant: str,
    repository: Path,
    weights: Path | None = None,
    say: Callable[[str], None] = print,
    sam_checkpoint: Path | None = None,
    target: str = "cpu",
) -> ModelCard:
    """Build ``<repository>/<spec.name>/`` from PyTorch; return the card written as medseg.json.

    Multi-graph models also write one folder per graph (``<name>_<role>``) and make
    ``<spec.name>/`` a Triton ensemble over them. Raises ParityError when ONNX Runtime and
    PyTorch differ by more than 1e-4 of an output's range. ``sam_checkpoint``: the stock SAM file
    that official SurgicalSAM weights build on. ``target``: the Triton deployment the configs are
    written for, ``cpu`` (python backend + ``model.py`` running ONNX Runtime, what runs here) or
    ``gpu`` (ONNX Runtime platform with TensorRT FP16, GPU instances); see export.triton.config.
    """
    if target not in TARGETS:
        raise ValueError(f"target must be one of {', '.join(TARGETS)}; got {target!r}")
    folder = repository / spec.name
    graphs = spec.graphs(variant)
    steps = 2 + 2 * max(1, len(graphs))
    started = time.perf_counter()
    done = 0

    def step(what: str) -> None:
        nonlocal done
        done += 1
        say(f"[{spec.name}/{variant}] {done}/{steps} {what} (t={time.perf_counter() - started:.1f}s)")

    step("building the network and loading weights")
    torch.manual_seed(0)
    entry = get_entry(spec.name)
    model = entry.build(variant).eval()
    weights_file, provenance = resolve_weights(spec, variant, weights, sam_checkpoint)
    if weights is not None and weights.suffix != ".safetensors" and entry.load_official is not None:
        entry.load_official(model, weights, sam_checkpoint)  # the published checkpoint's format
    elif weights_file is not None:
        load_weights(model, weights_file)
    inputs, outputs = spec.tensors(variant)

    components: list[Component] = []
    if graphs:
        assert entry.cut_graphs is not None, f"{spec.name} lays out graphs but cuts none"
        modules = entry.cut_graphs(model)
        for graph in graphs:
            name = spec.graph_model(graph.role)
            path = repository / name / VERSION / "model.onnx"
            step(f"exporting ONNX to {path.relative_to(repository)}")
            export_onnx(modules[graph.role], graph.inputs, graph.outputs, path)
            step(f"checking ONNX Runtime against PyTorch ({graph.role})")
            parity = check_parity(name, measure_parity(modules[graph.role], path, graph.inputs))
            config = graph_config(name, graph.inputs, graph.outputs, spec.batching, VERSION, graph.batched, target)
            write_triton_files(repository / name, config, target)
            components.append(
                Component(
                    graph.role, name, graph.inputs, graph.outputs, f"{VERSION}/model.onnx", sha256_graph(path), parity,
                    graph.batched,
                )
            )
        (folder / VERSION).mkdir(parents=True, exist_ok=True)  # Triton wants the (empty) version folder
        worst = max((c.parity for c in components), key=lambda p: p.relative)
        parity = replace(worst, openvino={precision: max(c.parity.openvino.get(precision, 0.0) for c in components)
                                          for precision in worst.openvino})  # the worst graph per precision
        graph_file, graph_sha256 = "", ""
    else:
        graph = folder / VERSION / "model.onnx"
        step(f"exporting ONNX to {graph.relative_to(repository)}")
        export_onnx(model, inputs, outputs, graph)
        step("checking ONNX Runtime against PyTorch")
        parity = check_parity(spec.name, measure_parity(model, graph, inputs))
        graph_file, graph_sha256 = str(graph.relative_to(folder)), sha256_graph(graph)

    step("writing medseg.json and config.pbtxt")
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
        graph_file=graph_file,
        graph_sha256=graph_sha256,
        regions=spec.regions,
        sliding_window=spec.sliding_window(variant),
        threshold=spec.threshold,
        channel_names=spec.channel_names,
        components=tuple(components),
        ensemble=spec.ensemble,
        triton_target=target,
    )
    if components:
        wiring = [(spec.graph_model(s.role), s.input_map, s.output_map) for s in spec.ensemble]
        (folder / "config.pbtxt").write_text(render_config(ensemble_config(card, wiring)))
    else:
        write_triton_files(folder, model_config(card, target), target)
    (folder / CARD_FILE).write_text(card.to_json())
    say(
        f"[{spec.name}/{variant}] done in {time.perf_counter() - started:.1f}s: weights={provenance.kind}, "
        f"parity max|diff|={parity.max_abs_diff:.2e} ({parity.relative:.2e} of range; OpenVINO "
        + ", ".join(f"{precision} {value:.2e}" for precision, value in parity.openvino.items()) + ")"
    )
    return card
