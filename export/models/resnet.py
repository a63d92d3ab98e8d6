"""Bottleneck ResNet stem and stages (ResNet-50 ``layer1..layer3`` pattern) as a U-Net encoder.

Module names follow torchvision's ``ResNet`` (``conv1, bn1, layer1.0.conv1, ...,
layer1.0.downsample.0``), so ImageNet ResNet-50 weights map key for key onto the paper variant
(``fc`` and ``layer4`` are simply not present; ``conv1`` must be reduced to one input channel).
"""

from __future__ import annotations

import torch
from torch import nn

EXPANSION = 4  # bottleneck output width / inner width, as in ResNet-50


class Bottleneck(nn.Module):
    """1×1 reduce → 3×3 (carries the stride, ResNet v1.5) → 1×1 expand, plus the shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        width = out_channels // EXPANSION
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def make_stage(in_channels: int, out_channels: int, blocks: int, stride: int) -> nn.Sequential:
    """``blocks`` bottlenecks; the first changes width and applies ``stride``."""
    layers = [Bottleneck(in_channels, out_channels, stride)]
    layers += [Bottleneck(out_channels, out_channels) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class ResNetEncoder(nn.Module):
    """Stem (7×7/2 conv, BN, ReLU, 3×3/2 max-pool) and three bottleneck stages down to 1/16.

    Input (N, in_channels, H, W). ``forward`` returns the features at
    1/2 (stem, before the pool; ``stem_channels``), 1/4 (layer1), 1/8 (layer2), 1/16 (layer3),
    with ``stage_widths`` channels for the stages.
    """

    def __init__(
        self,
        in_channels: int,
        stem_channels: int,
        stage_blocks: tuple[int, int, int],
        stage_widths: tuple[int, int, int],
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, stem_channels, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_channels)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = make_stage(stem_channels, stage_widths[0], stage_blocks[0], stride=1)
        self.layer2 = make_stage(stage_widths[0], stage_widths[1], stage_blocks[1], stride=2)
        self.layer3 = make_stage(stage_widths[1], stage_widths[2], stage_blocks[2], stride=2)
        self.out_channels = (stem_channels, *stage_widths)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        for module in self.modules():
            if isinstance(module, Bottleneck):
                nn.init.zeros_(module.bn3.weight)  # each residual block starts as the identity

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        half = self.relu(self.bn1(self.conv1(x)))
        quarter = self.layer1(self.maxpool(half))
        eighth = self.layer2(quarter)
        sixteenth = self.layer3(eighth)
        return half, quarter, eighth, sixteenth
