"""TensorRT plan builds: shape profiles, the trtexec call and the tensorrt_plan config.

The engines themselves need an NVIDIA GPU and TensorRT's trtexec; that test is skipped elsewhere.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from export.repository import build_model_folder
from export.registry import get_spec
from export.triton.tensorrt_plans import PLAN_FILE, build_plans, plan_config, shape_profile, trtexec_command
from export.triton.config import graph_config, parse_config, render_config
from services.contract import ModelCard, discover_cards

REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"
CARDS = discover_cards(REPOSITORY)


def _class_count(card: ModelCard) -> int:
    return sum(1 for label in card.labels if label.id != 0)


GRAPHS = [
    (card, model, inputs, model not in card.unbatched_graphs())
    for card in CARDS.values()
    for model, (_, inputs) in card.graphs().items()
]


@pytest.mark.parametrize("card,model,inputs,batched", GRAPHS, ids=[g[1] for g in GRAPHS])
def test_graph_runs_at_both_ends_of_its_profile(card: ModelCard, model: str, inputs: tuple, batched: bool) -> None:
    """The profile is a range the graph really accepts: ONNX Runtime runs it at min and max."""
    profile = shape_profile(inputs, batched, card.batching, _class_count(card))
    session = ort.InferenceSession(str(REPOSITORY / card.graphs()[model][0]), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for shapes in (profile.min, profile.max):
        feeds = {
            spec.name: (
                rng.integers(1, _class_count(card) + 1, size=shapes[spec.name], dtype=np.int64)
                if spec.dtype == "int64"
                else rng.random(shapes[spec.name], dtype=np.float32)
            )
            for spec in inputs
        }
        outputs = session.run(None, feeds)
        if batched:
            assert all(o.shape[0] == shapes[inputs[0].name][0] for o in outputs)
    for spec in inputs:  # fixed axes stay fixed; min <= opt <= max
        for low, mid, high, size in zip(profile.min[spec.name], profile.opt[spec.name], profile.max[spec.name], spec.shape):
            assert low <= mid <= high and (size == -1 or low == high == size)


def test_batched_graph_profile_spans_the_dynamic_batcher() -> None:
    card = CARDS["swtr_unet"]
    profile = shape_profile(card.inputs, True, card.batching, _class_count(card))
    assert profile.min == {"image": (1, 1, 256, 256)}
    assert profile.opt == {"image": (8, 1, 256, 256)}  # the largest preferred batch
    assert profile.max == {"image": (card.batching.max_batch_size, 1, 256, 256)}


def test_prompt_stage_command_spans_one_to_every_class() -> None:
    card = CARDS["surgical_sam"]
    prompt = next(c for c in card.components if not c.batched)
    profile = shape_profile(prompt.inputs, False, card.batching, _class_count(card))
    command = trtexec_command(Path("/r/p/1/model.onnx"), Path("/r/p/1/model.plan"), profile, "/opt/trt/bin/trtexec")
    assert command == [
        "/opt/trt/bin/trtexec",
        "--onnx=/r/p/1/model.onnx",
        "--saveEngine=/r/p/1/model.plan",
        "--fp16",
        "--minShapes=image_embedding:1x256x16x16,class_ids:1",
        "--optShapes=image_embedding:1x256x16x16,class_ids:7",
        "--maxShapes=image_embedding:1x256x16x16,class_ids:7",
        "--memPoolSize=workspace:4096",
        "--skipInference",
    ]


def test_plan_config_keeps_everything_but_the_runtime() -> None:
    spec = get_spec("surgical_sam")
    encoder = spec.graphs("small")[0]
    name = spec.graph_model(encoder.role)
    onnx_config = graph_config(name, encoder.inputs, encoder.outputs, spec.batching, "1", True, "gpu")
    planned = parse_config(render_config(plan_config(onnx_config)))
    assert planned.platform == "tensorrt_plan" and planned.default_model_filename == PLAN_FILE
    assert not planned.HasField("optimization")  # no ONNX Runtime accelerator on a plan
    for field in ("name", "max_batch_size", "input", "output", "instance_group", "dynamic_batching", "model_warmup"):
        assert getattr(planned, field) == getattr(onnx_config, field), field
    assert plan_config(planned) == planned  # building plans twice is harmless


def test_plan_config_refuses_the_python_backend() -> None:
    spec = get_spec("swtr_unet")
    inputs, outputs = spec.tensors("small")
    cpu_config = graph_config("swtr_unet", inputs, outputs, spec.batching, "1", True, "cpu")
    with pytest.raises(ValueError, match="gpu-target ONNX configs"):
        plan_config(cpu_config)


def test_build_plans_refuses_a_cpu_repository_before_running_anything() -> None:
    with pytest.raises(ValueError, match="--target gpu"):
        build_plans(REPOSITORY, trtexec="/nonexistent/trtexec")
    assert not list(REPOSITORY.glob(f"*/*/{PLAN_FILE}"))


@pytest.mark.skipif(shutil.which("trtexec") is None, reason="needs TensorRT's trtexec and an NVIDIA GPU (none here)")
def test_build_plans_on_a_gpu_host(tmp_path: Path) -> None:
    for name in ("swtr_unet", "surgical_sam"):
        build_model_folder(get_spec(name), "small", tmp_path, say=lambda _: None, target="gpu")
    plans = build_plans(tmp_path, say=lambda _: None)
    assert {p.parent.parent.name for p in plans} == {
        "swtr_unet", "surgical_sam_image_encoder", "surgical_sam_prompt_decoder"
    }
    for plan in plans:
        assert plan.stat().st_size > 0
        assert parse_config((plan.parent.parent / "config.pbtxt").read_text()).platform == "tensorrt_plan"
