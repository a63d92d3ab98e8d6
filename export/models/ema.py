"""Expectation-maximisation attention (EMA) unit, as described by the EMANet authors (Li et al., ICCV 2019).

A set of K bases ``mu`` (1, C, K), L2-normalised over C, summarises the feature map. A fixed number
of EM iterations (E: responsibilities ``z`` = softmax over K of xᵀμ; M: μ = x·z normalised over
positions, then L2-normalised over C) adapts the bases to the input; the map is reconstructed as
μ·zᵀ (a low-rank, denoised version of x). Unit: 1×1 conv (bias) → EM → reconstruct → ReLU →
1×1 conv (no bias) → norm → + input → ReLU.

Norm: EMANet uses BatchNorm; we use GroupNorm with one group (mean and variance over channels and
positions, per-channel affine). The reconstruction is low-rank and can be nearly constant over
positions (always at random initialisation, where the bases collapse onto the mean feature), so a
per-channel InstanceNorm would divide by a standard deviation ~1e-6 and amplify rounding noise by
~1e5 (for `paper`, ONNX Runtime and PyTorch logits then differed by 1.5e-3 of their range);
one-group GroupNorm divides by the spread across channels as well and stays well-conditioned. It
is computed with a two-level reduction (see :func:`one_group_norm`) for float32 accuracy in ONNX
Runtime.

``mu`` is a buffer (saved in and loaded from the state_dict, never a parameter). In training mode it
follows the batch-mean of the adapted bases with a moving average (momentum 0.9), re-normalised
afterwards; in eval mode it is read only. The EM loop is unrolled (fixed iteration count, no
data-dependent control flow), so it exports to ONNX as plain MatMul / Softmax / ReduceSum / ReduceL2.
Works on any number of spatial dims: (B, C, *S) → (B, C, *S).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

EPS = 1e-6


def l2_normalise(x: torch.Tensor, dim: int) -> torch.Tensor:
    """x / (ε + ‖x‖₂ along ``dim``), as in EMANet (ε = 1e-6)."""
    return x / (EPS + torch.linalg.vector_norm(x, dim=dim, keepdim=True))


def one_group_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """GroupNorm with one group, (B, C, *S) → same shape, reducing positions first, then channels.

    Mathematically ``F.group_norm(x, 1, weight, bias, eps)``. The two-level reduction (per channel,
    then over channels) keeps float32 sums short in any runtime; ONNX Runtime's single
    InstanceNormalization over all C·N values (what the exporter emits for group_norm) loses ~1e-3.
    """
    spatial = tuple(range(2, x.dim()))
    mean = x.mean(dim=spatial, keepdim=True).mean(dim=1, keepdim=True)
    centred = x - mean
    var = (centred * centred).mean(dim=spatial, keepdim=True).mean(dim=1, keepdim=True)
    shape = (1, -1) + (1,) * len(spatial)
    return centred / torch.sqrt(var + eps) * weight.reshape(shape) + bias.reshape(shape)


class OneGroupNorm(nn.GroupNorm):
    """``nn.GroupNorm(1, C)`` (same parameters and state_dict keys) computed by :func:`one_group_norm`."""

    def __init__(self, channels: int) -> None:
        super().__init__(1, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return one_group_norm(x, self.weight, self.bias, self.eps)


def em_iterations(x: torch.Tensor, mu: torch.Tensor, iterations: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``iterations`` EM steps. x (B, C, N), mu (1 or B, C, K) → responsibilities z (B, N, K), bases (B, C, K).

    E: z = softmax_K(xᵀμ). M: μ = x · (z / (ε + Σ_N z)), then L2-normalised over C.
    """
    if iterations < 1:
        raise ValueError("iterations must be ≥ 1")
    x_t = x.transpose(1, 2)  # (B, N, C)
    z = x_t
    for _ in range(iterations):
        z = F.softmax(torch.matmul(x_t, mu), dim=2)  # (B, N, K)
        z_positions = z / (EPS + z.sum(dim=1, keepdim=True))
        mu = l2_normalise(torch.matmul(x, z_positions), dim=1)  # (B, C, K)
    return z, mu


def em_reconstruct(z: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """Low-rank reconstruction μ·zᵀ: z (B, N, K), mu (B, C, K) → (B, C, N)."""
    return torch.matmul(mu, z.transpose(1, 2))


class EMAUnit(nn.Module):
    """EMA unit with ``bases`` (K) bases and ``iterations`` EM steps. (B, C, *S) → (B, C, *S)."""

    def __init__(self, channels: int, bases: int = 64, iterations: int = 3, momentum: float = 0.9, dims: int = 3) -> None:
        super().__init__()
        if iterations < 1:
            raise ValueError("iterations must be ≥ 1")
        conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims]
        self.iterations = iterations
        self.momentum = momentum
        self.conv_in = conv(channels, channels, 1)
        self.conv_out = conv(channels, channels, 1, bias=False)
        self.norm = OneGroupNorm(channels)  # not InstanceNorm: see the module docstring
        mu = torch.randn(1, channels, bases) * math.sqrt(2.0 / bases)
        self.register_buffer("mu", l2_normalise(mu, dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        x = self.conv_in(x)
        flat = x.flatten(2)  # (B, C, N)
        z, mu = em_iterations(flat, self.mu, self.iterations)
        if self.training:
            self._update_bases(mu)
        x = F.relu(em_reconstruct(z, mu).reshape(x.shape))
        x = self.norm(self.conv_out(x))
        return F.relu(x + identity)

    @torch.no_grad()
    def _update_bases(self, mu: torch.Tensor) -> None:
        """Moving average of the batch-mean adapted bases, then re-normalised (keeps ‖μ_k‖ = 1)."""
        batch_mu = l2_normalise(mu.detach().mean(dim=0, keepdim=True), dim=1)
        # Rebind rather than copy_: the old tensor is saved for this step's backward pass.
        self.mu = l2_normalise(self.momentum * self.mu + (1.0 - self.momentum) * batch_mu, dim=1)
