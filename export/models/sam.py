"""Segment Anything (SAM) parts: ViT image encoder, dense positional encoding, mask decoder.

Module and parameter names follow the official ``segment_anything`` checkpoints, so a
``sam_vit_{b,l,h}_*.pth`` state dict loads after stripping its ``image_encoder.``,
``prompt_encoder.`` (only ``pe_layer.*`` is used here) and ``mask_decoder.`` prefixes.

Image encoder: (B, 3, S, S) normalised image → (B, 256, S/16, S/16) embedding. S is fixed per
config (the absolute position table is not resized). Attention with decomposed relative
positions is written as batched MatMul (no Einsum), which TensorRT handles better.

Mask decoder: image embedding (1 or K, 256, h, w), dense PE (1, 256, h, w), sparse prompts
(K, T, 256), dense prompts (K, 256, h, w) → low-res logits (K, 4, 4h, 4w), IoU (K, 4).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

EMBED_DIM = 256  # SAM prompt / decoder width; also the image-embedding channels


# --------------------------------------------------------------------------------- configs


@dataclass(frozen=True)
class SamEncoderConfig:
    """ViT image-encoder hyper-parameters. ``img_size`` is square and a multiple of ``patch_size``."""

    width: int
    depth: int
    heads: int
    global_attn_indexes: tuple[int, ...]
    img_size: int = 1024
    patch_size: int = 16
    window_size: int = 14
    mlp_ratio: float = 4.0
    out_chans: int = EMBED_DIM

    @property
    def grid(self) -> int:
        """Tokens per side (64 for the official 1024² input)."""
        return self.img_size // self.patch_size


SAM_ENCODER_CONFIGS: dict[str, SamEncoderConfig] = {
    "vit_b": SamEncoderConfig(width=768, depth=12, heads=12, global_attn_indexes=(2, 5, 8, 11)),
    "vit_l": SamEncoderConfig(width=1024, depth=24, heads=16, global_attn_indexes=(5, 11, 17, 23)),
    "vit_h": SamEncoderConfig(width=1280, depth=32, heads=16, global_attn_indexes=(7, 15, 23, 31)),
    # Ours, for CPU tests and demo weights: 256² input → 16×16 tokens; windows of 6 pad 16 → 18
    # (3×3 windows), so the padding path runs as in the official 64 → 70.
    "small": SamEncoderConfig(width=192, depth=4, heads=3, global_attn_indexes=(1, 3), img_size=256, window_size=6),
}


# ------------------------------------------------------------------------- shared blocks


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of (N, C, H, W), eps 1e-6 (exports as LayerNormalization)."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.weight.shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class MLPBlock(nn.Module):
    """lin1 → activation → lin2. (..., D) → (..., D)."""

    def __init__(self, dim: int, hidden: int, act: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.lin1 = nn.Linear(dim, hidden)
        self.lin2 = nn.Linear(hidden, dim)
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.act(self.lin1(x)))


# ------------------------------------------------------------------------- image encoder


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, H, W, C) → (B·nh·nw, window, window, C), zero-padding H and W bottom/right first."""
    _, h, w, c = x.shape
    pad_h, pad_w = (window - h % window) % window, (window - w % window) % window  # no negatives: ONNX Div truncates
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    nh, nw = (h + pad_h) // window, (w + pad_w) // window
    x = x.reshape(-1, nh, window, nw, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window, window, c)


