"""The generated model repository: config.pbtxt, medseg.json and the ONNX graph agree.

Parametrized over every model folder that `make repository` wrote.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from export.hashing import sha256_file
from export.repository import MAX_RELATIVE_PARITY_FP32
from export.specs import MODEL_SPECS
from export.triton_config import parse_config
from services.contract import discover_cards
from tritonclient.grpc import model_config_pb2 as mc

REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"
CARDS = discover_cards(REPOSITORY)
_ONNX_DTYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16", onnx.TensorProto.INT64: "int64"}
_TRITON_DTYPES = {mc.TYPE_FP32: "float32", mc.TYPE_FP16: "float16", mc.TYPE_INT64: "int64"}


def test_every_registered_model_was_built() -> None:
    assert set(CARDS) == set(MODEL_SPECS), "run `make repository`"


def _graph_tensors(values) -> dict[str, tuple[str, tuple[int, ...]]]:
    out = {}
    for value in values:
        tensor = value.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim)
        out[value.name] = (_ONNX_DTYPES[tensor.elem_type], dims)
    return out


@pytest.mark.parametrize("name", sorted(CARDS))
def test_config_card_and_graph_agree(name: str) -> None:
    folder = REPOSITORY / name
    card = CARDS[name]
    config = parse_config((folder / "config.pbtxt").read_text())
    assert config.name == folder.name == card.name
    assert config.max_batch_size == card.batching.max_batch_size > 0
    assert config.HasField("dynamic_batching")

    graph_path = folder / card.graph_file
    assert sha256_file(graph_path) == card.graph_sha256
    graph = onnx.load(str(graph_path), load_external_data=False)
    graph_inputs = _graph_tensors(graph.graph.input)
    graph_outputs = _graph_tensors(graph.graph.output)

    for config_tensors, card_tensors, graph_tensors in (
        (config.input, card.inputs, graph_inputs),
        (config.output, card.outputs, graph_outputs),
    ):
        assert [t.name for t in config_tensors] == [t.name for t in card_tensors] == list(graph_tensors)
        for config_tensor, card_tensor in zip(config_tensors, card_tensors):
            dtype, dims = graph_tensors[card_tensor.name]
            assert _TRITON_DTYPES[config_tensor.data_type] == card_tensor.dtype == dtype
            assert tuple(config_tensor.dims) == card_tensor.dims == dims[1:]
            assert dims[0] == -1, "batch axis must be dynamic"


@pytest.mark.parametrize("name", sorted(CARDS))
def test_recorded_parity_is_within_fp32_tolerance(name: str) -> None:
    parity = CARDS[name].parity
    assert parity.logit_range > 0
    assert parity.relative <= MAX_RELATIVE_PARITY_FP32
    assert 1 in parity.batch_sizes and max(parity.batch_sizes) > 1
