"""Procedural axial abdominal CT slice with a liver and hypodense liver lesions, in Hounsfield units.

Anatomy is drawn in physical millimetres around the image centre (see ``shapes``), so any pixel
spacing, square or not, samples the same patient. Display convention: rows run anterior → posterior,
columns patient's right → left (the liver is on the image left). Labels: 0 background, 1 liver,
2 lesion (lesions lie only inside the liver).

Three independent random streams are derived from the caller's generator: anatomy, lesions and
noise. ``max_lesions=0`` therefore yields the same anatomy with the lesions left out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from export.phantoms.shapes import Ellipse, Grid, Intersection, Shape, SmoothUnion, paint

AIR_HU = -1000.0
BACKGROUND, LIVER, LESION = 0, 1, 2


@dataclass(frozen=True)
class CtPhantom:
    """One slice: ``hu`` (rows, cols) float32 HU, ``labels`` (rows, cols) uint8 0/1/2, (row, col) mm."""

    hu: np.ndarray
    labels: np.ndarray
    spacing_mm: tuple[float, float]


@dataclass(frozen=True)
class Liver:
    """The drawn liver: its outline (already clipped to the abdominal cavity) and HU field."""

    shape: Shape
    base_hu: float
    texture: tuple[tuple[float, float, float, float], ...]  # (ky, kx, phase, amplitude HU), k in rad/mm

    def hu(self, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Liver attenuation at (y, x) mm: base plus a few low-frequency waves (heterogeneity)."""
        field = np.full(np.broadcast_shapes(y.shape, x.shape), self.base_hu, dtype=np.float32)
        for ky, kx, phase, amp in self.texture:
            field += amp * np.cos(ky * y + kx * x + phase).astype(np.float32)
        return field


def _wobble(rng: np.random.Generator, harmonics: tuple[int, ...], amplitude: float) -> tuple[tuple[int, float, float], ...]:
    return tuple((k, float(rng.uniform(0.0, amplitude)), float(rng.uniform(0.0, 2 * np.pi))) for k in harmonics)


def _draw_body(image: np.ndarray, labels: np.ndarray, grid: Grid, rng: np.random.Generator) -> tuple[Ellipse, dict]:
    """Skin outline, subcutaneous fat, muscle wall and abdominal cavity; returns the cavity and layout.

    The cavity is filled with a fat/soft-tissue mixture; organs are painted over it afterwards.
    """
    half_w, half_h = rng.uniform(150.0, 190.0), rng.uniform(100.0, 140.0)
    cy, cx = rng.normal(0.0, 8.0), rng.normal(0.0, 6.0)
    wobble = _wobble(rng, (2, 3), 0.025)
    fat, muscle = rng.uniform(8.0, 32.0), rng.uniform(6.0, 14.0)
    body = Ellipse(cy, cx, half_h, half_w, 0.0, wobble)
    wall = Ellipse(cy, cx, half_h - fat, half_w - fat, 0.0, wobble)
    cavity = Ellipse(cy, cx, half_h - fat - muscle, half_w - fat - muscle, 0.0, wobble)
    paint(image, labels, grid, body, rng.uniform(-115.0, -85.0), BACKGROUND)
    paint(image, labels, grid, wall, rng.uniform(40.0, 60.0), BACKGROUND)
    paint(image, labels, grid, cavity, rng.uniform(-60.0, 0.0), BACKGROUND)  # mesenteric fat and vessels
    layout = {"cy": cy, "cx": cx, "A": half_w, "B": half_h, "fat": fat, "muscle": muscle}
    return cavity, layout


def _draw_bowel(
    image: np.ndarray, labels: np.ndarray, grid: Grid, rng: np.random.Generator, at: dict, cavity: Ellipse
) -> None:
    """Bowel loops (soft-tissue wall, fluid or gas content) in mesenteric fat, mostly patient's left."""
    for _ in range(int(rng.integers(5, 12))):
        y = at["cy"] + at["B"] * rng.uniform(-0.7, 0.45)
        x = at["cx"] + at["A"] * rng.uniform(-0.35, 0.8)
        r = rng.uniform(9.0, 24.0)
        loop = Ellipse(y, x, r * rng.uniform(0.6, 1.0), r, rng.uniform(0, np.pi), _wobble(rng, (2, 3), 0.08))
        paint(image, labels, grid, Intersection(loop, cavity), rng.uniform(20.0, 45.0), BACKGROUND)
        wall, kind = rng.uniform(2.0, 4.0), int(rng.integers(0, 3))  # 0 collapsed, 1 fluid, 2 gas
        if kind and loop.ry > 2 * wall:
            inner = Ellipse(y, x, loop.ry - wall, loop.rx - wall, loop.angle, loop.wobble)
            content = rng.uniform(0.0, 30.0) if kind == 1 else rng.uniform(-990.0, -900.0)
            paint(image, labels, grid, Intersection(inner, cavity), content, BACKGROUND)


