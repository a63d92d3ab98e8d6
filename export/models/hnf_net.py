"""HNF-Net-like 3-D brain-tumour segmentation network (our re-design; see ``HNF_NET_CHOICES``).

HNF-Net (Jia, Cai, Huang, Xia; BraTS 2020/2021) is described as a 3-D high-resolution network
built on a parallel multi-scale fusion (PMF) module with an expectation-maximisation attention
(EMA) module. Neither code nor weights are public, so every size and layout below is our choice,
following HRNet (Sun et al. 2019) in 3-D:

- stem: 3×3×3 conv stride 2 (→ 1/2 resolution) and a 3×3×3 conv, then residual blocks (stage 1);
- stage k (k = 2..B) has k parallel branches at 1/2 … 1/2^k with widths ``w, 2w, 4w, 8w``;
  each module of a stage runs residual blocks per branch, then PMF: all-to-all fusion (higher →
  lower: strided 3×3×3 convs; lower → higher: 1×1×1 conv + trilinear upsampling; summed, ReLU);
  a new branch is created before each stage by a strided 3×3×3 conv from the lowest branch;
- head: every branch is brought to 1/2 and fused (concatenation + 1×1×1 conv, computed as the
  equivalent sum of per-branch 1×1×1 convs upsampled to 1/2), norm, ReLU, an EMA unit on these
  fused high-resolution features, a 1×1×1 classifier, trilinear ×2 to the input resolution.

Input ``image`` (N, 4, D, H, W) float32: T1, T1ce, T2, FLAIR, each z-scored over brain voxels
(done by the caller). Output ``logits`` (N, 3, D, H, W) for the nested regions WT, TC, ET
(independent sigmoids at inference). D, H, W must be multiples of 2**branches; the config's
``patch_size`` is the sliding-window patch it was designed for.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from export.models.ema import EMAUnit

IN_CHANNELS = 4  # T1, T1ce, T2, FLAIR
OUT_CHANNELS = 3  # WT, TC, ET
INPUT_MODALITIES = ("t1", "t1ce", "t2", "flair")

HNF_NET_CHOICES = """\
HNF-Net-like network: our choices (HNF-Net code and weights are not public).
- Trunk: HRNet-style 3-D high-resolution network. Stem = 3x3x3 conv stride 2 (to 1/2 resolution)
  + 3x3x3 conv; stage 1 = residual blocks at 1/2. Parallel branches at 1/2, 1/4, 1/8 (and 1/16 in
  `paper`), widths doubling per branch (paper 32/64/128/256, small 8/16/32). A new branch is
  added before each stage by a stride-2 3x3x3 conv from the lowest-resolution branch.
- Blocks: basic residual blocks (two 3x3x3 convs), `blocks` per branch per module; stages 2..B
  have `stage_modules` modules each.
- PMF (parallel multi-scale fusion) after every module: all-to-all; higher to lower resolution by
  chained stride-2 3x3x3 convs, lower to higher by 1x1x1 conv then trilinear upsampling
  (align_corners=False); contributions summed, then ReLU.
- Normalisation: InstanceNorm3d(affine=True) everywhere except inside the EMA unit (no running
  statistics anywhere); ReLU.
- EMA unit (EMANet design) on the fused 1/2-resolution features of the head: 1x1x1 conv, K=64
  L2-normalised bases `mu` (a buffer, saved with the weights), 3 unrolled EM iterations, low-rank
  reconstruction, ReLU, 1x1x1 conv without bias + GroupNorm(1 group; EMANet uses BatchNorm, a
  per-channel InstanceNorm is ill-conditioned on the near-constant low-rank reconstruction),
  residual, ReLU. Bases follow a
  moving average (momentum 0.9) in training, re-normalised.
- Head: all branches fused at 1/2 (concat + 1x1x1 conv to `head_width`, computed as per-branch
  1x1x1 convs, trilinear upsampling and a sum, which is the same linear map), InstanceNorm, ReLU,
  EMA, 1x1x1 classifier to 3 logits (WT, TC, ET), trilinear x2 to the input resolution.
- Input: 4 channels (T1, T1ce, T2, FLAIR), each z-scored over brain (non-zero) voxels. Output:
  3 independent sigmoid region channels, thresholded at 0.5 and converted back to BraTS labels
  (ET -> 4, TC minus ET -> 1, WT minus TC -> 2).
