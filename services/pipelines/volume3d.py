"""3-D sliding-window inference for multi-channel volumes (HNF-Net-like BraTS model).

Pure numpy: the same functions run in the service (ONNX Runtime or Triton behind ``infer``) and
in the demo trainer's held-out evaluation (PyTorch behind ``infer``). Arrays are channel-first
(C, X, Y, Z) in the NIfTI array order; the network sees (B, C, X, Y, Z) patches.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from services.contract import Region, SlidingWindow
from services.pipelines.base import labels_from_regions

Infer = Callable[[np.ndarray], np.ndarray]  # (B, C, *patch) float32 -> (B, K, *patch) float32 logits
PatchRunner = Callable[[np.ndarray], Awaitable[np.ndarray]]  # the same, awaited (service backends)

ZSCORE_CLIP = 5.0


def zscore_over_foreground(channels: np.ndarray) -> np.ndarray:
    """(C, X, Y, Z) scanner units → float32 z-scores per channel over the foreground, clipped to ±5.

    Foreground = voxels non-zero in any channel (skull-stripped BraTS data is exactly 0 outside
    the brain); background stays 0. A channel with no spread is only centred.
    """
    channels = np.asarray(channels, dtype=np.float32)
    foreground = np.any(channels != 0, axis=0)
    out = np.zeros_like(channels)
    if not foreground.any():
        return out
    for c, channel in enumerate(channels):
        values = channel[foreground]
        mean, std = float(values.mean()), float(values.std())
        scaled = (channel - mean) / std if std > 0 else channel - mean
        out[c] = np.where(foreground, np.clip(scaled, -ZSCORE_CLIP, ZSCORE_CLIP), 0.0)
    return out


def window_starts(size: int, patch: int, step: int) -> list[int]:
    """Start offsets covering ``[0, size)`` with windows of ``patch`` (size >= patch), last flush with the end."""
    if size <= patch:
        return [0]
    starts = list(range(0, size - patch, step))
    return starts + [size - patch]


def gaussian_importance(patch: tuple[int, int, int], sigma_scale: float) -> np.ndarray:
    """(X, Y, Z) float32 Gaussian weights, sigma = ``sigma_scale`` × patch side, max 1, min > 0."""
    axes = []
    for side in patch:
        centre, sigma = (side - 1) / 2.0, max(side * sigma_scale, 1e-3)
        axes.append(np.exp(-0.5 * ((np.arange(side) - centre) / sigma) ** 2))
    weights = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    weights = weights / weights.max()
    return np.maximum(weights, 1e-3).astype(np.float32)


def pad_to_at_least(volume: np.ndarray, patch: tuple[int, int, int]) -> np.ndarray:
    """Zero-pad (C, X, Y, Z) at the high end of each axis smaller than the patch."""
    pads = [(0, 0)] + [(0, max(0, p - s)) for s, p in zip(volume.shape[1:], patch)]
    return np.pad(volume, pads) if any(after for _, after in pads) else volume


def sigmoid(x: np.ndarray) -> np.ndarray:
    return (0.5 * (1.0 + np.tanh(0.5 * x))).astype(np.float32)  # overflow-free logistic


Corner = tuple[int, int, int]


def plan_windows(shape: tuple[int, ...], window: SlidingWindow) -> list[Corner]:
    """Patch corners over a (padded) (X, Y, Z) grid: every ``patch × (1 - overlap)`` voxels per axis,
    the last patch flush with the end."""
    steps = [max(1, int(round(p * (1.0 - window.overlap)))) for p in window.patch]
    starts = [window_starts(n, p, step) for n, p, step in zip(shape, window.patch, steps)]
    return [(x, y, z) for x in starts[0] for y in starts[1] for z in starts[2]]


def extract_patches(volume: np.ndarray, corners: list[Corner], patch: tuple[int, int, int]) -> np.ndarray:
    """(C, X, Y, Z) → (len(corners), C, *patch) float32 copies."""
    px, py, pz = patch
    return np.stack([volume[:, x : x + px, y : y + py, z : z + pz] for x, y, z in corners])


class WindowAccumulator:
    """Gaussian-weighted average of overlapping patch probabilities over a (X, Y, Z) grid."""

    def __init__(self, shape: tuple[int, ...], window: SlidingWindow) -> None:
        self.patch = window.patch
        if window.gaussian_sigma_scale > 0:
            self.weights = gaussian_importance(window.patch, window.gaussian_sigma_scale)
        else:
            self.weights = np.ones(window.patch, dtype=np.float32)
        self.shape = tuple(shape)
        self.total: np.ndarray | None = None
        self.norm = np.zeros(self.shape, dtype=np.float32)

    def add(self, corners: list[Corner], probabilities: np.ndarray) -> None:
        """``probabilities`` (len(corners), K, *patch) for the patches at ``corners``."""
        if self.total is None:
            self.total = np.zeros((probabilities.shape[1], *self.shape), dtype=np.float32)
        px, py, pz = self.patch
        for (x, y, z), prob in zip(corners, probabilities):
            self.total[:, x : x + px, y : y + py, z : z + pz] += prob * self.weights
            self.norm[x : x + px, y : y + py, z : z + pz] += self.weights

    def result(self, crop: tuple[int, ...]) -> np.ndarray:
        """(K, *crop) averaged probabilities (the grid before padding)."""
        if self.total is None:
            raise ValueError("no patch was added")
        return (self.total / self.norm)[:, : crop[0], : crop[1], : crop[2]]


async def sliding_window_async(
    volume: np.ndarray, run: PatchRunner, window: SlidingWindow, parallel_batches: int = 1
) -> np.ndarray:
    """(C, X, Y, Z) normalised input → (K, X, Y, Z) float32 sigmoid probabilities.

    Patches of ``window.patch`` (see ``plan_windows``), ``window.batch_size`` per ``run`` call and
    up to ``parallel_batches`` calls in flight (so a batcher can merge them). Probabilities of
    overlapping patches are averaged with Gaussian weights (``window.gaussian_sigma_scale``; 0
    means uniform). Volumes smaller than a patch are zero-padded and cropped back.
    """
    original = volume.shape[1:]
    padded = pad_to_at_least(np.asarray(volume, dtype=np.float32), window.patch)
    corners = plan_windows(padded.shape[1:], window)
    accumulator = WindowAccumulator(padded.shape[1:], window)
    step = window.batch_size * max(1, parallel_batches)
    for first in range(0, len(corners), step):
        group = corners[first : first + step]
        chunks = [group[i : i + window.batch_size] for i in range(0, len(group), window.batch_size)]
        logits = await asyncio.gather(*(run(extract_patches(padded, chunk, window.patch)) for chunk in chunks))
        for chunk, chunk_logits in zip(chunks, logits):
            accumulator.add(chunk, sigmoid(np.asarray(chunk_logits, dtype=np.float32)))
    return accumulator.result(original)


def sliding_window_probabilities(volume: np.ndarray, infer: Infer, window: SlidingWindow) -> np.ndarray:
    """Blocking form of ``sliding_window_async`` for a synchronous ``infer`` (no running event loop)."""

    async def run(batch: np.ndarray) -> np.ndarray:
        return infer(batch)

    return asyncio.run(sliding_window_async(volume, run, window))


def regions_from_labels(labels: np.ndarray, regions: tuple[Region, ...]) -> np.ndarray:
    """uint8 label map (...) → (K, ...) boolean masks: region k = voxels whose label is in its set."""
    return np.stack([np.isin(labels, region.labels) for region in sorted(regions, key=lambda r: r.channel)])


@dataclass(frozen=True)
class VolumeResult:
    """Segmentation of one volume: ``labels`` (X, Y, Z) uint8 and ``probabilities`` (K, X, Y, Z)."""

    labels: np.ndarray
    probabilities: np.ndarray


def segment_volume(
    channels: np.ndarray, infer: Infer, window: SlidingWindow, regions: tuple[Region, ...], threshold: float
) -> VolumeResult:
    """(C, X, Y, Z) raw channels → labels in the same grid: z-score, sliding window, threshold, paint."""
    probabilities = sliding_window_probabilities(zscore_over_foreground(channels), infer, window)
    return VolumeResult(labels_from_regions(probabilities >= threshold, regions), probabilities)
