"""MAST video polyp segmentation (Chen et al., "Mixture-Attention Siamese Transformer").

A shared PVTv2 encoder runs on an anchor and a reference frame; RFB blocks reduce stages 2-4 to
``channel`` (32) maps; mixture attention mixes the two frames' stage-4 maps; a neighbour-
connection decoder (NCD) makes a coarse map at 1/8 that three reverse-attention stages refine
(1/32 → 1/16 → 1/8). Both branches share the decoder weights. Served output: the anchor branch's
last map S_3, bilinearly upsampled to the input size, as 1-channel logits.

Module names follow the official checkpoint (``encoder.``, ``rfb2_1``, ``rfb3_1``, ``rfb4_1``,
``NCD``, ``RS5``, ``RS4``, ``RS3``). Keys of the official file that no forward pass uses
(``encoder.head``, ``linear_e``, ``MixtureCrossattention.SelfAttention``) have no module here;
``export.checkpoints.mast`` drops them by name.

Resizes, as in the official code: align_corners=True in the NCD, the mixture-attention resizes and
the ×2 feature upsampling; align_corners=False for the guidance and output resizes.

Input: RGB resized to ``input_size``² (aspect not kept), ImageNet mean/std; normalisation is done
by the caller, not in these graphs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from export.models.pvt_v2 import PVT_V2_B2, PVT_V2_SMALL, PvtV2Config, PvtV2Encoder

Features = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
FRAME_FEATURE_NAMES = ("feat2", "feat3", "feat4")
PAIR_HEAD_INPUT_NAMES = ("feat2_a", "feat3_a", "feat4_a", "feat4_r")


@dataclass(frozen=True)
class MastConfig:
    """Hyper-parameters of one size. ``input_size`` is the fixed square side, a multiple of 32."""

    encoder: PvtV2Config
    input_size: int
    channel: int = 32
    patch: int = 3  # mixture-attention patch side
    mixture_lambda: float = 0.7

    @property
    def stage4_size(self) -> int:
        """Side of the stage-4 map (stride 32)."""
        return self.input_size // 32

    @property
    def mixture_grid(self) -> int:
        """Side the stage-4 maps are resized to before patching: the next multiple of ``patch``
        (11 → 12 in the paper). Our generalisation; the official code hard-codes 12."""
        return self.patch * math.ceil(self.stage4_size / self.patch)


MAST_CONFIGS: dict[str, MastConfig] = {
    "paper": MastConfig(encoder=PVT_V2_B2, input_size=352),
    "small": MastConfig(encoder=PVT_V2_SMALL, input_size=224),
}


class ConvBn(nn.Module):
    """Conv2d (no bias) → BatchNorm, no activation (the official ``BasicConv2d``)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int | tuple[int, int],
        padding: int | tuple[int, int] = 0,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, padding=padding, dilation=dilation, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class Rfb(nn.Module):
    """Receptive-field block. (B, Cin, H, W) → (B, C, H, W).

    Branch 0 is a 1×1; branch k (k = 3, 5, 7) is 1×1 → (1,k) → (k,1) → 3×3 with dilation k.
    The concatenation goes through a 3×3, is added to a 1×1 residual, then ReLU.
    """

    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__()
        self.branch0 = nn.Sequential(ConvBn(in_channels, channels, 1))
        for index, k in enumerate((3, 5, 7), start=1):
            branch = nn.Sequential(
                ConvBn(in_channels, channels, 1),
                ConvBn(channels, channels, (1, k), padding=(0, k // 2)),
                ConvBn(channels, channels, (k, 1), padding=(k // 2, 0)),
                ConvBn(channels, channels, 3, padding=k, dilation=k),
            )
            setattr(self, f"branch{index}", branch)
        self.conv_cat = ConvBn(4 * channels, channels, 3, padding=1)
        self.conv_res = ConvBn(in_channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [getattr(self, f"branch{i}")(x) for i in range(4)]
        return F.relu(self.conv_cat(torch.cat(branches, dim=1)) + self.conv_res(x))


def upsample2_aligned(x: torch.Tensor) -> torch.Tensor:
    """Bilinear ×2, align_corners=True. (B, C, H, W) → (B, C, 2H, 2W)."""
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)


def rescale(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Bilinear resize by ``factor`` with align_corners=False (guidance and output resizes)."""
    return F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)


class NeighborConnectionDecoder(nn.Module):
    """SINet-V2 NCD: maps at s, 2s, 4s (all C channels) → (B, 1, 4s, 4s) coarse logits."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        c = channels
        for i in range(1, 5):
            setattr(self, f"conv_upsample{i}", ConvBn(c, c, 3, padding=1))
        self.conv_upsample5 = ConvBn(2 * c, 2 * c, 3, padding=1)
        self.conv_concat2 = ConvBn(2 * c, 2 * c, 3, padding=1)
        self.conv_concat3 = ConvBn(3 * c, 3 * c, 3, padding=1)
        self.conv4 = ConvBn(3 * c, 3 * c, 3, padding=1)
        self.conv5 = nn.Conv2d(3 * c, 1, 1)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, x3: torch.Tensor) -> torch.Tensor:
        up = upsample2_aligned
        x2_1 = self.conv_upsample1(up(x1)) * x2
        x3_1 = self.conv_upsample2(up(x2_1)) * self.conv_upsample3(up(x2)) * x3
        x2_2 = self.conv_concat2(torch.cat((x2_1, self.conv_upsample4(up(x1))), dim=1))
        x3_2 = self.conv_concat3(torch.cat((x3_1, self.conv_upsample5(up(x2_2))), dim=1))
        return self.conv5(self.conv4(x3_2))


def interleave_groups(x: torch.Tensor, y: torch.Tensor, groups: int) -> torch.Tensor:
    """Split x (B, C, H, W) into ``groups`` channel chunks, follow each by y (B, 1, H, W).

    → (B, C + groups, H, W) laid out [x_0, y, x_1, y, ...].
    """
    b, c, h, w = x.shape
    chunks = x.reshape(b, groups, c // groups, h, w)
    guide = y.unsqueeze(1).expand(-1, groups, -1, -1, -1)
    return torch.cat((chunks, guide), dim=2).reshape(b, c + groups, h, w)


class GroupReversalAttention(nn.Module):
    """GRA: x ← x + conv([x-chunks interleaved with y]); y ← y + score(x). Shapes kept."""

    def __init__(self, channels: int, subchannels: int) -> None:
        super().__init__()
        self.groups = channels // subchannels
        self.conv = nn.Sequential(nn.Conv2d(channels + self.groups, channels, 3, padding=1), nn.ReLU(inplace=True))
        self.score = nn.Conv2d(channels, 1, 3, padding=1)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x + self.conv(interleave_groups(x, y, self.groups))
        return x, y + self.score(x)


class ReverseStage(nn.Module):
    """Reverse attention: y ← 1 − σ(y), then GRA with 1, C/8 and C groups. → refinement (B, 1, H, W)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weak_gra = GroupReversalAttention(channels, channels)
        self.medium_gra = GroupReversalAttention(channels, 8)
        self.strong_gra = GroupReversalAttention(channels, 1)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        y = 1 - torch.sigmoid(y)
        x, y = self.weak_gra(x, y)
        x, y = self.medium_gra(x, y)
        return self.strong_gra(x, y)[1]


def patches_to_tokens(x: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, g, g) → (B, (g/p)², p·p·C), features ordered (row-in-patch, col-in-patch, channel)."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // patch, patch, w // patch, patch).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(b, (h // patch) * (w // patch), patch * patch * c)


def tokens_to_patches(t: torch.Tensor, patch: int, channels: int, grid: int) -> torch.Tensor:
    """Inverse of :func:`patches_to_tokens`: (B, (g/p)², p·p·C) → (B, C, g, g)."""
    n = grid // patch
    t = t.reshape(t.shape[0], n, n, patch, patch, channels).permute(0, 5, 1, 3, 2, 4)
    return t.reshape(t.shape[0], channels, grid, grid)


def mixture_attention_tokens(
    a: torch.Tensor, r: torch.Tensor, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Joint cross-frame affinity on patch tokens a, r (B, T, P) → mixed (a', r'), each (B, T, P).

    S = [r, a]ᵀ[a, r] (B, 2P, 2P), summed over tokens. The reference side mixes
    [λr, (1−λ)a] with softmax(S, dim 1); the anchor side mixes [λa, (1−λ)r] with
    softmax(Sᵀ, dim 1); each keeps the first P columns.
    """
    p = a.shape[2]
    affinity = torch.bmm(torch.cat((r, a), dim=2).transpose(1, 2), torch.cat((a, r), dim=2))
    to_reference = F.softmax(affinity, dim=1)
    to_anchor = F.softmax(affinity.transpose(1, 2), dim=1)
    # The official code re-transposes the [P:, :P] block of Sᵀ for batch item 0 only; that block is
    # rᵀr, symmetric, so the step is an identity (up to float rounding) and is left out here.
    a_mixed = torch.bmm(torch.cat((lam * a, (1 - lam) * r), dim=2), to_anchor)[:, :, :p]
    r_mixed = torch.bmm(torch.cat((lam * r, (1 - lam) * a), dim=2), to_reference)[:, :, :p]
    return a_mixed, r_mixed


def mixture_attention(
    anchor: torch.Tensor, reference: torch.Tensor, grid: int, patch: int, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage-4 maps (B, C, s, s) of both frames → mixed maps (B, C, s, s).

    Resize s → grid (align_corners=True), cut p×p patches into tokens, mix with the joint
    affinity, fold back, resize grid → s (align_corners=True).
    """
    size, channels = anchor.shape[-1], anchor.shape[1]

    def to_tokens(x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=(grid, grid), mode="bilinear", align_corners=True)
        return patches_to_tokens(x, patch)

    def to_map(t: torch.Tensor) -> torch.Tensor:
        x = tokens_to_patches(t, patch, channels, grid)
        return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=True)

    a_mixed, r_mixed = mixture_attention_tokens(to_tokens(anchor), to_tokens(reference), lam)
    return to_map(a_mixed), to_map(r_mixed)


class Mast(nn.Module):
    """MAST. ``forward(anchor, reference)``, both (B, 3, S, S) → anchor logits (B, 1, S, S)."""

    def __init__(self, cfg: MastConfig) -> None:
        super().__init__()
        if cfg.input_size % 32:
            raise ValueError(f"input_size {cfg.input_size} must be a multiple of 32")
        self.cfg = cfg
        dims, c = cfg.encoder.embed_dims, cfg.channel
        self.encoder = PvtV2Encoder(cfg.encoder)
        self.rfb2_1 = Rfb(dims[1], c)
        self.rfb3_1 = Rfb(dims[2], c)
        self.rfb4_1 = Rfb(dims[3], c)
        self.NCD = NeighborConnectionDecoder(c)
        self.RS5 = ReverseStage(c)
        self.RS4 = ReverseStage(c)
        self.RS3 = ReverseStage(c)

    def encode(self, frame: torch.Tensor) -> Features:
        """(B, 3, S, S) → RFB maps (B, C, S/8, S/8), (B, C, S/16, S/16), (B, C, S/32, S/32)."""
        _, x2, x3, x4 = self.encoder(frame)
        return self.rfb2_1(x2), self.rfb3_1(x3), self.rfb4_1(x4)

    def mix(self, feat4_a: torch.Tensor, feat4_r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mixture attention on the stage-4 maps: (anchor, reference) → (anchor', reference')."""
        cfg = self.cfg
        return mixture_attention(feat4_a, feat4_r, cfg.mixture_grid, cfg.patch, cfg.mixture_lambda)

    def refine(self, feats: Features, mixed4: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """One branch → S_g (1/8), S_5 (1/32), S_4 (1/16), S_3 (1/8) logits, each (B, 1, ·, ·)."""
        f2, f3, f4 = feats
        s_g = self.NCD(mixed4, upsample2_aligned(f4), upsample2_aligned(f3))
        guide = rescale(s_g, 0.25)
        s_5 = self.RS5(f4, guide) + guide
        guide = rescale(s_5, 2)
        s_4 = self.RS4(f3, guide) + guide
        guide = rescale(s_4, 2)
        s_3 = self.RS3(f2, guide) + guide
        return s_g, s_5, s_4, s_3

    def decode(self, feats: Features, mixed4: torch.Tensor) -> list[torch.Tensor]:
        """One branch → [S_g, S_5, S_4, S_3] logits, each upsampled to (B, 1, S, S)."""
        s_g, s_5, s_4, s_3 = self.refine(feats, mixed4)
        return [rescale(s_g, 8), rescale(s_5, 32), rescale(s_4, 16), rescale(s_3, 8)]

    def head(self, feats_a: Features, feat4_r: torch.Tensor) -> torch.Tensor:
        """Anchor features and the reference stage-4 map → anchor S_3 logits (B, 1, S, S)."""
        mixed_a, _ = self.mix(feats_a[2], feat4_r)
        return rescale(self.refine(feats_a, mixed_a)[3], 8)

    def forward(self, anchor: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        feats_a = self.encode(anchor)
        feats_r = self.encode(reference)
        return self.head(feats_a, feats_r[2])

    def forward_all(
        self, anchor: torch.Tensor, reference: torch.Tensor
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Training view, as the official forward: four (B, 1, S, S) maps per branch."""
        feats_a, feats_r = self.encode(anchor), self.encode(reference)
        mixed_a, mixed_r = self.mix(feats_a[2], feats_r[2])
        return self.decode(feats_a, mixed_a), self.decode(feats_r, mixed_r)


class MastFrameEncoderGraph(nn.Module):
    """Serving graph 1: ``frame`` (B, 3, S, S) → ``feat2`` (B, C, S/8, S/8), ``feat3`` (B, C, S/16,
    S/16), ``feat4`` (B, C, S/32, S/32). Run once per frame; reuse as anchor or reference."""

    def __init__(self, mast: Mast) -> None:
        super().__init__()
        self.mast = mast

    def forward(self, frame: torch.Tensor) -> Features:
        return self.mast.encode(frame)


class MastPairHeadGraph(nn.Module):
    """Serving graph 2: ``feat2_a``, ``feat3_a``, ``feat4_a`` (anchor) and ``feat4_r`` (reference)
    → ``logits`` (B, 1, S, S), the anchor branch's S_3. The anchor output does not depend on the
    reference's stage-2/3 maps, so they are not inputs."""

    def __init__(self, mast: Mast) -> None:
        super().__init__()
        self.mast = mast

    def forward(
        self, feat2_a: torch.Tensor, feat3_a: torch.Tensor, feat4_a: torch.Tensor, feat4_r: torch.Tensor
    ) -> torch.Tensor:
        return self.mast.head((feat2_a, feat3_a, feat4_a), feat4_r)


def build_mast(variant: str) -> Mast:
    """A randomly initialised MAST of a named size ("paper": PVTv2-b2 at 352², "small": 224²)."""
    if variant not in MAST_CONFIGS:
        raise KeyError(f"unknown MAST variant {variant!r}; known: {', '.join(MAST_CONFIGS)}")
    return Mast(MAST_CONFIGS[variant])