def _draw_left_upper_organs(
    image: np.ndarray, labels: np.ndarray, grid: Grid, rng: np.random.Generator, at: dict, cavity: Ellipse, liver_hu: float
) -> None:
    """Spleen (posterolateral, patient's left) and stomach (anterior, patient's left)."""
    present_spleen, present_stomach = rng.random() < 0.8, rng.random() < 0.7
    spleen = Ellipse(
        at["cy"] + at["B"] * rng.uniform(0.05, 0.4),
        at["cx"] + at["A"] * rng.uniform(0.5, 0.7),
        at["B"] * rng.uniform(0.25, 0.4),
        at["A"] * rng.uniform(0.12, 0.2),
        rng.uniform(-0.7, -0.2),
        _wobble(rng, (2, 3), 0.08),
    )
    spleen_hu = liver_hu - rng.uniform(5.0, 18.0)
    stomach = Ellipse(
        at["cy"] - at["B"] * rng.uniform(0.1, 0.4),
        at["cx"] + at["A"] * rng.uniform(0.15, 0.4),
        rng.uniform(25.0, 45.0),
        rng.uniform(30.0, 60.0),
        rng.uniform(-0.5, 0.5),
        _wobble(rng, (2, 3), 0.06),
    )
    wall = rng.uniform(3.0, 5.0)
    content_hu = -960.0 if rng.random() < 0.3 else rng.uniform(0.0, 20.0)
    if present_spleen:
        paint(image, labels, grid, Intersection(spleen, cavity), spleen_hu, BACKGROUND)
    if present_stomach:
        inner = Ellipse(stomach.cy, stomach.cx, stomach.ry - wall, stomach.rx - wall, stomach.angle, stomach.wobble)
        paint(image, labels, grid, Intersection(stomach, cavity), rng.uniform(30.0, 45.0), BACKGROUND)
        paint(image, labels, grid, Intersection(inner, cavity), content_hu, BACKGROUND)


def _make_liver(rng: np.random.Generator, at: dict, cavity: Ellipse) -> Liver:
    """Right lobe (always), left lobe (usually) and a caudate bulge, smoothly joined, inside the cavity."""
    A, B, cy, cx = at["A"], at["B"], at["cy"], at["cx"]
    scale = rng.uniform(0.7, 1.1)  # slice level: small near the dome or the tip, large mid-liver
    right = Ellipse(
        cy + B * rng.uniform(-0.15, 0.1),
        cx - A * rng.uniform(0.45, 0.6),
        B * scale * rng.uniform(0.55, 0.8),
        A * scale * rng.uniform(0.3, 0.42),
        rng.uniform(-0.4, 0.3),
        _wobble(rng, (2, 3, 4, 5), 0.06),
    )
    left = Ellipse(
        cy - B * rng.uniform(0.3, 0.5),
        cx - A * rng.uniform(-0.05, 0.25),
        B * scale * rng.uniform(0.18, 0.3),
        A * scale * rng.uniform(0.2, 0.35),
        rng.uniform(-0.5, 0.1),
        _wobble(rng, (2, 3, 4), 0.08),
    )
    caudate = Ellipse(
        cy + B * rng.uniform(-0.05, 0.15),
        cx - A * rng.uniform(0.12, 0.25),
        B * scale * rng.uniform(0.12, 0.2),
        A * scale * rng.uniform(0.08, 0.14),
        rng.uniform(0.0, np.pi),
    )
    use_left, use_caudate = rng.random() < 0.75, rng.random() < 0.6
    parts = (right,) + ((left,) if use_left else ()) + ((caudate,) if use_caudate else ())
    outline = Intersection(SmoothUnion(parts, k=rng.uniform(5.0, 12.0)), cavity)
    texture = tuple(
        (float(np.sin(t) * f), float(np.cos(t) * f), float(rng.uniform(0, 2 * np.pi)), float(rng.uniform(0.5, 2.0)))
        for t, f in zip(rng.uniform(0, np.pi, 3), 2 * np.pi / rng.uniform(15.0, 60.0, 3))
    )
    return Liver(outline, float(rng.uniform(54.0, 66.0)), texture)


