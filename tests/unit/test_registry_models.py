"""Every registered model, the same checks: its small variant builds, its demo weights load
strictly and match their training record, and every graph runs in PyTorch with the output
shapes its spec declares. A new registry entry gets these for free (and test_registry's spec
checks, test_model_repository's card checks, the build's ONNX parity, test_triton's
Triton-equals-embedded); per-model test files keep only what is particular to a model."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from export.hashing import sha256_file
from export.onnx_export import example_inputs
from export.registry import REGISTRY, WEIGHTS_DIR, ModelEntry
from export.weights_io import load_weights
from services.contract import TensorSpec

ENTRIES = list(REGISTRY.values())
DEMO = [(entry, name) for entry in ENTRIES for name, variant in entry.spec.variants.items() if variant.demo_weights]
MAX_DEMO_BYTES = 20 * 2**20  # what the repository may carry per weights file


def demo_network(entry: ModelEntry, variant: str) -> nn.Module:
    """The variant's network with its demo weights when it has some, in eval mode."""
    model = entry.build(variant).eval()
    weights = entry.spec.variant(variant).demo_weights
    return load_weights(model, WEIGHTS_DIR / weights).eval() if weights else model


def graphs(entry: ModelEntry, variant: str) -> list[tuple[str, nn.Module, tuple[TensorSpec, ...], tuple[TensorSpec, ...]]]:
    """(name, module, inputs, outputs) of every graph the variant is exported as."""
    model = demo_network(entry, variant)
    if entry.cut_graphs is None:
        inputs, outputs = entry.spec.tensors(variant)
        return [(entry.spec.name, model, inputs, outputs)]
    modules = entry.cut_graphs(model)
    return [(graph.role, modules[graph.role], graph.inputs, graph.outputs) for graph in entry.spec.graphs(variant)]


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.spec.name)
def test_every_graph_of_the_small_variant_runs_with_its_declared_output_shapes(entry: ModelEntry) -> None:
    torch.manual_seed(0)
    for name, module, inputs, outputs in graphs(entry, "small"):
        with torch.no_grad():
            produced = module(*example_inputs(module, inputs))
        produced = list(produced) if isinstance(produced, (tuple, list)) else [produced]
        assert len(produced) == len(outputs), name
        for tensor, spec in zip(produced, outputs):
            assert tensor.ndim == len(spec.shape), (name, spec.name)
            declared = [(got, want) for got, want in zip(tensor.shape, spec.shape) if want != -1]
            assert all(got == want for got, want in declared), (name, spec.name, tuple(tensor.shape), spec.shape)
            assert torch.isfinite(tensor).all(), (name, spec.name)


@pytest.mark.parametrize(("entry", "variant"), DEMO, ids=lambda x: x.spec.name if isinstance(x, ModelEntry) else x)
def test_demo_weights_load_strictly_and_match_their_record(entry: ModelEntry, variant: str) -> None:
    weights = WEIGHTS_DIR / entry.spec.variant(variant).demo_weights
    record = json.loads(weights.with_suffix(".json").read_text())
    assert (record["model"], record["variant"], record["weights_file"]) == (entry.spec.name, variant, weights.name)
    assert record["sha256"] == sha256_file(weights)
    assert weights.stat().st_size == record.get("size_bytes", weights.stat().st_size) <= MAX_DEMO_BYTES
    demo_network(entry, variant)  # strict: every key and shape
    assert record["wall_time_s"]["total"] > 0 and record["held_out"]


def test_every_model_has_demo_weights_for_its_small_variant() -> None:
    assert {entry.spec.name for entry, variant in DEMO if variant == "small"} == set(REGISTRY)
