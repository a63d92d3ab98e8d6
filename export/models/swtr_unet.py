"""SWTR-Unet-like segmentation network: ResNet encoder, transformer bottleneck, U-Net decoder.

SWTR-Unet (Hille et al., CMPB 2023) is described as "a pretrained ResNet, transformer blocks and
a common U-Net-style decoder path"; its code and weights are not public. We follow the TransUNet
(R50-ViT) pattern: ResNet-50 stem and ``layer1..layer3`` to 1/16, a 1×1 patch projection with
learned positions, pre-norm ViT blocks, then a decoder that upsamples ×2 four times with skips
from the ResNet at 1/8 (layer2), 1/4 (layer1) and 1/2 (stem, before the max-pool).

Input ``image`` (N, 1, H, W) float32, windowed CT in [0, 1]; output ``logits`` (N, 3, H, W) for
background, liver, lesion. H and W are fixed by the config (the position table is not resized).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from export.models.resnet import ResNetEncoder
from export.models.transformer import FeatureMapTransformer


@dataclass(frozen=True)
class SwtrUnetConfig:
    """Hyper-parameters of one size. ``input_size`` is (rows, cols), both multiples of 16."""

    input_size: tuple[int, int]
    in_channels: int = 1
    num_classes: int = 3
    stem_channels: int = 64
    stage_blocks: tuple[int, int, int] = (3, 4, 6)
    stage_widths: tuple[int, int, int] = (256, 512, 1024)
    hidden: int = 768
    layers: int = 12
    heads: int = 12
    mlp: int = 3072
    bridge_channels: int = 512  # 3×3 conv after the transformer (TransUNet's "conv_more")
    decoder_channels: tuple[int, int, int, int] = (256, 128, 64, 16)

    @property
    def grid(self) -> tuple[int, int]:
        """Token grid (rows, cols) at 1/16 resolution."""
        return self.input_size[0] // 16, self.input_size[1] // 16


SWTR_UNET_CONFIGS: dict[str, SwtrUnetConfig] = {
    "paper": SwtrUnetConfig(input_size=(512, 512)),
    "small": SwtrUnetConfig(
        input_size=(256, 256),
        stem_channels=16,
        stage_blocks=(1, 1, 1),
        stage_widths=(32, 64, 128),
        hidden=128,
        layers=2,
        heads=4,
        mlp=256,
        bridge_channels=128,
        decoder_channels=(64, 32, 16, 8),
    ),
}


class ConvBnRelu(nn.Sequential):
    """3×3 conv (no bias) → BatchNorm → ReLU; spatial size unchanged."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class DecoderBlock(nn.Module):
    """Bilinear ×2 upsample, concatenate the skip (if any), two conv-BN-ReLU layers."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = ConvBnRelu(in_channels + skip_channels, out_channels)
        self.conv2 = ConvBnRelu(out_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv2(self.conv1(x))


class SwtrUnet(nn.Module):
    """(N, in_channels, H, W) → logits (N, num_classes, H, W); (H, W) = ``cfg.input_size``."""

    def __init__(self, cfg: SwtrUnetConfig) -> None:
        super().__init__()
        if cfg.input_size[0] % 16 or cfg.input_size[1] % 16:
            raise ValueError(f"input_size {cfg.input_size} must be a multiple of 16")
        self.cfg = cfg
        self.resnet = ResNetEncoder(cfg.in_channels, cfg.stem_channels, cfg.stage_blocks, cfg.stage_widths)
        self.transformer = FeatureMapTransformer(
            cfg.stage_widths[2], cfg.grid, cfg.hidden, cfg.layers, cfg.heads, cfg.mlp
        )
        self.bridge = ConvBnRelu(cfg.hidden, cfg.bridge_channels)
        d = cfg.decoder_channels
        skips = (cfg.stage_widths[1], cfg.stage_widths[0], cfg.stem_channels, 0)  # 1/8, 1/4, 1/2, none
        ins = (cfg.bridge_channels, *d[:3])
        self.decoder = nn.ModuleList(DecoderBlock(i, s, o) for i, s, o in zip(ins, skips, d))
        self.head = nn.Conv2d(d[3], cfg.num_classes, 3, padding=1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        half, quarter, eighth, sixteenth = self.resnet(image)
        x = self.bridge(self.transformer(sixteenth))
        x = self.decoder[0](x, eighth)
        x = self.decoder[1](x, quarter)
        x = self.decoder[2](x, half)
        x = self.decoder[3](x)
        return self.head(x)


def build_swtr_unet(variant: str) -> SwtrUnet:
    """A randomly initialised network of a named size ("paper" or "small")."""
    if variant not in SWTR_UNET_CONFIGS:
        raise KeyError(f"unknown SWTR-Unet variant {variant!r}; known: {', '.join(SWTR_UNET_CONFIGS)}")
    return SwtrUnet(SWTR_UNET_CONFIGS[variant])
