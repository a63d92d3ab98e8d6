"""ViT encoder on a CNN feature map: 1×1 patch projection, learned positions, pre-norm blocks.

Block names follow timm's ViT (``blocks.N.norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2``).
The position table is fixed to the configured token grid: no interpolation in ``forward``, so
the ONNX graph has a static token count and only the batch axis is dynamic.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection. (N, T, D) → (N, T, D)."""

    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden {hidden} is not divisible by heads {heads}")
        self.heads = heads
        self.head_dim = hidden // heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = self.qkv(x).unflatten(-1, (3, self.heads, self.head_dim)).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (N, heads, T, head_dim)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).flatten(2))


class Mlp(nn.Module):
    """Linear → GELU → Linear. (N, T, D) → (N, T, D)."""

    def __init__(self, hidden: int, mlp: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden, mlp)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(mlp, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer layer: x + attn(LN(x)), then x + mlp(LN(x))."""

    def __init__(self, hidden: int, heads: int, mlp: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden, eps=1e-6)
        self.attn = Attention(hidden, heads)
        self.norm2 = nn.LayerNorm(hidden, eps=1e-6)
        self.mlp = Mlp(hidden, mlp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class FeatureMapTransformer(nn.Module):
    """(N, in_channels, gh, gw) feature map → (N, hidden, gh, gw) after ``layers`` ViT blocks.

    ``grid`` (gh, gw) is fixed at construction; the learned position table has gh·gw rows.
    """

    def __init__(self, in_channels: int, grid: tuple[int, int], hidden: int, layers: int, heads: int, mlp: int) -> None:
        super().__init__()
        self.grid = grid
        self.patch_embed = nn.Conv2d(in_channels, hidden, kernel_size=1)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid[0] * grid[1], hidden))
        self.blocks = nn.Sequential(*(Block(hidden, heads, mlp) for _ in range(layers)))
        self.norm = nn.LayerNorm(hidden, eps=1e-6)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for module in self.blocks.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed  # (N, T, hidden)
        tokens = self.norm(self.blocks(tokens))
        return tokens.transpose(1, 2).unflatten(2, self.grid)  # (N, hidden, gh, gw)
