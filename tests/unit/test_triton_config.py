"""config.pbtxt for both deployment targets, parsed back with Triton's ModelConfig schema."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tritonclient.grpc import model_config_pb2 as mc

from export.repository import write_triton_files
from export.registry import get_spec
from export.triton.config import graph_config, parse_config, render_config

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
    # the card's queue delay is Triton's (5 ms for every model today)
    assert config.dynamic_batching.max_queue_delay_microseconds == SPEC.batching.max_queue_delay_us == 5000
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
    assert warm.inputs["image_embedding"].zero_data


def test_class_ids_warm_up_with_valid_ids_from_the_warmup_folder(tmp_path: Path) -> None:
    """Class id 0 is no class (the graph would gather prototype -1): warm-up reads ids 1..7 from
    ``warmup/class_ids``, one batch-1 sample of exactly the bytes Triton reads."""
    config = rendered(PROMPT, "gpu")
    (warm,) = config.model_warmup
    assert warm.inputs["class_ids"].input_data_file == "class_ids"
    write_triton_files(tmp_path, config, "gpu")
    ids = np.fromfile(tmp_path / "warmup" / "class_ids", dtype="<i8")
    assert ids.tolist() == [1, 2, 3, 4, 5, 6, 7]
    assert [f.name for f in (tmp_path / "warmup").iterdir()] == ["class_ids"]


def test_float_graphs_need_no_warmup_files(tmp_path: Path) -> None:
    write_triton_files(tmp_path, rendered(ENCODER, "gpu"), "gpu")
    assert not (tmp_path / "warmup").exists()


def test_unknown_target_is_refused() -> None:
    with pytest.raises(ValueError, match="target must be one of cpu, gpu"):
        graph_config("x", ENCODER.inputs, ENCODER.outputs, SPEC.batching, "1", True, "tpu")
