"""ONNX export of a registered model and the ONNX Runtime vs PyTorch parity check."""

from __future__ import annotations

import gc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from services.contract import Parity, TensorSpec
from services.runtime.ort_backend import open_session

OPSET = 17
# Graphs whose parameters exceed this are stored as model.onnx + one external-data file
# (SAM ViT-L/H: 1.2 / 2.5 GB; protobuf caps a single file at 2 GB).
EXTERNAL_DATA_OVER_BYTES = 1 << 30


def example_inputs(model: nn.Module, inputs: tuple[TensorSpec, ...]) -> tuple[torch.Tensor, ...]:
    """One call's inputs in ``inputs`` order: ``model.example_inputs()`` when the module defines it
    (e.g. valid class ids), else float32 zeros with batch 1."""
    if hasattr(model, "example_inputs"):
        return tuple(model.example_inputs())
    return tuple(torch.zeros((1, *spec.dims), dtype=torch.float32) for spec in inputs)


def export_onnx(
    model: nn.Module,
    inputs: tuple[TensorSpec, ...],
    outputs: tuple[TensorSpec, ...],
    path: Path,
    external_data_over: int = EXTERNAL_DATA_OVER_BYTES,
) -> None:
    """Write ``model`` (eval mode) as ONNX with named tensors; axes declared -1 stay dynamic; run onnx.checker.

    Example inputs come from :func:`example_inputs`. Uses the TorchScript exporter at opset 17 (no onnxscript
    dependency; friendly to TensorRT). Parameters over ``external_data_over`` bytes go to
    ``<graph file>.data`` next to the graph (see :func:`store_external_data`).
    """
    model.eval()
    example = example_inputs(model, inputs)
    dynamic_axes = getattr(model, "dynamic_axes", None) or {
        spec.name: {axis: "batch" for axis, size in enumerate(spec.shape) if size == -1} for spec in (*inputs, *outputs)
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(
            model,
            example,
            str(path),
            input_names=[s.name for s in inputs],
            output_names=[s.name for s in outputs],
            dynamic_axes=dynamic_axes,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    pin_static_dims(path, outputs)
    if parameter_bytes(model) > external_data_over or uses_external_data(path):
        store_external_data(path)
    onnx.checker.check_model(str(path))


def parameter_bytes(model: nn.Module) -> int:
    """Bytes of all parameters and buffers (what the ONNX initializers hold)."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def uses_external_data(path: Path) -> bool:
    """Whether any initializer of the graph lives outside the .onnx file."""
    model = onnx.load(str(path), load_external_data=False)
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


def store_external_data(path: Path) -> None:
    """Rewrite ``path`` with every initializer over 1 KiB in one ``<path name>.data`` file beside
    it (the exporter itself writes one file per tensor past 2 GB); stale tensor files are removed."""
    header = onnx.load(str(path), load_external_data=False)
    written = {
        entry.value
        for t in header.graph.initializer
        if t.data_location == onnx.TensorProto.EXTERNAL
        for entry in t.external_data
        if entry.key == "location"
    }
    model = onnx.load(str(path), load_external_data=True)
    data = path.with_name(path.name + ".data")
    data.unlink(missing_ok=True)
    onnx.save_model(
        model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=data.name,
        size_threshold=1024,
    )
    data.chmod(0o644)  # onnx writes it 600; a server running as another user must read it
    for name in written - {data.name}:
        (path.parent / name).unlink(missing_ok=True)


def pin_static_dims(path: Path, outputs: tuple[TensorSpec, ...]) -> None:
    """Write the declared static output dims into the graph where the exporter left them symbolic
    (sizes computed from input shapes, e.g. an upsampling back to the input size)."""
    model = onnx.load(str(path), load_external_data=False)
    declared = {spec.name: spec.shape for spec in outputs}
    changed = False
    for value in model.graph.output:
        dims = value.type.tensor_type.shape.dim
        for dim, size in zip(dims, declared.get(value.name, ())):
            if size != -1 and not dim.HasField("dim_value"):
                dim.dim_value = size
                changed = True
    if changed:
        onnx.save(model, str(path))


def measure_parity(
    model: nn.Module,
    path: Path,
    inputs: tuple[TensorSpec, ...],
    batch_sizes: tuple[int, ...] = (1, 2),
    seed: int = 1234,
) -> Parity:
    """Max |ORT − PyTorch| over every output on fresh random inputs: ``model.random_inputs(rng,
    batch)`` when the module defines it (e.g. valid class ids), else uniform [0, 1); and the
    same, relative only, for the graph compiled by OpenVINO at each precision it runs here.

    ``relative`` divides by that output's PyTorch scale, max(max − min, max |x|), so the figure
    is scale-free, also for outputs whose values barely vary (SurgicalSAM's IoU predictions of a
    few classes); the output with the worst relative difference is reported (its scale as
    ``logit_range``). PyTorch runs first and each runtime is loaded alone: ViT-H with PyTorch,
    ONNX Runtime and two OpenVINO compilations alive at once does not fit in 24 GB.
    """
    rng = np.random.default_rng(seed)
    model.eval()
    cases = []  # (feeds, PyTorch outputs) per batch size
    for batch in batch_sizes:
        if hasattr(model, "random_inputs"):
            feeds = dict(zip((s.name for s in inputs), model.random_inputs(rng, batch)))
        else:
            feeds = {s.name: rng.random((batch, *s.dims), dtype=np.float32) for s in inputs}
        with torch.no_grad():
            expected = model(*(torch.from_numpy(feeds[s.name]) for s in inputs))
        cases.append((feeds, [w.numpy() for w in (expected if isinstance(expected, (tuple, list)) else [expected])]))
    session = open_session(path, threads=0)
    worst = worst_difference(cases, lambda feeds: session.run(None, feeds))
    session = None  # released before OpenVINO loads
    openvino_worst = {}
    for precision in openvino_precisions():
        network = compile_openvino(path, precision)
        openvino_worst[precision] = worst_difference(
            cases, lambda feeds: list(network.create_infer_request().infer(feeds).values()))[0]
        network = None
        gc.collect()
    relative, max_abs_diff, value_range = worst
    return Parity(
        max_abs_diff=max_abs_diff,
        logit_range=value_range,
        relative=relative,
        batch_sizes=batch_sizes,
        seed=seed,
        openvino={precision: float(f"{value:.3g}") for precision, value in openvino_worst.items()},
    )


def worst_difference(cases: list[tuple[dict[str, np.ndarray], list[np.ndarray]]],
                     run: Callable[[dict[str, np.ndarray]], list[np.ndarray]]) -> tuple[float, float, float]:
    """(relative, max |diff|, scale) of the output that differs most, relatively, from PyTorch's
    over ``cases`` (feeds, PyTorch outputs); the scale is max(max − min, max |x|) of PyTorch's."""
    worst = (0.0, 0.0, 0.0)
    for feeds, expected in cases:
        for want, got in zip(expected, run(feeds)):
            diff = float(np.max(np.abs(got - want)))
            scale = max(float(want.max() - want.min()), float(np.abs(want).max()))
            worst = max(worst, (diff / scale if scale else float("inf"), diff, scale))
    return worst


def openvino_precisions() -> list[str]:
    """The precisions the openvino back end can run here: f32, and bf16 where this CPU has it."""
    import openvino as ov

    from services.runtime.ov_backend import DEVICE, resolve_precision

    capabilities = ov.Core().get_property(DEVICE, "OPTIMIZATION_CAPABILITIES")
    return ["f32"] + (["bf16"] if resolve_precision("auto", capabilities) == "bf16" else [])


def compile_openvino(path: Path, precision: str):  # noqa: ANN201 - openvino.CompiledModel
    """The graph compiled by OpenVINO's CPU plugin as the openvino back end compiles it."""
    import openvino as ov

    from services.runtime.ov_backend import compile_graph

    return compile_graph(ov.Core(), path, precision)
