"""OrtBackend: the embedded backend, ONNX Runtime sessions in this process."""

from __future__ import annotations

import logging
from collections.abc import Collection
from pathlib import Path

import anyio
import numpy as np
import onnxruntime as ort

from services.contract import ModelCard, discover_cards
from services.errors import ModelNotFound

log = logging.getLogger("medseg.runtime")


def open_session(graph: Path, threads: int, spinning: bool = False) -> ort.InferenceSession:
    """CPU session with all graph optimisations; ``threads`` = 0 lets ONNX Runtime pick.

    Every session owns its intra-op thread pool, and by default those threads spin after each
    run. With one session per graph, the spinning pool of the graph that just ran takes the cores
    from the next one (SurgicalSAM's encoder then prompt stage); ``spinning`` is off unless asked
    for (``python -m export bench-spinning`` measures both)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])


class OrtBackend:
    """Loads every graph of every model of the repository that has a medseg.json at construction
    (``models``: only those).

    Sessions are keyed by Triton model name: the model itself, or each component of a
    multi-graph model (``mast_encoder``, ``mast_pair_head``...).
    """

    def __init__(self, repository: Path, threads: int = 0, models: Collection[str] | None = None) -> None:
        self.cards: dict[str, ModelCard] = {
            name: card for name, card in discover_cards(repository).items() if models is None or name in models
        }
        self._expected = {graph for card in self.cards.values() for graph in card.graphs()}
        self._sessions: dict[str, ort.InferenceSession] = {}
        for name, card in self.cards.items():
            for graph, (graph_file, _) in card.graphs().items():
                self._sessions[graph] = open_session(repository / graph_file, threads)
            log.info("loaded %s (%s, version %s, %d graph(s))", name, card.variant, card.version, len(card.graphs()))

    def is_ready(self) -> bool:
        return bool(self.cards) and set(self._sessions) == self._expected

    def run(self, model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Blocking inference of one graph by Triton model name (ONNX Runtime releases the GIL)."""
        session = self._sessions.get(model)
        if session is None:
            raise ModelNotFound(f"model {model!r} is not served")
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, inputs)))

    async def infer(self, model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return await anyio.to_thread.run_sync(self.run, model, inputs)