def _draw_lesions(
    image: np.ndarray,
    labels: np.ndarray,
    grid: Grid,
    rng: np.random.Generator,
    liver: Liver,
    max_lesions: int,
    radius_mm: tuple[float, float],
) -> None:
    """0-5 hypodense lesions (log-uniform radius in ``radius_mm``, 15-45 HU below the liver), inside the liver."""
    count = 0 if rng.random() < 0.2 else int(rng.integers(1, 6))
    y0, y1, x0, x1 = liver.shape.box()
    for _ in range(min(count, max_lesions)):
        radius = float(np.exp(rng.uniform(np.log(radius_mm[0]), np.log(radius_mm[1]))))
        for _attempt in range(40):  # centre well inside the liver; geometry only, so grid-independent
            cy, cx = rng.uniform(y0, y1), rng.uniform(x0, x1)
            if liver.shape.distance(np.array(cy), np.array(cx)) < -0.75 * radius:  # at most a small cap is clipped
                break
            radius *= 0.97
        else:
            continue
        irregular = rng.random() < 0.4
        blob = Ellipse(
            cy,
            cx,
            radius * rng.uniform(0.75, 1.0),
            radius,
            rng.uniform(0, np.pi),
            _wobble(rng, (2, 3, 4), 0.15 if irregular else 0.04),
        )
        contrast = rng.uniform(15.0, 45.0)
        core = rng.uniform(0.0, 15.0) if rng.random() < 0.3 else 0.0
        edge = rng.uniform(1.0, 3.0)

        def lesion_hu(y: np.ndarray, x: np.ndarray, blob: Ellipse = blob, contrast: float = contrast, core: float = core) -> np.ndarray:
            inner = np.clip(-blob.distance(y, x) / max(blob.rx * 0.5, 1.0), 0.0, 1.0)  # 0 at rim → 1 at centre
            return liver.hu(y, x) - contrast - core * inner

        paint(image, labels, grid, Intersection(blob, liver.shape), lesion_hu, LESION, edge)


def _draw_retroperitoneum(image: np.ndarray, labels: np.ndarray, grid: Grid, rng: np.random.Generator, at: dict) -> None:
    """Paraspinal muscles, vertebra with canal and spinous process, aorta, IVC and kidneys."""
    cx = at["cx"] + rng.normal(0.0, 3.0)
    rv = rng.uniform(15.0, 22.0)
    vy = at["cy"] + at["B"] - rng.uniform(70.0, 85.0)
    bone, marrow = rng.uniform(600.0, 800.0), rng.uniform(180.0, 300.0)
    for side in (-1.0, 1.0):
        muscle = Ellipse(vy + rv + 18.0, cx + side * rng.uniform(28.0, 38.0), rng.uniform(16.0, 22.0), rng.uniform(18.0, 26.0))
        paint(image, labels, grid, muscle, rng.uniform(45.0, 60.0), BACKGROUND)
    for side in (-1.0, 1.0):  # right kidney (side -1, under the liver) and left kidney
        if rng.random() < 0.65:
            kidney = Ellipse(
                vy + rng.uniform(-8.0, 10.0),
                cx + side * rng.uniform(55.0, 72.0),
                rng.uniform(28.0, 38.0),
                rng.uniform(20.0, 28.0),
                side * rng.uniform(0.3, 0.7),
                _wobble(rng, (2, 3), 0.05),
            )
            rim = rng.uniform(2.0, 6.0)  # perirenal fat
            capsule = Ellipse(kidney.cy, kidney.cx, kidney.ry + rim, kidney.rx + rim, kidney.angle, kidney.wobble)
            paint(image, labels, grid, capsule, rng.uniform(-100.0, -60.0), BACKGROUND)
            paint(image, labels, grid, kidney, rng.uniform(25.0, 40.0), BACKGROUND)
    canal_r = rng.uniform(7.0, 10.0)
    canal_y = vy + rv + canal_r + 2.0
    paint(image, labels, grid, Ellipse(canal_y + 14.0, cx, 18.0, 5.0), bone, BACKGROUND)  # spinous process
    paint(image, labels, grid, Ellipse(canal_y, cx, canal_r + 4.0, canal_r + 6.0), bone, BACKGROUND)  # arch
    paint(image, labels, grid, Ellipse(canal_y, cx, canal_r, canal_r), rng.uniform(10.0, 30.0), BACKGROUND)
    paint(image, labels, grid, Ellipse(vy, cx, rv * 0.9, rv), bone, BACKGROUND)
    cortex = rng.uniform(2.0, 3.5)
    paint(image, labels, grid, Ellipse(vy, cx, rv * 0.9 - cortex, rv - cortex), marrow, BACKGROUND)
    ra = rng.uniform(9.0, 14.0)
    aorta = Ellipse(vy - rv - ra - rng.uniform(1.0, 4.0), cx + rng.uniform(5.0, 20.0), ra, ra)
    paint(image, labels, grid, aorta, rng.uniform(38.0, 50.0), BACKGROUND)
    ivc = Ellipse(vy - rv - rng.uniform(4.0, 14.0), cx - rng.uniform(20.0, 32.0), rng.uniform(7.0, 11.0), rng.uniform(10.0, 15.0))
    paint(image, labels, grid, ivc, rng.uniform(35.0, 45.0), BACKGROUND)


