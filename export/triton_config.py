"""Triton ``config.pbtxt`` for a model folder, built as Triton's own ModelConfig protobuf."""

from __future__ import annotations

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from collections.abc import Mapping

from services.contract import Batching, ModelCard, TensorSpec

_TRITON_DTYPES = {"float32": mc.TYPE_FP32, "float16": mc.TYPE_FP16, "int64": mc.TYPE_INT64, "uint8": mc.TYPE_UINT8}


def _tensor(spec: TensorSpec, message: type, batched: bool = True) -> object:
    """A config tensor: ``dims`` without the batch axis when batched, the full shape otherwise."""
    dims = spec.dims if batched else spec.shape
    return message(name=spec.name, data_type=_TRITON_DTYPES[spec.dtype], dims=list(dims))


def model_config(card: ModelCard) -> mc.ModelConfig:
    """The config of a single-graph model folder."""
    return graph_config(card.name, card.inputs, card.outputs, card.batching, card.version)


def graph_config(
    name: str,
    inputs: tuple[TensorSpec, ...],
    outputs: tuple[TensorSpec, ...],
    batching: Batching,
    version: str,
    batched: bool = True,
) -> mc.ModelConfig:
    """ONNX Runtime platform. Batched graphs: batch axis implicit (max_batch_size > 0) and dynamic
    batching; unbatched graphs: max_batch_size 0, full shapes, one request per execution."""
    config = mc.ModelConfig(
        name=name,
        platform="onnxruntime_onnx",
        max_batch_size=batching.max_batch_size if batched else 0,
        input=[_tensor(s, mc.ModelInput, batched) for s in inputs],
        output=[_tensor(s, mc.ModelOutput, batched) for s in outputs],
        instance_group=[mc.ModelInstanceGroup(kind=mc.ModelInstanceGroup.KIND_CPU, count=1)],
        version_policy=mc.ModelVersionPolicy(specific=mc.ModelVersionPolicy.Specific(versions=[int(version)])),
    )
    if batched:
        config.dynamic_batching.CopyFrom(
            mc.ModelDynamicBatching(
                preferred_batch_size=list(batching.preferred_batch_sizes), max_queue_delay_microseconds=5000
            )
        )
    return config


Step = tuple[str, Mapping[str, str], Mapping[str, str]]  # (Triton model, graph input → tensor, graph output → tensor)


def ensemble_config(card: ModelCard, steps: list[Step]) -> mc.ModelConfig:
    """A Triton ensemble with the card's inputs and outputs, chaining ``steps`` in order (unbatched,
    one frame per call, when one of its graphs is)."""
    batched = card.batched
    return mc.ModelConfig(
        name=card.name,
        platform="ensemble",
        max_batch_size=card.batching.max_batch_size if batched else 0,
        input=[_tensor(s, mc.ModelInput, batched) for s in card.inputs],
        output=[_tensor(s, mc.ModelOutput, batched) for s in card.outputs],
        ensemble_scheduling=mc.ModelEnsembling(
            step=[
                mc.ModelEnsembling.Step(model_name=model, model_version=-1, input_map=dict(ins), output_map=dict(outs))
                for model, ins, outs in steps
            ]
        ),
    )


def render_config(config: ModelCard | mc.ModelConfig) -> str:
    """The config.pbtxt text of a card (single-graph model) or of a ready ModelConfig."""
    message = model_config(config) if isinstance(config, ModelCard) else config
    return text_format.MessageToString(message)


def parse_config(text: str) -> mc.ModelConfig:
    """Parse config.pbtxt text with Triton's schema (raises on unknown fields or bad values)."""
    return text_format.Parse(text, mc.ModelConfig())
