"""PVTv2 encoder (Wang et al., "PVT v2", CVMJ 2022): four stages of overlapping patch embeddings
and spatial-reduction transformer blocks, returning the four stage maps.

Module names follow the official implementation so that its checkpoints load by name:
``patch_embed{i}.proj/.norm``, ``block{i}.{j}.norm1``, ``.attn.q``, ``.attn.kv``, ``.attn.proj``,
``.attn.sr``, ``.attn.norm``, ``.norm2``, ``.mlp.fc1``, ``.mlp.dwconv.dwconv``, ``.mlp.fc2`` and the
stage norm ``norm{i}`` (i = 1..4). The ImageNet classifier (``head``) is not built here.

LayerNorm eps: 1e-6 in blocks and stage norms, 1e-5 (PyTorch default) in patch-embed and
spatial-reduction norms, as in the official b0-b5 builders.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

BLOCK_EPS = 1e-6
EMBED_EPS = 1e-5


@dataclass(frozen=True)
class PvtV2Config:
    """Per-stage hyper-parameters (four entries each)."""

    embed_dims: tuple[int, int, int, int]
    num_heads: tuple[int, int, int, int]
    mlp_ratios: tuple[int, int, int, int]
    depths: tuple[int, int, int, int]
    sr_ratios: tuple[int, int, int, int] = (8, 4, 2, 1)
    in_channels: int = 3


PVT_V2_B2 = PvtV2Config(
    embed_dims=(64, 128, 320, 512),
    num_heads=(1, 2, 5, 8),
    mlp_ratios=(8, 8, 4, 4),
    depths=(3, 4, 6, 3),
)
PVT_V2_SMALL = PvtV2Config(
    embed_dims=(32, 64, 128, 256),
    num_heads=(1, 1, 2, 4),
    mlp_ratios=(8, 8, 4, 4),
    depths=(1, 1, 2, 1),
)


def tokens_to_map(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, H·W, C) tokens → (B, C, H, W) map."""
    return x.transpose(1, 2).unflatten(2, (height, width))


def map_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) map → (B, H·W, C) tokens."""
    return x.flatten(2).transpose(1, 2)


class OverlapPatchEmbed(nn.Module):
    """Strided conv with padding k//2, then LayerNorm. (B, Cin, H, W) → (B, H'·W', C), H', W'."""

    def __init__(self, in_channels: int, dim: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel, stride=stride, padding=kernel // 2)
        self.norm = nn.LayerNorm(dim, eps=EMBED_EPS)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.proj(x)
        height, width = x.shape[2], x.shape[3]
        return self.norm(map_to_tokens(x)), height, width


class SpatialReductionAttention(nn.Module):
    """Multi-head attention whose keys/values come from a map shrunk by Conv(k=s=sr) + LayerNorm.

    (B, H·W, C) → (B, H·W, C); with sr = 1 keys/values are the tokens themselves.
    """

    def __init__(self, dim: int, heads: int, sr_ratio: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.sr_ratio = sr_ratio
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim, eps=EMBED_EPS)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        head_dim = x.shape[2] // self.heads
        q = self.q(x).unflatten(2, (self.heads, head_dim)).transpose(1, 2)  # (B, h, N, d)
        source = x
        if self.sr_ratio > 1:
            source = self.norm(map_to_tokens(self.sr(tokens_to_map(x, height, width))))
        kv = self.kv(source).unflatten(2, (2, self.heads, head_dim)).permute(2, 0, 3, 1, 4)  # (2, B, h, M, d)
        out = F.scaled_dot_product_attention(q, kv[0], kv[1])  # scale d**-0.5, as the official qk_scale=None
        return self.proj(out.transpose(1, 2).flatten(2))


class DepthwiseConv(nn.Module):
    """3×3 depthwise conv applied to tokens laid out on their (H, W) grid. (B, N, C) → (B, N, C)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        return map_to_tokens(self.dwconv(tokens_to_map(x, height, width)))


class ConvMlp(nn.Module):
    """fc1 → depthwise 3×3 → GELU → fc2. (B, N, C) → (B, N, C)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = DepthwiseConv(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        return self.fc2(self.act(self.dwconv(self.fc1(x), height, width)))


class PvtBlock(nn.Module):
    """Pre-norm block: x + attn(LN(x)), then x + mlp(LN(x)). (B, N, C) → (B, N, C)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int, sr_ratio: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=BLOCK_EPS)
        self.attn = SpatialReductionAttention(dim, heads, sr_ratio)
        self.norm2 = nn.LayerNorm(dim, eps=BLOCK_EPS)
        self.mlp = ConvMlp(dim, dim * mlp_ratio)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), height, width)
        return x + self.mlp(self.norm2(x), height, width)


class PvtV2Encoder(nn.Module):
    """(B, 3, H, W) → four maps (B, C_i, H/s_i, W/s_i), strides s = 4, 8, 16, 32."""

    def __init__(self, cfg: PvtV2Config) -> None:
        super().__init__()
        self.cfg = cfg
        in_channels = cfg.in_channels
        for i in range(4):
            dim = cfg.embed_dims[i]
            kernel, stride = (7, 4) if i == 0 else (3, 2)
            setattr(self, f"patch_embed{i + 1}", OverlapPatchEmbed(in_channels, dim, kernel, stride))
            heads, ratio, sr = cfg.num_heads[i], cfg.mlp_ratios[i], cfg.sr_ratios[i]
            blocks = [PvtBlock(dim, heads, ratio, sr) for _ in range(cfg.depths[i])]
            setattr(self, f"block{i + 1}", nn.ModuleList(blocks))
            setattr(self, f"norm{i + 1}", nn.LayerNorm(dim, eps=BLOCK_EPS))
            in_channels = dim
        self.apply(init_pvt_weights)

    def stage(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """Run stage ``index`` (1..4): (B, C_in, H, W) map → (B, C_out, H', W') map."""
        tokens, height, width = getattr(self, f"patch_embed{index}")(x)
        for block in getattr(self, f"block{index}"):
            tokens = block(tokens, height, width)
        return tokens_to_map(getattr(self, f"norm{index}")(tokens), height, width)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        x1 = self.stage(1, x)
        x2 = self.stage(2, x1)
        x3 = self.stage(3, x2)
        return x1, x2, x3, self.stage(4, x3)


def init_pvt_weights(module: nn.Module) -> None:
    """Official scheme: Linear trunc-normal(0.02) with zero bias; Conv normal(0, √(2/fan_out))."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
        nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
        if module.bias is not None:
            nn.init.zeros_(module.bias)
