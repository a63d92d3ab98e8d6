"""The generated model repository: config.pbtxt, medseg.json and the ONNX graph agree.

Parametrized over every model folder that `make repository` wrote.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx
import pytest

from export.hashing import sha256_graph
from export.repository import MAX_RELATIVE_PARITY_FP32
from export.registry import REGISTRY
from export.triton.config import parse_config
from services.contract import ModelCard, Parity, TensorSpec, discover_cards
from tritonclient.grpc import model_config_pb2 as mc

REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"
CARDS = discover_cards(REPOSITORY)
_ONNX_DTYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16", onnx.TensorProto.INT64: "int64"}
_TRITON_DTYPES = {mc.TYPE_FP32: "float32", mc.TYPE_FP16: "float16", mc.TYPE_INT64: "int64"}


def test_every_registered_model_was_built() -> None:
    assert set(CARDS) == set(REGISTRY), "run `make repository`"


def _graph_tensors(values) -> dict[str, tuple[str, tuple[int, ...]]]:
    out = {}
    for value in values:
        tensor = value.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim)
        out[value.name] = (_ONNX_DTYPES[tensor.elem_type], dims)
    return out


@dataclass(frozen=True)
class Graph:
    """One ONNX graph folder: a single-graph model, or one component of a multi-graph model."""

    folder: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    graph_file: str
    graph_sha256: str
    parity: Parity
    batched: bool = True


def _graphs() -> dict[str, tuple[ModelCard, Graph]]:
    graphs = {}
    for card in CARDS.values():
        if card.components:
            for c in card.components:
                graphs[c.model] = (
                    card, Graph(c.model, c.inputs, c.outputs, c.graph_file, c.graph_sha256, c.parity, c.batched)
                )
        else:
            graphs[card.name] = (card, Graph(card.name, card.inputs, card.outputs, card.graph_file, card.graph_sha256, card.parity))
    return graphs


GRAPHS = _graphs()


def _assert_tensors_agree(config_tensors, card_tensors, graph_tensors=None, batched: bool = True) -> None:
    """Batched: config dims are the card shape without the batch axis, which the graph keeps
    dynamic. Unbatched: config dims, card shape and graph shape are the same full shape."""
    assert [t.name for t in config_tensors] == [t.name for t in card_tensors]
    if graph_tensors is not None:
        assert [t.name for t in card_tensors] == list(graph_tensors)
    for config_tensor, card_tensor in zip(config_tensors, card_tensors):
        assert _TRITON_DTYPES[config_tensor.data_type] == card_tensor.dtype
        assert tuple(config_tensor.dims) == (card_tensor.dims if batched else card_tensor.shape)
        if graph_tensors is not None:
            dtype, dims = graph_tensors[card_tensor.name]
            assert dtype == card_tensor.dtype
            if batched:
                assert dims[1:] == card_tensor.dims and dims[0] == -1, "batch axis must be dynamic"
            else:
                assert dims == card_tensor.shape


@pytest.mark.parametrize("folder", sorted(GRAPHS))
def test_config_card_and_graph_agree(folder: str) -> None:
    card, graph = GRAPHS[folder]
    config = parse_config((REPOSITORY / folder / "config.pbtxt").read_text())
    assert config.name == folder
    if card.triton_target == "cpu":  # python backend running the graph with ONNX Runtime (model.py)
        assert config.backend == "python" and not config.platform
        assert (REPOSITORY / folder / card.version / "model.py").is_file()
        assert config.parameters["graph"].string_value == Path(graph.graph_file).name
    else:
        assert config.platform == "onnxruntime_onnx"
    if graph.batched:
        assert config.max_batch_size == card.batching.max_batch_size > 0
        assert config.HasField("dynamic_batching")
    else:  # one call per frame (SurgicalSAM's prompt stage): Triton must not batch it
        assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")

    graph_path = REPOSITORY / folder / graph.graph_file
    assert sha256_graph(graph_path) == graph.graph_sha256
    model = onnx.load(str(graph_path), load_external_data=False)
    _assert_tensors_agree(config.input, graph.inputs, _graph_tensors(model.graph.input), graph.batched)
    _assert_tensors_agree(config.output, graph.outputs, _graph_tensors(model.graph.output), graph.batched)


@pytest.mark.parametrize("name", sorted(n for n, c in CARDS.items() if c.components))
def test_ensemble_config_chains_its_components(name: str) -> None:
    card = CARDS[name]
    config = parse_config((REPOSITORY / name / "config.pbtxt").read_text())
    assert config.name == name and config.platform == "ensemble"
    assert (REPOSITORY / name / card.version).is_dir()
    assert config.max_batch_size == (card.batching.max_batch_size if card.batched else 0)
    _assert_tensors_agree(config.input, card.inputs, batched=card.batched)
    _assert_tensors_agree(config.output, card.outputs, batched=card.batched)
    components = {c.model: c for c in card.components}
    available = {t.name for t in card.inputs}
    for step in config.ensemble_scheduling.step:
        component = components[step.model_name]
        assert set(step.input_map) == {t.name for t in component.inputs}
        assert set(step.input_map.values()) <= available, "a step reads a tensor nothing produced"
        assert set(step.output_map) <= {t.name for t in component.outputs}
        available |= set(step.output_map.values())
    assert {t.name for t in card.outputs} <= available
    assert {s.model_name for s in config.ensemble_scheduling.step} == set(components)


@pytest.mark.parametrize("folder", sorted(GRAPHS))
def test_recorded_parity_is_within_fp32_tolerance(folder: str) -> None:
    parity = GRAPHS[folder][1].parity
    assert parity.logit_range > 0
    assert parity.relative <= MAX_RELATIVE_PARITY_FP32
    assert 1 in parity.batch_sizes and max(parity.batch_sizes) > 1
    # OpenVINO on the same inputs: f32 as close as ONNX Runtime; bf16 (8-bit mantissa), where
    # the exporting CPU has it, within a few percent of the output range (measured: 1.6e-2 at most)
    assert parity.openvino["f32"] <= MAX_RELATIVE_PARITY_FP32
    assert parity.openvino.get("bf16", 0.0) <= 0.05
