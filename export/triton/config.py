"""Triton ``config.pbtxt`` for a model folder, built as Triton's own ModelConfig protobuf."""

from __future__ import annotations

import numpy as np
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from collections.abc import Mapping

from services.contract import Batching, ModelCard, TensorSpec

_TRITON_DTYPES = {"float32": mc.TYPE_FP32, "float16": mc.TYPE_FP16, "int64": mc.TYPE_INT64, "uint8": mc.TYPE_UINT8}


def _tensor(spec: TensorSpec, message: type, batched: bool = True) -> object:
    """A config tensor: ``dims`` without the batch axis when batched, the full shape otherwise."""
    dims = spec.dims if batched else spec.shape
    return message(name=spec.name, data_type=_TRITON_DTYPES[spec.dtype], dims=list(dims))


TARGETS = ("cpu", "gpu")
TRT_WORKSPACE_BYTES = 4 << 30
WARMUP_CLASS_COUNT = 7  # dynamic non-batch axes (SurgicalSAM's class ids) are warmed up at this size


def model_config(card: ModelCard, target: str = "cpu") -> mc.ModelConfig:
    """The config of a single-graph model folder."""
    return graph_config(card.name, card.inputs, card.outputs, card.batching, card.version, target=target)


def graph_config(
    name: str,
    inputs: tuple[TensorSpec, ...],
    outputs: tuple[TensorSpec, ...],
    batching: Batching,
    version: str,
    batched: bool = True,
    target: str = "cpu",
) -> mc.ModelConfig:
    """One ONNX graph as a Triton model.

    ``cpu``: Triton's python backend running ``model.py`` (ONNX Runtime on CPU, or OpenVINO when the
    ``runtime`` parameter says ``openvino``), one instance.
    ``gpu``: the ``onnxruntime_onnx`` platform with the TensorRT execution accelerator in FP16
    (engine cache on), one GPU instance, warm-up requests at batch 1 and the largest batch.
    Batched graphs: batch axis implicit (max_batch_size > 0) and dynamic batching with the
    preferred sizes; unbatched graphs: max_batch_size 0, full shapes, one request per execution.
    """
    if target not in TARGETS:
        raise ValueError(f"target must be one of {', '.join(TARGETS)}; got {target!r}")
    config = mc.ModelConfig(
        name=name,
        max_batch_size=batching.max_batch_size if batched else 0,
        input=[_tensor(s, mc.ModelInput, batched) for s in inputs],
        output=[_tensor(s, mc.ModelOutput, batched) for s in outputs],
        version_policy=mc.ModelVersionPolicy(specific=mc.ModelVersionPolicy.Specific(versions=[int(version)])),
    )
    if batched:
        config.dynamic_batching.CopyFrom(
            mc.ModelDynamicBatching(
                preferred_batch_size=list(batching.preferred_batch_sizes), max_queue_delay_microseconds=batching.max_queue_delay_us
            )
        )
    if target == "cpu":
        config.backend = "python"
        config.instance_group.append(mc.ModelInstanceGroup(kind=mc.ModelInstanceGroup.KIND_CPU, count=1))
        config.parameters["graph"].string_value = "model.onnx"
        config.parameters["intra_op_threads"].string_value = "0"
        config.parameters["runtime"].string_value = "onnxruntime"  # or "openvino" (model.py)
        config.parameters["openvino_precision"].string_value = "auto"
        return config
    config.platform = "onnxruntime_onnx"
    config.instance_group.append(mc.ModelInstanceGroup(kind=mc.ModelInstanceGroup.KIND_GPU, count=1))
    tensorrt = config.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
    tensorrt.parameters.update(
        {
            "precision_mode": "FP16",
            "max_workspace_size_bytes": str(TRT_WORKSPACE_BYTES),
            "trt_engine_cache_enable": "true",
            "trt_engine_cache_path": f"/tmp/medseg_trt_cache/{name}",
        }
    )
    sizes = sorted({1, batching.max_batch_size}) if batched else [1]
    for size in sizes:
        config.model_warmup.append(
            mc.ModelWarmup(
                name=f"warmup_batch_{size}",
                batch_size=size,
                inputs={s.name: _warmup_input(s, batched) for s in inputs},
            )
        )
    return config


def _warmup_input(spec: TensorSpec, batched: bool) -> mc.ModelWarmup.Input:
    """Zeros for float inputs; integer inputs (1-based class ids, where 0 is no class) read the
    valid ids 1..WARMUP_CLASS_COUNT from ``warmup/<input name>`` (see warmup_files)."""
    dims = [WARMUP_CLASS_COUNT if d == -1 else d for d in (spec.dims if batched else spec.shape)]
    warm = mc.ModelWarmup.Input(data_type=_TRITON_DTYPES[spec.dtype], dims=dims)
    if spec.dtype == "int64":
        warm.input_data_file = spec.name
    else:
        warm.zero_data = True
    return warm


def warmup_files(config: mc.ModelConfig) -> dict[str, bytes]:
    """Contents of the ``warmup/`` files a config's warm-up names. Triton sends a warm-up of batch
    size n as n requests of batch 1, each reading one sample (``dims``) from the file: class ids
    1, 2, ... cycling through WARMUP_CLASS_COUNT, little-endian int64."""
    return {
        warm.input_data_file: (np.arange(int(np.prod(warm.dims)), dtype="<i8") % WARMUP_CLASS_COUNT + 1).tobytes()
        for warmup in config.model_warmup
        for warm in warmup.inputs.values()
        if warm.input_data_file
    }


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


def render_config(config: ModelCard | mc.ModelConfig, target: str = "cpu") -> str:
    """The config.pbtxt text of a card (single-graph model) or of a ready ModelConfig."""
    message = model_config(config, target) if isinstance(config, ModelCard) else config
    return text_format.MessageToString(message)


def parse_config(text: str) -> mc.ModelConfig:
    """Parse config.pbtxt text with Triton's schema (raises on unknown fields or bad values)."""
    return text_format.Parse(text, mc.ModelConfig())