- Sizes: `paper` = 4 branches, width 32, 2 blocks, stage modules (1, 1, 1) (stage 1: 2 blocks),
  head 64, 128^3 patches; `small` = 3 branches, width 8, 1 block, stage modules (1, 1), head 16,
  64^3 patches.
"""


@dataclass(frozen=True)
class HnfNetConfig:
    """Hyper-parameters of one size. Widths double per branch, starting at ``base_width`` (1/2 res)."""

    patch_size: tuple[int, int, int]  # sliding-window patch (D, H, W) in voxels (1 mm)
    base_width: int
    num_branches: int  # 3 (1/2..1/8) or 4 (1/2..1/16)
    blocks: int  # residual blocks per branch per module (and in stage 1)
    stage_modules: tuple[int, ...]  # modules in stages 2..num_branches
    head_width: int
    ema_bases: int = 64
    ema_iterations: int = 3
    ema_momentum: float = 0.9
    in_channels: int = IN_CHANNELS
    out_channels: int = OUT_CHANNELS

    def __post_init__(self) -> None:
        if len(self.stage_modules) != self.num_branches - 1:
            raise ValueError("stage_modules needs one entry per stage after the first")
        if any(s % self.stride for s in self.patch_size):
            raise ValueError(f"patch_size {self.patch_size} must be a multiple of {self.stride}")

    @property
    def widths(self) -> tuple[int, ...]:
        """Channels of each branch, highest resolution first."""
        return tuple(self.base_width * 2**i for i in range(self.num_branches))

    @property
    def stride(self) -> int:
        """Downsampling of the lowest-resolution branch; input sizes must be multiples of it."""
        return 2**self.num_branches


HNF_NET_CONFIGS: dict[str, HnfNetConfig] = {
    "paper": HnfNetConfig(
        patch_size=(128, 128, 128), base_width=32, num_branches=4, blocks=2, stage_modules=(1, 1, 1), head_width=64
    ),
    "small": HnfNetConfig(
        patch_size=(64, 64, 64), base_width=8, num_branches=3, blocks=1, stage_modules=(1, 1), head_width=16
    ),
}


def norm3d(channels: int) -> nn.Module:
    """The normalisation used throughout: InstanceNorm3d with affine parameters, no running stats."""
    return nn.InstanceNorm3d(channels, affine=True)


def upsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Trilinear upsampling by an integer ``factor`` (align_corners=False). (B,C,D,H,W) → (B,C,fD,fH,fW)."""
    return F.interpolate(x, scale_factor=float(factor), mode="trilinear", align_corners=False)


class ConvNorm(nn.Sequential):
    """k×k×k conv (no bias, padding k//2) → InstanceNorm → optional ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int = 3, stride: int = 1, relu: bool = True) -> None:
        layers: list[nn.Module] = [
            nn.Conv3d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2, bias=False),
            norm3d(out_channels),
        ]
        if relu:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class ResidualBlock(nn.Module):
    """Basic residual block: two 3×3×3 conv-norm layers, identity shortcut, ReLU. Shape kept."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = ConvNorm(channels, channels)
        self.conv2 = ConvNorm(channels, channels, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.conv2(self.conv1(x)))


