"""OrtBackend: the embedded backend, ONNX Runtime sessions in this process."""

from __future__ import annotations

import logging
from pathlib import Path

import anyio
import numpy as np
import onnxruntime as ort

from services.contract import ModelCard, discover_cards
from services.errors import ModelNotFound

log = logging.getLogger("medseg.runtime")


def open_session(graph: Path, threads: int) -> ort.InferenceSession:
    """CPU session with all graph optimisations; ``threads`` = 0 lets ONNX Runtime pick."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])


class OrtBackend:
    """Loads every model of the repository that has a medseg.json at construction."""

    def __init__(self, repository: Path, threads: int = 0) -> None:
        self.cards: dict[str, ModelCard] = discover_cards(repository)
        self._sessions: dict[str, ort.InferenceSession] = {}
        for name, card in self.cards.items():
            self._sessions[name] = open_session(repository / name / card.graph_file, threads)
            log.info("loaded %s (%s, version %s)", name, card.variant, card.version)

    def is_ready(self) -> bool:
        return bool(self.cards) and set(self._sessions) == set(self.cards)

    def run(self, model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Blocking inference (ONNX Runtime releases the GIL while it computes)."""
        session = self._sessions.get(model)
        if session is None:
            raise ModelNotFound(f"model {model!r} is not served")
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, inputs)))

    async def infer(self, model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return await anyio.to_thread.run_sync(self.run, model, inputs)
