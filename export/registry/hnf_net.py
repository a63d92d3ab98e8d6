"""HNF-Net-like BraTS brain-tumour segmentation of four MRI volumes: its registry entry."""

from __future__ import annotations

from types import MappingProxyType

from export.models.hnf_net import INPUT_MODALITIES
from export.registry.base import MORPHOLOGICALLY_ALTERED, TISSUE, ModelEntry, ModelSpec, Variant, lazy
from services.contract import Batching, Code, IntensityRule, Label, Region


def _spec() -> ModelSpec:
    tumour = MORPHOLOGICALLY_ALTERED
    return ModelSpec(
        name="hnf_net",
        display_name="HNF-Net-like brain tumour segmentation (BraTS, multi-modal MRI volumes)",
        task="volume3d",
        description=(
            "Our reading of HNF-Net (Jia et al., BraTS 2020/2021; no public code): HRNet-style 3-D trunk "
            "with parallel branches at 1/2..1/8 (1/16 in paper), all-to-all fusion after each stage, "
            "EMA attention (64 bases, 3 iterations) on the fused high-resolution features; inputs T1, "
            "T1ce, T2, FLAIR z-scored over brain voxels; 3 sigmoid regions WT, TC, ET painted into BraTS "
            "2018-2021 labels 2, 1, 4; Gaussian-weighted sliding-window inference."
        ),
        input_name="image",
        output_name="logits",
        in_channels=4,
        channel_names=INPUT_MODALITIES,
        activation="sigmoid",
        intensity=MappingProxyType({"default": IntensityRule("zscore")}),
        resize="stretch",  # unused: volumes keep their grid; the sliding window covers any size
        labels=(
            Label(0, "background", (0, 0, 0), TISSUE, Code("260787004", "SCT", "Physical object")),
            Label(1, "necrotic and non-enhancing tumour core", (255, 60, 60), tumour, Code("6574001", "SCT", "Necrosis")),
            Label(2, "peritumoural edema", (60, 220, 60), tumour, Code("79654002", "SCT", "Edema")),
            Label(4, "enhancing tumour", (255, 230, 0), tumour, Code("108369006", "SCT", "Neoplasm")),
        ),
        regions=(
            Region("WT", 0, (1, 2, 4), 2),
            Region("TC", 1, (1, 4), 1),
            Region("ET", 2, (4,), 4),
        ),
        variants=MappingProxyType(
            {
                "paper": Variant("paper", (128, 128, 128), "4 branches to 1/16, width 32, 128^3 patches"),
                "small": Variant(
                    "small", (64, 64, 64), "3 branches to 1/8, width 8, 64^3 patches", "hnf_net_small_demo.safetensors"
                ),
            }
        ),
        batching=Batching(max_batch_size=4, max_queue_delay_us=5000, preferred_batch_sizes=(2, 4)),
    )


ENTRY = ModelEntry(
    spec=_spec(),
    build=lazy("export.models.hnf_net:build_hnf_net"),
    train_demo=lazy("export.training.hnf_net:train_hnf_net_demo"),
)
