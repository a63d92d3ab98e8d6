"""config.pbtxt for both deployment targets, parsed back with Triton's ModelConfig schema."""

from __future__ import annotations

import pytest
from tritonclient.grpc import model_config_pb2 as mc

from export.specs import get_spec
from export.triton_config import graph_config, parse_config, render_config

SPEC = get_spec("surgical_sam")
ENCODER, PROMPT = SPEC.graphs("small")


def rendered(graph, target: str) -> mc.ModelConfig:
    name = SPEC.graph_model(graph.role)
    return parse_config(render_config(graph_config(name, graph.inputs, graph.outputs, SPEC.batching, "1", graph.batched, target)))


def test_cpu_target_is_the_python_backend_with_dynamic_batching() -> None:
    config = rendered(ENCODER, "cpu")
    assert config.backend == "python" and not config.platform
    assert [g.kind for g in config.instance_group] == [mc.ModelInstanceGroup.KIND_CPU]
    assert config.max_batch_size == 4 and list(config.dynamic_batching.preferred_batch_size) == [2, 4]
    assert config.parameters["graph"].string_value == "model.onnx"
    assert not config.model_warmup and not config.optimization.HasField("execution_accelerators")


def test_gpu_target_is_onnxruntime_with_tensorrt_fp16_on_gpu_instances_and_warmup() -> None:
    config = rendered(ENCODER, "gpu")
    assert config.platform == "onnxruntime_onnx" and not config.backend
    assert [g.kind for g in config.instance_group] == [mc.ModelInstanceGroup.KIND_GPU]
    (trt,) = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert trt.name == "tensorrt" and trt.parameters["precision_mode"] == "FP16"
    assert trt.parameters["trt_engine_cache_enable"] == "true"
    assert [w.batch_size for w in config.model_warmup] == [1, 4]
    warm = config.model_warmup[0].inputs["image"]
    assert list(warm.dims) == [3, 256, 256] and warm.zero_data and warm.data_type == mc.TYPE_FP32
    assert list(config.dynamic_batching.preferred_batch_size) == [2, 4]


def test_unbatched_graph_warms_up_with_concrete_dims_and_is_never_batched() -> None:
    for target in ("cpu", "gpu"):
        config = rendered(PROMPT, target)
        assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
        assert [list(t.dims) for t in config.input] == [[1, 256, 16, 16], [-1]]
    (warm,) = rendered(PROMPT, "gpu").model_warmup
    assert warm.batch_size == 1 and list(warm.inputs["class_ids"].dims) == [7]
    assert warm.inputs["class_ids"].data_type == mc.TYPE_INT64


def test_unknown_target_is_refused() -> None:
    with pytest.raises(ValueError, match="target must be one of cpu, gpu"):
        graph_config("x", ENCODER.inputs, ENCODER.outputs, SPEC.batching, "1", True, "tpu")
