"""Encoders for image responses: label-map PNG and colour overlay PNG."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def png_bytes(array: np.ndarray) -> bytes:
    """(H, W) uint8 grey or (H, W, 3) uint8 RGB → PNG bytes (lossless)."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()


def tile_frames(frames: np.ndarray) -> np.ndarray:
    """(F, H, W[, 3]) → (F·H, W[, 3]): frames stacked top to bottom, frame 0 first."""
    return frames.reshape(frames.shape[0] * frames.shape[1], *frames.shape[2:])


def display_frames(pixels: np.ndarray, window: tuple[float, float] | None) -> np.ndarray:
    """Decoded pixels (F, H, W) modality units or (F, H, W, 3) → (F, H, W, 3) uint8 for display.

    Grey images use ``window`` (center, width) when given, else each frame's 1st–99th percentile.
    """
    if pixels.ndim == 4:
        rgb = pixels.astype(np.float32)
        if rgb.max() > 255:
            rgb = rgb * (255.0 / rgb.max())
        return np.clip(rgb, 0, 255).astype(np.uint8)
    out = np.empty((*pixels.shape, 3), dtype=np.uint8)
    for i, frame in enumerate(pixels.astype(np.float32)):
        if window is not None:
            low, high = window[0] - window[1] / 2.0, window[0] + window[1] / 2.0
        else:
            low, high = (float(v) for v in np.percentile(frame, [1, 99]))
        scaled = np.clip((frame - low) / max(high - low, 1e-6), 0.0, 1.0) * 255.0
        out[i] = scaled.astype(np.uint8)[..., None]
    return out


def overlay(display: np.ndarray, labels: np.ndarray, colours: dict[int, tuple[int, int, int]], alpha: float = 0.45) -> np.ndarray:
    """Blend label colours over (…, H, W, 3) uint8 display frames where labels (…, H, W) are non-zero."""
    result = display.astype(np.float32)
    for label_id, colour in colours.items():
        if label_id == 0:
            continue
        where = labels == label_id
        result[where] = (1.0 - alpha) * result[where] + alpha * np.asarray(colour, dtype=np.float32)
    return np.clip(result, 0, 255).astype(np.uint8)
