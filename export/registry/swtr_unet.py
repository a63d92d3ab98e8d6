"""SWTR-Unet-like liver and lesion segmentation of CT/MR slices: its registry entry."""

from __future__ import annotations

from types import MappingProxyType

from export.registry.base import ANATOMICAL_STRUCTURE, MORPHOLOGICALLY_ALTERED, TISSUE, ModelEntry, ModelSpec, Variant, lazy
from services.contract import Batching, Code, IntensityRule, Label


def _spec() -> ModelSpec:
    # Window and scale chosen by us (the paper does not state it): liver window 60 / 400 HU.
    return ModelSpec(
        name="swtr_unet",
        display_name="SWTR-Unet-like liver and liver-lesion segmentation (CT/MRI slices)",
        task="image2d",
        description=(
            "TransUNet-pattern reading of SWTR-Unet (Hille et al., CMPB 2023): ResNet-50 stem and "
            "stages to 1/16, 12 transformer layers (768 wide), U-Net decoder with skips at 1/8, 1/4, "
            "1/2; softmax over background, liver, lesion (LiTS convention). Depths, widths, input size "
            "and normalisation are our choices: the paper's are not public."
        ),
        input_name="image",
        output_name="logits",
        in_channels=1,
        activation="softmax",
        intensity=MappingProxyType(
            {
                "CT": IntensityRule("window", center=60.0, width=400.0),
                "MR": IntensityRule("zscore"),
                "default": IntensityRule("range", high=255.0),
            }
        ),
        resize="letterbox",
        labels=(
            Label(0, "background", (0, 0, 0), TISSUE, Code("260787004", "SCT", "Physical object")),
            Label(1, "liver", (221, 130, 101), ANATOMICAL_STRUCTURE, Code("10200004", "SCT", "Liver")),
            Label(2, "liver lesion", (255, 255, 0), MORPHOLOGICALLY_ALTERED, Code("52988006", "SCT", "Lesion")),
        ),
        variants=MappingProxyType(
            {
                "paper": Variant("paper", (512, 512), "ResNet-50 to 1/16 + 12 x 768 transformer + U-Net decoder"),
                "small": Variant(
                    "small", (256, 256), "same structure, narrow and shallow", "swtr_unet_small_demo.safetensors"
                ),
            }
        ),
        batching=Batching(max_batch_size=8, max_queue_delay_us=5000, preferred_batch_sizes=(4, 8)),
    )


ENTRY = ModelEntry(
    spec=_spec(),
    build=lazy("export.models.swtr_unet:build_swtr_unet"),
    train_demo=lazy("export.training.swtr_unet:train_swtr_unet_demo"),
)