class UpFuse(nn.Module):
    """Lower → higher resolution: 1×1×1 conv-norm, then trilinear upsampling by ``factor``."""

    def __init__(self, in_channels: int, out_channels: int, factor: int) -> None:
        super().__init__()
        self.factor = factor
        self.proj = ConvNorm(in_channels, out_channels, kernel=1, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upsample(self.proj(x), self.factor)


def down_fuse(in_channels: int, out_channels: int, steps: int) -> nn.Sequential:
    """Higher → lower resolution by ``steps`` stride-2 3×3×3 convs; ReLU on all but the last."""
    layers = [ConvNorm(in_channels, in_channels, stride=2) for _ in range(steps - 1)]
    layers.append(ConvNorm(in_channels, out_channels, stride=2, relu=False))
    return nn.Sequential(*layers)


class ParallelMultiScaleFusion(nn.Module):
    """PMF: every output branch i sums all input branches brought to its resolution, then ReLU.

    Inputs: a list of (B, w_j, S/2^(j+1), ...) maps; outputs the same shapes.
    """

    def __init__(self, widths: tuple[int, ...]) -> None:
        super().__init__()
        self.paths = nn.ModuleList()
        for i, w_out in enumerate(widths):
            row = nn.ModuleList()
            for j, w_in in enumerate(widths):
                if j == i:
                    row.append(nn.Identity())
                elif j > i:
                    row.append(UpFuse(w_in, w_out, 2 ** (j - i)))
                else:
                    row.append(down_fuse(w_in, w_out, i - j))
            self.paths.append(row)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        outs = []
        for row in self.paths:
            total = row[0](xs[0])
            for path, x in zip(list(row)[1:], xs[1:]):
                total = total + path(x)
            outs.append(F.relu(total))
        return outs


class HighResolutionModule(nn.Module):
    """Residual blocks on each branch in parallel, then PMF. List of maps → list of maps (same shapes)."""

    def __init__(self, widths: tuple[int, ...], blocks: int) -> None:
        super().__init__()
        self.branches = nn.ModuleList(nn.Sequential(*(ResidualBlock(w) for _ in range(blocks))) for w in widths)
        self.fuse = ParallelMultiScaleFusion(widths)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        return self.fuse([branch(x) for branch, x in zip(self.branches, xs)])


class FusionHead(nn.Module):
    """All branches → fused 1/2-res features → EMA → logits at the input resolution.

    Concatenation of the upsampled branches followed by a 1×1×1 conv equals the sum of per-branch
    1×1×1 convs upsampled (both linear; trilinear weights sum to 1), which is what runs here: it
    never materialises the wide concatenation. (B, w_j, ...) list → (B, out, 2·S/2) logits.
    """

    def __init__(self, widths: tuple[int, ...], head_width: int, out_channels: int, ema: EMAUnit) -> None:
        super().__init__()
        self.proj = nn.ModuleList(nn.Conv3d(w, head_width, 1, bias=(j == 0)) for j, w in enumerate(widths))
        self.norm = norm3d(head_width)
        self.ema = ema
        self.classifier = nn.Conv3d(head_width, out_channels, 1)

    def fused(self, xs: list[torch.Tensor]) -> torch.Tensor:
        """Fused high-resolution features (B, head_width, S/2, ...) after norm and ReLU (before EMA)."""
        total = self.proj[0](xs[0])
        for j in range(1, len(xs)):
            total = total + upsample(self.proj[j](xs[j]), 2**j)
        return F.relu(self.norm(total))

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        return upsample(self.classifier(self.ema(self.fused(xs))), 2)


class HnfNet(nn.Module):
    """HNF-Net-like network. ``image`` (B, 4, D, H, W) → ``logits`` (B, 3, D, H, W) for WT, TC, ET."""

    def __init__(self, cfg: HnfNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        widths = cfg.widths
        self.stem = nn.Sequential(
            ConvNorm(cfg.in_channels, widths[0], stride=2),
            ConvNorm(widths[0], widths[0]),
            *(ResidualBlock(widths[0]) for _ in range(cfg.blocks)),
        )
        self.transitions = nn.ModuleList(
            ConvNorm(widths[k - 1], widths[k], stride=2) for k in range(1, cfg.num_branches)
        )
        self.stages = nn.ModuleList(
            nn.Sequential(*(HighResolutionModule(widths[: k + 1], cfg.blocks) for _ in range(count)))
            for k, count in enumerate(cfg.stage_modules, start=1)
        )
        ema = EMAUnit(cfg.head_width, cfg.ema_bases, cfg.ema_iterations, cfg.ema_momentum)
        self.head = FusionHead(widths, cfg.head_width, cfg.out_channels, ema)

    def features(self, image: torch.Tensor) -> list[torch.Tensor]:
        """Branch outputs after the last PMF: (B, w_j, D/2^(j+1), H/2^(j+1), W/2^(j+1)) for each j."""
        xs = [self.stem(image)]
        for transition, stage in zip(self.transitions, self.stages):
            xs = xs + [transition(xs[-1])]
            for module in stage:
                xs = module(xs)
        return xs

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(image))


def check_input_size(cfg: HnfNetConfig, spatial: tuple[int, ...]) -> None:
    """Raise ValueError unless every spatial size is a positive multiple of ``cfg.stride``."""
    if len(spatial) != 3 or any(s <= 0 or s % cfg.stride for s in spatial):
        raise ValueError(f"spatial size {tuple(spatial)} must be three positive multiples of {cfg.stride}")


def build_hnf_net(variant: str) -> HnfNet:
    """A randomly initialised HNF-Net-like network of a named size ("paper" or "small")."""
    if variant not in HNF_NET_CONFIGS:
        raise KeyError(f"unknown HNF-Net variant {variant!r}; known: {', '.join(HNF_NET_CONFIGS)}")
    return HnfNet(HNF_NET_CONFIGS[variant])