def _draw_ribs(image: np.ndarray, labels: np.ndarray, grid: Grid, rng: np.random.Generator, at: dict) -> None:
    """Rib cross-sections in the muscle wall on both flanks."""
    depth = at["fat"] + at["muscle"] / 2.0
    for lo, hi in ((np.pi * 0.55, np.pi * 1.35), (-np.pi * 0.35, np.pi * 0.45)):
        for t in rng.uniform(lo, hi, int(rng.integers(3, 6))):
            y = at["cy"] + (at["B"] - depth) * np.sin(t)
            x = at["cx"] + (at["A"] - depth) * np.cos(t)
            rib = Ellipse(y, x, rng.uniform(4.0, 6.0), rng.uniform(7.0, 11.0), t + np.pi / 2)
            paint(image, labels, grid, rib, rng.uniform(350.0, 700.0), BACKGROUND)


def _blur3(plane: np.ndarray, w: float) -> np.ndarray:
    """Separable 3-tap blur [w, 1-2w, w] along rows and columns (edges replicated)."""
    p = np.pad(plane, 1, mode="edge")
    p = w * p[:-2] + (1 - 2 * w) * p[1:-1] + w * p[2:]
    return w * p[:, :-2] + (1 - 2 * w) * p[:, 1:-1] + w * p[:, 2:]


def _add_noise(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mild blur (scanner PSF) plus correlated Gaussian noise with σ 8-20 HU; integer HU as stored."""
    sigma = rng.uniform(8.0, 20.0)
    white = rng.standard_normal(image.shape, dtype=np.float32)
    w = 0.25
    gain = (w * w * 2 + (1 - 2 * w) ** 2)  # per-axis variance gain of the 3-tap kernel
    noise = _blur3(white, w) * np.float32(sigma / gain)
    out = _blur3(image, 0.15) + noise
    return np.clip(np.round(out), -1024.0, 3071.0).astype(np.float32)


def make_ct_slice(
    rng: np.random.Generator,
    shape: tuple[int, int] = (512, 512),
    spacing_mm: tuple[float, float] = (0.8, 0.8),
    max_lesions: int = 5,
    lesion_radius_mm: tuple[float, float] = (4.0, 35.0),
) -> CtPhantom:
    """One random axial CT slice of ``shape`` (rows, cols) at ``spacing_mm`` (row, col) mm per pixel.

    Deterministic given the generator state; draws three seeds from ``rng`` (anatomy, lesions, noise).
    ``max_lesions`` caps the lesion count (0: none) and ``lesion_radius_mm`` bounds lesion radii;
    neither changes the anatomy or the noise drawn for the same generator state.
    """
    anatomy_rng, lesion_rng, noise_rng = (np.random.default_rng(int(s)) for s in rng.integers(0, 2**63, 3))
    grid = Grid(shape[0], shape[1], (float(spacing_mm[0]), float(spacing_mm[1])))
    image = np.full(shape, AIR_HU, dtype=np.float32)
    labels = np.zeros(shape, dtype=np.uint8)
    cavity, layout = _draw_body(image, labels, grid, anatomy_rng)
    _draw_bowel(image, labels, grid, anatomy_rng, layout, cavity)
    liver = _make_liver(anatomy_rng, layout, cavity)
    _draw_left_upper_organs(image, labels, grid, anatomy_rng, layout, cavity, liver.base_hu)
    paint(image, labels, grid, liver.shape, liver.hu, LIVER)
    _draw_lesions(image, labels, grid, lesion_rng, liver, max_lesions, lesion_radius_mm)
    _draw_retroperitoneum(image, labels, grid, anatomy_rng, layout)
    _draw_ribs(image, labels, grid, anatomy_rng, layout)
    return CtPhantom(_add_noise(image, noise_rng), labels, grid.spacing_mm)
