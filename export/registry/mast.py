"""MAST video-polyp segmentation of frame pairs (two graphs and an ensemble): its registry entry."""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType

from torch import nn

from export.registry.base import MORPHOLOGICALLY_ALTERED, TISSUE, GraphSpec, ModelEntry, ModelSpec, Variant, lazy
from services.contract import Batching, Code, EnsembleStep, IntensityRule, Label, Region, TensorSpec


def _graphs(variant: str) -> tuple[GraphSpec, ...]:
    from export.models.mast import FRAME_FEATURE_NAMES, MAST_CONFIGS, PAIR_HEAD_INPUT_NAMES

    cfg = MAST_CONFIGS[variant]
    size, c = cfg.input_size, cfg.channel
    feature_shapes = [(-1, c, size // stride, size // stride) for stride in (8, 16, 32)]
    features = tuple(TensorSpec(n, "float32", shape) for n, shape in zip(FRAME_FEATURE_NAMES, feature_shapes))
    head_inputs = tuple(
        TensorSpec(n, "float32", shape) for n, shape in zip(PAIR_HEAD_INPUT_NAMES, (*feature_shapes, feature_shapes[2]))
    )
    return (
        GraphSpec("encoder", (TensorSpec("frame", "float32", (-1, 3, size, size)),), features),
        GraphSpec("pair_head", head_inputs, (TensorSpec("logits", "float32", (-1, 1, size, size)),)),
    )


def _spec() -> ModelSpec:
    return ModelSpec(
        name="mast",
        display_name="MAST video polyp segmentation (colonoscopy frame pairs)",
        task="frame_pair",
        description=(
            "MAST (Chen et al.): shared PVTv2 encoder on an anchor and a reference frame, RFB blocks, "
            "mixture attention on stage-4 maps, neighbour-connection decoder and reverse-attention "
            "stages; the anchor's S_3 map as one sigmoid channel. Served as two graphs, a per-frame "
            "encoder and a pair head, so a stream encodes each frame once; without a reference the "
            "frame is its own reference (the paper's test protocol)."
        ),
        input_name="anchor",
        output_name="logits",
        in_channels=3,
        activation="sigmoid",
        intensity=MappingProxyType({"default": IntensityRule("range", high=255.0)}),
        resize="stretch",
        mean=(0.485, 0.456, 0.406),  # ImageNet RGB, as the PVTv2 backbone was trained
        std=(0.229, 0.224, 0.225),
        labels=(
            Label(0, "background", (0, 0, 0), TISSUE, Code("260787004", "SCT", "Physical object")),
            Label(1, "polyp", (0, 255, 128), MORPHOLOGICALLY_ALTERED, Code("68496003", "SCT", "Polyp of colon")),
        ),
        regions=(Region("polyp", 0, (1,), 1),),
        variants=MappingProxyType(
            {
                "paper": Variant("paper", (352, 352), "PVTv2-b2 encoder, 352x352 frames"),
                "small": Variant(
                    "small", (224, 224), "PVTv2 with one or two blocks per stage, 224x224 frames", "mast_small_demo.safetensors"
                ),
            }
        ),
        batching=Batching(max_batch_size=8, max_queue_delay_us=5000, preferred_batch_sizes=(4, 8)),
        graph_layout=_graphs,
        ensemble=(
            EnsembleStep(
                "encoder", {"frame": "anchor"}, {"feat2": "feat2_a", "feat3": "feat3_a", "feat4": "feat4_a"}
            ),
            EnsembleStep("encoder", {"frame": "reference"}, {"feat4": "feat4_r"}),
            EnsembleStep(
                "pair_head",
                {n: n for n in ("feat2_a", "feat3_a", "feat4_a", "feat4_r")},
                {"logits": "logits"},
            ),
        ),
    )


def _cut_graphs(model: nn.Module) -> dict[str, nn.Module]:
    from export.models.mast import MastFrameEncoderGraph, MastPairHeadGraph

    return {"encoder": MastFrameEncoderGraph(model), "pair_head": MastPairHeadGraph(model)}


def _load_official(model: nn.Module, checkpoint: Path, sam_checkpoint: Path | None) -> nn.Module:
    from export.checkpoints.mast import load_official_mast

    return load_official_mast(model, checkpoint)  # type: ignore[arg-type]


ENTRY = ModelEntry(
    spec=_spec(),
    build=lazy("export.models.mast:build_mast"),
    cut_graphs=_cut_graphs,
    load_official=_load_official,
    train_demo=lazy("export.training.mast:train_mast_demo"),
)
