"""ONNX export of a registered model and the ONNX Runtime vs PyTorch parity check."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from services.contract import Parity, TensorSpec
from services.runtime.ort_backend import open_session

OPSET = 17


def export_onnx(model: nn.Module, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...], path: Path) -> None:
    """Write ``model`` (eval mode) as ONNX with named tensors and a dynamic batch axis; run onnx.checker.

    Uses the TorchScript exporter at opset 17 (no onnxscript dependency; friendly to TensorRT).
    """
    model.eval()
    example = tuple(torch.zeros((1, *spec.dims), dtype=torch.float32) for spec in inputs)
    dynamic_axes = {spec.name: {0: "batch"} for spec in (*inputs, *outputs)}
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
    onnx.checker.check_model(str(path))


def pin_static_dims(path: Path, outputs: tuple[TensorSpec, ...]) -> None:
    """Write the declared non-batch output dims into the graph where the exporter left them symbolic
    (sizes computed from input shapes, e.g. an upsampling back to the input size)."""
    model = onnx.load(str(path), load_external_data=False)
    declared = {spec.name: spec.dims for spec in outputs}
    changed = False
    for value in model.graph.output:
        dims = value.type.tensor_type.shape.dim
        for dim, size in zip(list(dims)[1:], declared.get(value.name, ())):
            if not dim.HasField("dim_value"):
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
    """Max |ORT − PyTorch| over every output on fresh uniform [0, 1) random inputs.

    ``relative`` divides by that output's PyTorch value range (max − min) so the figure is
    scale-free; the output with the worst relative difference is reported.
    """
    rng = np.random.default_rng(seed)
    session = open_session(path, threads=0)
    worst = (0.0, 0.0, 0.0)  # (relative, max_abs_diff, range)
    model.eval()
    for batch in batch_sizes:
        feeds = {s.name: rng.random((batch, *s.dims), dtype=np.float32) for s in inputs}
        with torch.no_grad():
            expected = model(*(torch.from_numpy(feeds[s.name]) for s in inputs))
        expected_list = list(expected) if isinstance(expected, (tuple, list)) else [expected]
        for want, got in zip(expected_list, session.run(None, feeds)):
            want = want.numpy()
            diff = float(np.max(np.abs(got - want)))
            value_range = float(want.max() - want.min())
            relative = diff / value_range if value_range else float("inf")
            worst = max(worst, (relative, diff, value_range))
    relative, max_abs_diff, value_range = worst
    return Parity(
        max_abs_diff=max_abs_diff,
        logit_range=value_range,
        relative=relative,
        batch_sizes=batch_sizes,
        seed=seed,
    )
