"""Inference backends: where the ONNX graphs of the model repository run."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from services.contract import ModelCard


class InferenceBackend(Protocol):
    """Runs one model on a batch. Tensors are keyed by the graph's tensor names (medseg.json)."""

    cards: dict[str, ModelCard]

    def is_ready(self) -> bool:
        """True once every model of ``cards`` can serve requests."""
        ...

    async def infer(self, model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one graph (a Triton model name: the model, or a component such as ``mast_encoder``)
        on batched inputs (axis 0 = batch); return all outputs by name."""
        ...
