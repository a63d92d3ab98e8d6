"""The decoder's result: pixels in modality units plus the geometry the pipeline needs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

Source = Literal["dicom", "png", "jpeg"]


@dataclass(frozen=True)
class DecodedImage:
    """One decoded upload.

    ``pixels`` is (frames, rows, cols) float32 for grey images, in modality units (HU for CT after
    the rescale; stored units otherwise; 0-255 or 0-65535 for PNG/JPEG), or
    (frames, rows, cols, 3) uint8 RGB (0-255) for colour images.
    """

    pixels: np.ndarray
    modality: str  # DICOM Modality ("CT", "MR", "US", ...); "OT" for PNG/JPEG
    source: Source
    pixel_spacing_mm: tuple[float, float] | None  # (row spacing, column spacing) in mm
    slice_spacing_mm: float | None  # distance between frames in mm (for volumes in mL)
    window: tuple[float, float] | None  # (center, width) in modality units, from the file
    photometric: Literal["MONOCHROME2", "RGB"]

    def __post_init__(self) -> None:
        shape = self.pixels.shape
        if not (len(shape) == 3 or (len(shape) == 4 and shape[3] == 3)):
            raise ValueError(f"pixels must be (frames, rows, cols) or (frames, rows, cols, 3); got {shape}")

    @property
    def frames(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def rows(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def cols(self) -> int:
        return int(self.pixels.shape[2])

    @property
    def is_colour(self) -> bool:
        """True for (frames, rows, cols, 3) RGB pixels."""
        return self.pixels.ndim == 4
