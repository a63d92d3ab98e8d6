"""TensorRT plans for a ``gpu``-target repository: one serialized engine per ONNX graph.

A plan is tied to the GPU model and the TensorRT version that built it, so it is built on the host
that serves it (``python -m export build-plans`` where ``trtexec`` and the GPU are), never shipped.
Each graph gets one optimization profile: batched graphs from batch 1 to ``max_batch_size``
(tuned for the largest preferred size), SurgicalSAM's class-id axis from 1 to every promptable
class. Its config.pbtxt then switches from ONNX Runtime + TensorRT to ``platform: tensorrt_plan``
(same tensors, instances, dynamic batching and warm-up).
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from export.triton.config import TRT_WORKSPACE_BYTES, parse_config, render_config
from services.contract import Batching, TensorSpec, discover_cards

PLAN_FILE = "model.plan"
Shape = tuple[int, ...]


@dataclass(frozen=True)
class ShapeProfile:
    """Minimum, optimal and maximum input shapes (full shapes, batch axis included) by tensor name."""

    min: dict[str, Shape]
    opt: dict[str, Shape]
    max: dict[str, Shape]


def shape_profile(inputs: Sequence[TensorSpec], batched: bool, batching: Batching, class_count: int) -> ShapeProfile:
    """The profile of one graph. Batched graphs: axis 0 spans 1..max_batch_size (opt: the largest
    preferred size). Any other dynamic axis (class ids) spans 1..``class_count`` (opt: all)."""
    extents: dict[int, tuple[int, int, int]] = {}
    if batched:
        extents[0] = (1, max(batching.preferred_batch_sizes, default=batching.max_batch_size), batching.max_batch_size)

    def concrete(spec: TensorSpec, pick: int) -> Shape:
        return tuple(
            (extents.get(axis, (1, class_count, class_count))[pick] if size == -1 else size)
            for axis, size in enumerate(spec.shape)
        )

    return ShapeProfile(*({s.name: concrete(s, pick) for s in inputs} for pick in range(3)))


def _shapes_argument(shapes: dict[str, Shape]) -> str:
    return ",".join(f"{name}:{'x'.join(str(d) for d in shape)}" for name, shape in shapes.items())


def trtexec_command(onnx: Path, plan: Path, profile: ShapeProfile, trtexec: str = "trtexec") -> list[str]:
    """The ``trtexec`` (TensorRT 10) call that builds ``plan`` from ``onnx`` in FP16 without timing it."""
    return [
        trtexec,
        f"--onnx={onnx}",
        f"--saveEngine={plan}",
        "--fp16",
        f"--minShapes={_shapes_argument(profile.min)}",
        f"--optShapes={_shapes_argument(profile.opt)}",
        f"--maxShapes={_shapes_argument(profile.max)}",
        f"--memPoolSize=workspace:{TRT_WORKSPACE_BYTES >> 20}",
        "--skipInference",
    ]


def plan_config(config: mc.ModelConfig) -> mc.ModelConfig:
    """A ``gpu``-target graph config served from ``model.plan`` by Triton's TensorRT backend."""
    if config.platform not in ("onnxruntime_onnx", "tensorrt_plan"):
        raise ValueError(f"{config.name}: plans replace gpu-target ONNX configs, not platform {config.platform!r}")
    planned = mc.ModelConfig()
    planned.CopyFrom(config)
    planned.platform = "tensorrt_plan"
    planned.default_model_filename = PLAN_FILE
    planned.ClearField("optimization")
    return planned


def build_plans(repository: Path, trtexec: str = "trtexec", say: Callable[[str], None] = print) -> list[Path]:
    """Build ``<graph>/<version>/model.plan`` for every graph of every model in ``repository`` and
    switch its config.pbtxt to ``tensorrt_plan``; return the plans. The repository must have been
    built with ``--target gpu``. Ensembles are untouched: they name graphs, not files."""
    cards = discover_cards(repository)
    not_gpu = sorted(name for name, card in cards.items() if card.triton_target != "gpu")
    if not_gpu:
        raise ValueError(
            f"{', '.join(not_gpu)}: built for target cpu; rebuild with `python -m export build --target gpu` first"
        )
    plans: list[Path] = []
    for card in cards.values():
        class_count = sum(1 for label in card.labels if label.id != 0)
        for model, (graph_file, inputs) in card.graphs().items():
            folder = repository / model
            plan = folder / card.version / PLAN_FILE
            profile = shape_profile(inputs, model not in card.unbatched_graphs(), card.batching, class_count)
            say(f"[{model}] building {plan.relative_to(repository)} with trtexec (FP16)")
            subprocess.run(trtexec_command(repository / graph_file, plan, profile, trtexec), check=True)
            if not plan.is_file():
                raise RuntimeError(f"{model}: trtexec finished without writing {plan.name}")
            config_path = folder / "config.pbtxt"
            config_path.write_text(render_config(plan_config(parse_config(config_path.read_text()))))
            plans.append(plan)
    return plans
