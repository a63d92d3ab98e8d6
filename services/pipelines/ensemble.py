"""Run a multi-graph model's steps in order, as Triton's ensemble scheduler does.

A step whose graph and input arrays are exactly those of an earlier step is not run again: with
MAST, a frame that is its own reference is encoded once, not twice.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from services.contract import ModelCard

# Runs one graph (Triton model name) on batched named inputs; returns its outputs by name.
GraphRunner = Callable[[str, dict[str, np.ndarray]], Awaitable[dict[str, np.ndarray]]]


@dataclass(frozen=True)
class GraphTiming:
    """Where one graph call's time went (ms): waiting in the worker's queue, the graph run that
    carried it, and the rest of the round trip (serialisation, the API-worker hop)."""

    queue_ms: float
    run_ms: float
    hop_ms: float


# ``GraphRunner`` that also says where the time went.
TimedGraphRunner = Callable[[str, dict[str, np.ndarray]], Awaitable[tuple[dict[str, np.ndarray], GraphTiming]]]


async def run_ensemble(card: ModelCard, inputs: dict[str, np.ndarray], run_graph: GraphRunner) -> dict[str, np.ndarray]:
    """Ensemble inputs by name (batched) → the card's outputs by name; graphs run via ``run_graph``."""
    tensors = await run_ensemble_tensors(card, inputs, run_graph)
    return {spec.name: tensors[spec.name] for spec in card.outputs}


async def run_ensemble_tensors(
    card: ModelCard, inputs: dict[str, np.ndarray], run_graph: GraphRunner, known: dict[str, np.ndarray] | None = None
) -> dict[str, np.ndarray]:
    """Every tensor of the ensemble by name (inputs, intermediates, outputs). ``known``:
    intermediate tensors already computed (a stream's reference features): a step whose every
    output is known is not run."""
    tensors = {**inputs, **(known or {})}
    done: dict[tuple, dict[str, np.ndarray]] = {}
    for step in card.ensemble:
        if known and all(outer in known for outer in step.output_map.values()):
            continue
        model = card.component(step.role).model
        feeds = {graph_input: tensors[outer] for graph_input, outer in step.input_map.items()}
        key = (model, tuple(sorted((name, id(array)) for name, array in feeds.items())))
        if key not in done:
            done[key] = await run_graph(model, feeds)
        for graph_output, outer in step.output_map.items():
            tensors[outer] = done[key][graph_output]
    return tensors
