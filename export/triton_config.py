"""Triton ``config.pbtxt`` for a model folder, built as Triton's own ModelConfig protobuf."""

from __future__ import annotations

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from services.contract import ModelCard, TensorSpec

_TRITON_DTYPES = {"float32": mc.TYPE_FP32, "float16": mc.TYPE_FP16, "int64": mc.TYPE_INT64, "uint8": mc.TYPE_UINT8}


def _tensor(spec: TensorSpec, message: type) -> object:
    return message(name=spec.name, data_type=_TRITON_DTYPES[spec.dtype], dims=list(spec.dims))


def model_config(card: ModelCard) -> mc.ModelConfig:
    """ONNX Runtime platform, batch axis implicit (max_batch_size > 0), dynamic batching."""
    batching = card.batching
    return mc.ModelConfig(
        name=card.name,
        platform="onnxruntime_onnx",
        max_batch_size=batching.max_batch_size,
        input=[_tensor(s, mc.ModelInput) for s in card.inputs],
        output=[_tensor(s, mc.ModelOutput) for s in card.outputs],
        dynamic_batching=mc.ModelDynamicBatching(
            preferred_batch_size=list(batching.preferred_batch_sizes),
            max_queue_delay_microseconds=5000,
        ),
        instance_group=[mc.ModelInstanceGroup(kind=mc.ModelInstanceGroup.KIND_CPU, count=1)],
        version_policy=mc.ModelVersionPolicy(specific=mc.ModelVersionPolicy.Specific(versions=[int(card.version)])),
    )


def render_config(card: ModelCard) -> str:
    """The config.pbtxt text."""
    return text_format.MessageToString(model_config(card))


def parse_config(text: str) -> mc.ModelConfig:
    """Parse config.pbtxt text with Triton's schema (raises on unknown fields or bad values)."""
    return text_format.Parse(text, mc.ModelConfig())