def window_unpartition(windows: torch.Tensor, window: int, hw: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`window_partition`: (B·nh·nw, window, window, C) → (B, H, W, C)."""
    h, w = hw
    nh, nw = (h + window - 1) // window, (w + window - 1) // window
    c = windows.shape[-1]
    x = windows.reshape(-1, nh, nw, window, window, c).permute(0, 1, 3, 2, 4, 5)
    x = x.reshape(-1, nh * window, nw * window, c)
    return x[:, :h, :w, :]


def relative_position_index(size: int) -> torch.Tensor:
    """(size, size) int64: row i, column j → i − j + size − 1, an index into a (2·size−1, d) table."""
    coords = torch.arange(size)
    return coords[:, None] - coords[None, :] + (size - 1)


def decomposed_rel_pos(
    q: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor, hw: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column relative-position terms of MViTv2 / ViTDet attention, as batched MatMul.

    q (N, H·W, d) with H·W the query grid (keys on the same grid); tables (2H−1, d), (2W−1, d).
    Returns rel_h (N, H, W, H_k) and rel_w (N, H, W, W_k), to be broadcast onto the (N, H, W,
    H_k, W_k) attention logits.
    """
    h, w = hw
    table_h = rel_pos_h[relative_position_index(h)]  # (H_q, H_k, d)
    table_w = rel_pos_w[relative_position_index(w)]  # (W_q, W_k, d)
    r = q.reshape(-1, h, w, q.shape[-1])  # (N, H, W, d)
    # For each query row: (N, W, d) @ (d, H_k), batched over the rows.
    rel_h = torch.matmul(r.transpose(0, 1), table_h.transpose(1, 2).unsqueeze(1))  # (H, N, W, H_k)
    # For each query column: (N, H, d) @ (d, W_k), batched over the columns.
    rel_w = torch.matmul(r.permute(2, 0, 1, 3), table_w.transpose(1, 2).unsqueeze(1))  # (W, N, H, W_k)
    return rel_h.transpose(0, 1), rel_w.permute(1, 2, 0, 3)


class RelPosAttention(nn.Module):
    """Multi-head self-attention with decomposed relative positions. (B, H, W, C) → (B, H, W, C).

    ``rel_pos_h/w`` have 2·size−1 rows: 27 for 14×14 windows, 127 for the global 64×64 grid.
    """

    def __init__(self, dim: int, heads: int, size: int) -> None:
        super().__init__()
        self.heads = heads
        head_dim = dim // heads
        self.scale = head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * size - 1, head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * size - 1, head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        qkv = self.qkv(x).reshape(b, h * w, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        qkv = qkv.reshape(3, b * self.heads, h * w, -1)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B·heads, H·W, head_dim)
        attn = torch.matmul(q * self.scale, k.transpose(-2, -1))  # (B·heads, H·W, H·W)
        rel_h, rel_w = decomposed_rel_pos(q, self.rel_pos_h, self.rel_pos_w, (h, w))
        attn = attn.reshape(-1, h, w, h, w) + rel_h.unsqueeze(-1) + rel_w.unsqueeze(-2)
        attn = attn.reshape(-1, h * w, h * w).softmax(dim=-1)
        out = torch.matmul(attn, v).reshape(b, self.heads, h, w, -1).permute(0, 2, 3, 1, 4)
        return self.proj(out.reshape(b, h, w, c))


class EncoderBlock(nn.Module):
    """Pre-norm ViT block; windowed attention when ``window`` > 0, global otherwise. (B, H, W, C)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, window: int, grid: int) -> None:
        super().__init__()
        self.window = window
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = RelPosAttention(dim, heads, window if window > 0 else grid)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio), nn.GELU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm1(x)
        if self.window > 0:
            hw = (x.shape[1], x.shape[2])
            y = window_unpartition(self.attn(window_partition(y, self.window)), self.window, hw)
        else:
            y = self.attn(y)
        x = x + y
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    """Conv k=s=patch: (B, 3, S, S) → (B, S/p, S/p, C) (channels last)."""

    def __init__(self, patch: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class SamImageEncoder(nn.Module):
    """SAM ViT encoder: (B, 3, S, S) normalised → (B, 256, S/16, S/16). S = ``config.img_size``."""

    def __init__(self, config: SamEncoderConfig) -> None:
        super().__init__()
        self.config = config
        c, g = config.width, config.grid
        self.patch_embed = PatchEmbed(config.patch_size, c)
        self.pos_embed = nn.Parameter(torch.zeros(1, g, g, c))
        self.blocks = nn.ModuleList(
            EncoderBlock(
                c,
                config.heads,
                config.mlp_ratio,
                0 if i in config.global_attn_indexes else config.window_size,
                g,
            )
            for i in range(config.depth)
        )
        self.neck = nn.Sequential(
            nn.Conv2d(c, config.out_chans, kernel_size=1, bias=False),
            LayerNorm2d(config.out_chans),
            nn.Conv2d(config.out_chans, config.out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(config.out_chans),
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(image) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.neck(x.permute(0, 3, 1, 2))


def build_sam_encoder(config_name: str) -> SamImageEncoder:
    """Encoder of one of :data:`SAM_ENCODER_CONFIGS` (``vit_b``, ``vit_l``, ``vit_h``, ``small``)."""
    return SamImageEncoder(SAM_ENCODER_CONFIGS[config_name])


# ------------------------------------------------------------------- dense positional encoding


class PositionEmbeddingRandom(nn.Module):
    """SAM's Fourier-feature PE. Buffer ``positional_encoding_gaussian_matrix`` (2, 128).

    The buffer is random at construction (as upstream) and must come from a checkpoint: it is
    persistent and saved with the weights, never re-randomised after loading.
    """

    def __init__(self, num_pos_feats: int = EMBED_DIM // 2) -> None:
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn(2, num_pos_feats))

    def forward(self, h: int, w: int) -> torch.Tensor:
        """Dense PE of the cell centres of an h×w grid → (1, 256, h, w)."""
        gaussian = self.positional_encoding_gaussian_matrix
        y = (torch.arange(h, dtype=torch.float32, device=gaussian.device) + 0.5) / h
        x = (torch.arange(w, dtype=torch.float32, device=gaussian.device) + 0.5) / w
        coords = torch.stack([x[None, :].expand(h, w), y[:, None].expand(h, w)], dim=-1)  # (h, w, 2) as (x, y)
        proj = 2 * math.pi * ((2 * coords - 1) @ gaussian)  # (h, w, 128)
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1).permute(2, 0, 1).unsqueeze(0)


# ----------------------------------------------------------------------------- mask decoder


class TokenAttention(nn.Module):
    """Attention with q/k/v projected to dim/downsample. q (N, Tq, D), k and v (N, Tk, D) → (N, Tq, D)."""

    def __init__(self, dim: int, heads: int, downsample: int = 1) -> None:
        super().__init__()
        inner = dim // downsample
        self.heads = heads
        self.q_proj = nn.Linear(dim, inner)
        self.k_proj = nn.Linear(dim, inner)
        self.v_proj = nn.Linear(dim, inner)
        self.out_proj = nn.Linear(inner, dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], x.shape[1], self.heads, -1).transpose(1, 2)  # (N, heads, T, d)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q, k, v = self._split(self.q_proj(q)), self._split(self.k_proj(k)), self._split(self.v_proj(v))
        attn = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
        out = torch.matmul(attn.softmax(dim=-1), v).transpose(1, 2)
        return self.out_proj(out.reshape(out.shape[0], out.shape[1], -1))


class TwoWayBlock(nn.Module):
    """Token self-attn, token→image cross-attn, token MLP, image→token cross-attn (post-norm).

    In the first layer the self-attention output replaces the queries (no PE, no residual).
    """

    def __init__(self, dim: int, heads: int, mlp_dim: int, downsample: int, first: bool) -> None:
        super().__init__()
        self.first = first
        self.self_attn = TokenAttention(dim, heads)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn_token_to_image = TokenAttention(dim, heads, downsample)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLPBlock(dim, mlp_dim, nn.ReLU)
        self.norm3 = nn.LayerNorm(dim)
        self.norm4 = nn.LayerNorm(dim)
        self.cross_attn_image_to_token = TokenAttention(dim, heads, downsample)

    def forward(
        self, queries: torch.Tensor, keys: torch.Tensor, query_pe: torch.Tensor, key_pe: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.first:
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)
        k = keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(queries + query_pe, k, keys))
        queries = self.norm3(queries + self.mlp(queries))
        keys = self.norm4(keys + self.cross_attn_image_to_token(k, queries + query_pe, queries))
        return queries, keys


class TwoWayTransformer(nn.Module):
    """Tokens (N, T, D) and image (N|1, D, h, w) with PE (1, D, h, w) → tokens (N, T, D), image (N, h·w, D)."""

    def __init__(
        self, depth: int = 2, dim: int = EMBED_DIM, heads: int = 8, mlp_dim: int = 2048, downsample: int = 2
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(TwoWayBlock(dim, heads, mlp_dim, downsample, first=i == 0) for i in range(depth))
        self.final_attn_token_to_image = TokenAttention(dim, heads, downsample)
        self.norm_final_attn = nn.LayerNorm(dim)

    def forward(
        self, image: torch.Tensor, image_pe: torch.Tensor, tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        keys = image.flatten(2).transpose(1, 2)
        key_pe = image_pe.flatten(2).transpose(1, 2)
        queries = tokens
        for layer in self.layers:
            queries, keys = layer(queries, keys, tokens, key_pe)
        attn = self.final_attn_token_to_image(queries + tokens, keys + key_pe, keys)
        return self.norm_final_attn(queries + attn), keys


class MLP(nn.Module):
    """``layers`` Linear layers with ReLU between them: in → hidden → … → out."""

    def __init__(self, dim_in: int, hidden: int, dim_out: int, layers: int) -> None:
        super().__init__()
        dims = [dim_in] + [hidden] * (layers - 1) + [dim_out]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class MaskDecoder(nn.Module):
    """SAM mask decoder (4 mask tokens, IoU head); see :meth:`forward` for shapes."""

    def __init__(self, dim: int = EMBED_DIM, num_mask_tokens: int = 4) -> None:
        super().__init__()
        self.num_mask_tokens = num_mask_tokens
        self.transformer = TwoWayTransformer(depth=2, dim=dim, heads=8, mlp_dim=2048, downsample=2)
        self.iou_token = nn.Embedding(1, dim)
        self.mask_tokens = nn.Embedding(num_mask_tokens, dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(dim, dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(dim // 4, dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(MLP(dim, dim, dim // 8, 3) for _ in range(num_mask_tokens))
        self.iou_prediction_head = MLP(dim, 256, num_mask_tokens, 3)

    def forward(
        self,
        image_embedding: torch.Tensor,
        image_pe: torch.Tensor,
        sparse: torch.Tensor,
        dense: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """image_embedding (1|K, D, h, w), image_pe (1, D, h, w), sparse (K, T, D), dense (K, D, h, w)
        → all masks' low-res logits (K, 4, 4h, 4w) and IoU predictions (K, 4).

        One image embedding broadcasts over the K prompts (upstream repeats it K times).
        """
        out_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat([out_tokens.unsqueeze(0).expand(sparse.shape[0], -1, -1), sparse], dim=1)
        src = image_embedding + dense  # (K, D, h, w)
        k, d, h, w = src.shape
        hs, keys = self.transformer(src, image_pe, tokens)
        upscaled = self.output_upscaling(keys.transpose(1, 2).reshape(k, d, h, w))  # (K, D/8, 4h, 4w)
        hyper = torch.stack(
            [mlp(hs[:, 1 + i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )  # (K, 4, D/8)
        masks = torch.matmul(hyper, upscaled.flatten(2)).reshape(k, self.num_mask_tokens, 4 * h, 4 * w)
        return masks, self.iou_prediction_head(hs[:, 0, :])
