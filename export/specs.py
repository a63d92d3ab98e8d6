"""Registry of deployable models: one frozen ``ModelSpec`` per model and a dict of builders.

A new model plugs in by adding one spec to ``MODEL_SPECS`` and one builder to ``MODEL_BUILDERS``;
the build command, the repository writer and the tests all iterate over these dicts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

from torch import nn

from services.contract import (
    Activation,
    Batching,
    Code,
    IntensityRule,
    Label,
    Preprocessing,
    TaskKind,
    TensorSpec,
)

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

# DICOM CID 7150 segmentation property categories and SNOMED CT types.
ANATOMICAL_STRUCTURE = Code("91723000", "SCT", "Anatomical Structure")
MORPHOLOGICALLY_ALTERED = Code("49755003", "SCT", "Morphologically Altered Structure")
TISSUE = Code("85756007", "SCT", "Tissue")


@dataclass(frozen=True)
class Variant:
    """One size of a network family: same code, other hyper-parameters."""

    name: str
    input_size: tuple[int, int]  # (rows, cols) of the network input
    summary: str
    demo_weights: str | None = None  # file name under export/weights/, if demo weights exist


@dataclass(frozen=True)
class ModelSpec:
    """Facts about a deployable model that do not depend on a particular build."""

    name: str
    display_name: str
    task: TaskKind
    description: str
    input_name: str
    output_name: str
    in_channels: int
    activation: Activation
    intensity: Mapping[str, IntensityRule]
    resize: str
    labels: tuple[Label, ...]
    variants: Mapping[str, Variant]
    batching: Batching

    def variant(self, name: str) -> Variant:
        if name not in self.variants:
            raise KeyError(f"{self.name} has no variant {name!r}; known: {', '.join(self.variants)}")
        return self.variants[name]

    def preprocessing(self, variant: str) -> Preprocessing:
        return Preprocessing(
            size=self.variant(variant).input_size,
            channels=self.in_channels,
            resize=self.resize,  # type: ignore[arg-type]
            intensity=dict(self.intensity),
            pad_value=0.0,
        )

    def tensors(self, variant: str) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
        """Graph inputs and outputs with a dynamic batch axis (-1)."""
        rows, cols = self.variant(variant).input_size
        inputs = (TensorSpec(self.input_name, "float32", (-1, self.in_channels, rows, cols)),)
        outputs = (TensorSpec(self.output_name, "float32", (-1, len(self.labels), rows, cols)),)
        return inputs, outputs


def _swtr_unet_spec() -> ModelSpec:
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
        batching=Batching(max_batch_size=8, max_latency_ms=1000, preferred_batch_sizes=(4, 8)),
    )


MODEL_SPECS: dict[str, ModelSpec] = {spec.name: spec for spec in (_swtr_unet_spec(),)}


def _build_swtr_unet(variant: str) -> nn.Module:
    from export.models.swtr_unet import build_swtr_unet

    return build_swtr_unet(variant)


MODEL_BUILDERS: dict[str, Callable[[str], nn.Module]] = {"swtr_unet": _build_swtr_unet}


def get_spec(name: str) -> ModelSpec:
    if name not in MODEL_SPECS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(MODEL_SPECS)}")
    return MODEL_SPECS[name]
