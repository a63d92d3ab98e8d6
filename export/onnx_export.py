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
    onnx.checker.check_model(str(path))


def measure_parity(
    model: nn.Module,
    path: Path,
    inputs: tuple[TensorSpec, ...],
    batch_sizes: tuple[int, ...] = (1, 2),
    seed: int = 1234,
) -> Parity:
    """Max |ORT − PyTorch| over the first output on fresh N(0,1)-scaled random inputs.

    ``relative`` divides by the PyTorch logit range (max − min) so the figure is scale-free.
    """
    rng = np.random.default_rng(seed)
    session = open_session(path, threads=0)
    worst, logit_range = 0.0, 0.0
    model.eval()
    for batch in batch_sizes:
        feeds = {s.name: rng.random((batch, *s.dims), dtype=np.float32) for s in inputs}
        with torch.no_grad():
            expected = model(*(torch.from_numpy(feeds[s.name]) for s in inputs))
        expected = (expected[0] if isinstance(expected, (tuple, list)) else expected).numpy()
        got = session.run(None, feeds)[0]
        worst = max(worst, float(np.max(np.abs(got - expected))))
        logit_range = max(logit_range, float(expected.max() - expected.min()))
    return Parity(
        max_abs_diff=worst,
        logit_range=logit_range,
        relative=worst / logit_range if logit_range else float("inf"),
        batch_sizes=batch_sizes,
        seed=seed,
    )
