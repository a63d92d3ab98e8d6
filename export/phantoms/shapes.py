"""Analytic 2-D shapes drawn in physical millimetres on a pixel grid.

A shape is a signed-distance-like field ``distance(y, x)`` in mm (negative inside) plus a
bounding box, so the same anatomy is sampled consistently at any pixel spacing: only the pixel
centres change, never the geometry. ``paint`` blends a value into an image with a soft edge of
a given width in mm and writes a hard label where the distance is negative.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np

Box = tuple[float, float, float, float]  # y0, y1, x0, x1 in mm


class Shape(Protocol):
    def distance(self, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Approximate signed distance in mm (negative inside); broadcasts ``y`` against ``x``."""

    def box(self) -> Box:
        """A bounding box (mm) containing every point with negative distance."""


@dataclass(frozen=True)
class Grid:
    """Pixel centres of a (rows, cols) image in mm; (0, 0) is the image centre.

    ``y`` grows towards the bottom rows (posterior on an axial slice), ``x`` towards the right
    columns (the patient's left).
    """

    rows: int
    cols: int
    spacing_mm: tuple[float, float]  # (row, col)

    @property
    def y(self) -> np.ndarray:
        """(rows, 1) row-centre coordinates in mm."""
        sy = self.spacing_mm[0]
        return ((np.arange(self.rows) + 0.5) * sy - self.rows * sy / 2.0).astype(np.float32)[:, None]

    @property
    def x(self) -> np.ndarray:
        """(1, cols) column-centre coordinates in mm."""
        sx = self.spacing_mm[1]
        return ((np.arange(self.cols) + 0.5) * sx - self.cols * sx / 2.0).astype(np.float32)[None, :]

    def window(self, box: Box) -> tuple[slice, slice]:
        """Row and column slices covering the pixel centres inside ``box`` (possibly empty)."""
        (sy, sx), (y0, y1, x0, x1) = self.spacing_mm, box

        def span(lo: float, hi: float, step: float, n: int) -> slice:
            first = int(np.floor((lo + n * step / 2.0) / step - 0.5))
            last = int(np.ceil((hi + n * step / 2.0) / step - 0.5))
            return slice(min(max(first, 0), n), min(max(last + 1, 0), n))

        return span(y0, y1, sy, self.rows), span(x0, x1, sx, self.cols)


@dataclass(frozen=True)
class Ellipse:
    """Rotated ellipse (semi-axes ``ry`` along y, ``rx`` along x, mm) with an optional radial wobble.

    ``wobble`` holds (harmonic k, relative amplitude, phase) terms: the boundary radius is scaled
    by 1 + Σ amp·cos(kφ + phase), which gives smooth irregular outlines.
    """

    cy: float
    cx: float
    ry: float
    rx: float
    angle: float = 0.0  # radians, rotation of the x semi-axis towards +y
    wobble: tuple[tuple[int, float, float], ...] = ()

    def distance(self, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        dy, dx = y - np.float32(self.cy), x - np.float32(self.cx)
        c, s = np.float32(np.cos(self.angle)), np.float32(np.sin(self.angle))
        u = (dx * c + dy * s) * np.float32(1.0 / self.rx)
        v = (dy * c - dx * s) * np.float32(1.0 / self.ry)
        rho = np.hypot(u, v)
        if self.wobble:
            # cos(kφ + phase) = Re(e^{i·phase} · z^k) with z = e^{iφ} = (u + iv) / ρ: no arctan needed.
            z = (u + 1j * v).astype(np.complex64) / np.maximum(rho, np.float32(1e-12))
            power, radius, k_done = np.ones_like(z), np.ones_like(rho), 0
            for k, amp, phase in sorted(self.wobble):
                for _ in range(k - k_done):
                    power = power * z
                k_done = k
                radius += np.float32(amp) * (power * np.complex64(np.exp(1j * phase))).real
            rho = rho / radius
        return (rho - np.float32(1.0)) * np.float32(np.sqrt(self.rx * self.ry))

    def box(self) -> Box:
        reach = max(self.rx, self.ry) * (1.0 + sum(abs(amp) for _, amp, _ in self.wobble))
        return self.cy - reach, self.cy + reach, self.cx - reach, self.cx + reach


@dataclass(frozen=True)
class SmoothUnion:
    """Union of shapes with the boundary creases rounded over ``k`` mm (log-sum-exp minimum)."""

    parts: tuple[Shape, ...]
    k: float = 6.0

    def distance(self, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        d = np.stack(np.broadcast_arrays(*(p.distance(y, x) for p in self.parts)))
        low = d.min(axis=0)
        k = np.float32(self.k)
        return low - k * np.log(np.exp(-(d - low) / k).sum(axis=0))

    def box(self) -> Box:
        boxes = np.array([p.box() for p in self.parts])
        grow = self.k * np.log(len(self.parts))
        return (
            boxes[:, 0].min() - grow,
            boxes[:, 1].max() + grow,
            boxes[:, 2].min() - grow,
            boxes[:, 3].max() + grow,
        )


@dataclass(frozen=True)
class Intersection:
    """Points inside both shapes (maximum of the distances)."""

    a: Shape
    b: Shape

    def distance(self, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        return np.maximum(self.a.distance(y, x), self.b.distance(y, x))

    def box(self) -> Box:
        (a0, a1, a2, a3), (b0, b1, b2, b3) = self.a.box(), self.b.box()
        return max(a0, b0), min(a1, b1), max(a2, b2), min(a3, b3)


def coverage(distance: np.ndarray, edge_mm: float) -> np.ndarray:
    """Fraction of a pixel inside the shape: a linear ramp of ``edge_mm`` across the boundary."""
    return np.clip(0.5 - distance / edge_mm, 0.0, 1.0)


def paint(
    image: np.ndarray,
    labels: np.ndarray,
    grid: Grid,
    shape: Shape,
    value: float | Callable[[np.ndarray, np.ndarray], np.ndarray],
    label: int,
    edge_mm: float = 1.0,
) -> None:
    """Blend ``value`` into ``image`` with soft edges and set ``labels`` inside ``shape`` (in place).

    ``value`` is a constant or a field ``value(y, x)`` in the image's units (e.g. a texture).
    """
    y0, y1, x0, x1 = shape.box()
    rows, cols = grid.window((y0 - edge_mm, y1 + edge_mm, x0 - edge_mm, x1 + edge_mm))
    if rows.start >= rows.stop or cols.start >= cols.stop:
        return
    y, x = grid.y[rows], grid.x[:, cols]
    d = shape.distance(y, x)
    w = coverage(d, edge_mm).astype(np.float32)
    target = value(y, x) if callable(value) else np.float32(value)
    patch = image[rows, cols]
    patch += w * (target - patch)
    labels[rows, cols][d < 0] = label
