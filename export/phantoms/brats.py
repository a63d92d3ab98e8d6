"""Procedural BraTS-like multi-modal brain MRI case (T1, T1ce, T2, FLAIR) with an exact tumour label map.

Geometry is drawn in millimetres around the volume centre, so any voxel spacing samples the same
anatomy. Axes are (X, Y, Z) = (left-right, posterior-anterior, inferior-superior), as in the
BraTS NIfTI arrays. The brain is an ellipsoid sized relative to the field of view, with a wobbly
outline, an outer CSF layer, a cortical grey-matter ribbon with folds, deep grey matter, lateral
ventricles and a midline fissure. Background outside the brain is exactly 0 in every channel
(skull-stripped). One tumour sits at a random position inside the brain: edema (label 2)
outermost, tumour core inside it made of an enhancing rim (label 4) around a necrotic core
(label 1); some cases have no necrosis, some no enhancement (the whole core is label 1).

Contrasts follow clinical MRI: T1 tumour hypo-intense; T1ce enhancing rim bright, necrosis dark;
T2 edema and necrosis bright, CSF brightest; FLAIR edema bright, CSF dark. Each channel gets
tissue texture, its own smooth multiplicative bias field, a scanner gain (arbitrary units, not
normalised) and Rician noise. Smooth random fields are Gaussian-filtered white noise (FFT on a
grid coarse enough for the filter width, then trilinear upsampling); no scipy.

Random streams: the caller's generator spawns three independent ones (anatomy, tumour, noise).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MODALITIES = ("t1", "t1ce", "t2", "flair")
BACKGROUND, NECROSIS, EDEMA, ENHANCING = 0, 1, 2, 4  # BraTS 2018-2021 labels
BRATS_LABELS = (BACKGROUND, NECROSIS, EDEMA, ENHANCING)

# Relative signal per tissue and modality (white matter T1 = 1); columns T1, T1ce, T2, FLAIR.
TISSUE_SIGNAL: dict[str, tuple[float, float, float, float]] = {
    "wm": (1.00, 1.00, 0.50, 0.60),
    "gm": (0.72, 0.74, 0.72, 0.78),
    "csf": (0.30, 0.32, 1.70, 0.22),
    "edema": (0.66, 0.70, 1.20, 1.35),
    "enhancing": (0.60, 1.55, 0.95, 1.05),
    "necrosis": (0.40, 0.40, 1.45, 0.85),
}

Vec3 = tuple[float, float, float]


@dataclass(frozen=True)
class BratsPhantom:
    """``channels`` (4, X, Y, Z) float32 T1, T1ce, T2, FLAIR in scanner units (0 outside the brain);
    ``labels`` (X, Y, Z) uint8 in {0, 1, 2, 4}; ``spacing_mm`` (X, Y, Z); ``brain`` (X, Y, Z) bool."""

    channels: np.ndarray
    labels: np.ndarray
    spacing_mm: Vec3
    brain: np.ndarray


# ----------------------------------------------------------------------------- smooth random fields


def _upsample_axis(a: np.ndarray, axis: int, step: int, n: int) -> np.ndarray:
    """Linear interpolation along ``axis`` from a grid of spacing ``step`` voxels to ``n`` voxels."""
    if step == 1:
        return np.take(a, np.arange(n), axis=axis)
    pos = np.arange(n, dtype=np.float32) / step
    i0 = np.floor(pos).astype(np.intp)
    i1 = np.minimum(i0 + 1, a.shape[axis] - 1)
    shape = [1] * a.ndim
    shape[axis] = n
    w = (pos - i0).reshape(shape)
    return np.take(a, i0, axis=axis) * (1.0 - w) + np.take(a, i1, axis=axis) * w


def smooth_fields(
    rng: np.random.Generator, count: int, shape: tuple[int, int, int], spacing_mm: Vec3, sigma_mm: float
) -> np.ndarray:
    """``count`` independent zero-mean, unit-std Gaussian random fields (count, X, Y, Z) float32.

    Spectral synthesis: complex white noise on the half spectrum times a Gaussian transfer function
    of width ``sigma_mm`` (one inverse FFT, periodic), on a grid whose step is at most 2/3 of the
    filter width, normalised, then linearly upsampled to ``shape``.
    """
    steps = [max(1, int(sigma_mm / s / 1.5)) for s in spacing_mm]
    coarse = tuple(-(-n // st) + 1 for n, st in zip(shape, steps))
    half = (count, coarse[0], coarse[1], coarse[2] // 2 + 1)
    transfer = np.ones((1,) * 4, dtype=np.float32)
    for axis, (m, st, sp) in enumerate(zip(coarse, steps, spacing_mm)):
        freq = np.fft.rfftfreq(m, d=st * sp) if axis == 2 else np.fft.fftfreq(m, d=st * sp)  # cycles / mm
        kernel = np.exp(-2.0 * (np.pi * sigma_mm * freq) ** 2).astype(np.float32)
        transfer = transfer * kernel.reshape([-1 if k == axis + 1 else 1 for k in range(4)])
    spectrum = rng.standard_normal(half, dtype=np.float32) + 1j * rng.standard_normal(half, dtype=np.float32)
    field = np.fft.irfftn(spectrum * transfer, s=coarse, axes=(1, 2, 3))
    field = field.astype(np.float32)
    field -= field.mean(axis=(1, 2, 3), keepdims=True)
    field /= field.std(axis=(1, 2, 3), keepdims=True) + 1e-12
    for axis, (n, st) in enumerate(zip(shape, steps), start=1):
        field = _upsample_axis(field, axis, st, n)
    return np.ascontiguousarray(field, dtype=np.float32)


# ----------------------------------------------------------------------------- geometry helpers


def _ramp(d: np.ndarray, width_mm: float = 1.0) -> np.ndarray:
    """Soft inside-fraction of a signed depth ``d`` in mm (positive inside): 0.5 at d = 0."""
    return np.clip(0.5 + d / width_mm, 0.0, 1.0).astype(np.float32)


def _grid(shape: tuple[int, int, int], spacing_mm: Vec3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxel-centre coordinates in mm, centred on the volume, shaped for broadcasting."""
    axes = [((np.arange(n) - (n - 1) / 2.0) * s).astype(np.float32) for n, s in zip(shape, spacing_mm)]
    return axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random 3×3 rotation matrix."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def _ellipsoid_radius(
    xyz: tuple[np.ndarray, ...], centre: np.ndarray, axes_scale: np.ndarray, rotation: np.ndarray
) -> np.ndarray:
    """Scaled distance in mm from ``centre`` in a rotated frame, each axis divided by ``axes_scale``."""
    d = [c - float(c0) for c, c0 in zip(xyz, centre)]
    total = np.zeros(np.broadcast_shapes(*(c.shape for c in xyz)), dtype=np.float32)
    for k in range(3):
        p = rotation[k, 0] * d[0] + rotation[k, 1] * d[1] + rotation[k, 2] * d[2]
        total += (p / axes_scale[k]) ** 2
    return np.sqrt(total)


# ----------------------------------------------------------------------------- anatomy


@dataclass(frozen=True)
class _Anatomy:
    brain: np.ndarray  # bool
    depth_mm: np.ndarray  # approximate distance below the brain surface (positive inside)
    csf: np.ndarray  # soft fractions, float32
    gm: np.ndarray
    semi_axes: np.ndarray  # brain ellipsoid (mm)
    texture: np.ndarray  # fine zero-mean unit-std field (σ 2 mm) for tissue texture


def _anatomy(rng: np.random.Generator, shape: tuple[int, int, int], spacing_mm: Vec3) -> _Anatomy:
    x, y, z = xyz = _grid(shape, spacing_mm)
    fov = np.array(shape, dtype=np.float32) * np.array(spacing_mm, dtype=np.float32)
    semi = (fov / 2.0) * rng.uniform([0.74, 0.80, 0.76], [0.84, 0.90, 0.88])
    centre = rng.normal(0.0, 1.0, 3) * np.array([1.0, 1.5, 1.0])
    outline, = smooth_fields(rng, 1, shape, spacing_mm, 12.0)
    fold, texture = smooth_fields(rng, 2, shape, spacing_mm, 2.0)
    r = _ellipsoid_radius(xyz, centre, semi, np.eye(3)) + 0.03 * outline
    depth = (1.0 - r) * float(semi.mean())
    brain = depth > 0.0

    csf_layer = rng.uniform(0.8, 1.8)
    gm_thickness = rng.uniform(3.0, 4.5)
    csf = _ramp(csf_layer - depth)
    sulci = _ramp(2.0 * gm_thickness - depth, 2.0) * _ramp((fold - 1.0) * 3.0)
    csf = np.maximum(csf, sulci)
    gm = _ramp(gm_thickness * (1.0 + 0.4 * fold + 0.15 * texture) - depth, 1.5)
    fissure = _ramp(0.8 - np.abs(x - centre[0])) * _ramp((z - centre[2]) + 0.3 * semi[2], 4.0)
    csf = np.maximum(csf, fissure)

    for side in (-1.0, 1.0):  # deep grey matter (basal ganglia / thalamus)
        c = centre + semi * np.array([side * rng.uniform(0.16, 0.24), rng.uniform(-0.1, 0.05), rng.uniform(-0.15, 0.0)])
        rho = _ellipsoid_radius(xyz, c, semi * rng.uniform([0.08, 0.14, 0.09], [0.12, 0.2, 0.13]), np.eye(3))
        gm = np.maximum(gm, 0.85 * _ramp((1.0 - rho) * 6.0, 2.0))
    span = rng.uniform(0.8, 1.4)  # lateral ventricles: banana-shaped, bending down at both ends
    for side in (-1.0, 1.0):
        c = centre + semi * np.array([side * rng.uniform(0.06, 0.1), rng.uniform(-0.05, 0.05), rng.uniform(0.02, 0.12)])
        bend = 0.25 * semi[2] * ((y - c[1]) / semi[1]) ** 2
        scale = semi * rng.uniform([0.04, 0.3, 0.06], [0.07, 0.4, 0.1]) * np.array([span, 1.0, span])
        rho = np.sqrt(((x - c[0]) / scale[0]) ** 2 + ((y - c[1]) / scale[1]) ** 2 + ((z - c[2] + bend) / scale[2]) ** 2)
        csf = np.maximum(csf, _ramp((1.0 - rho) * 4.0, 2.0))
    return _Anatomy(brain, depth.astype(np.float32), csf.astype(np.float32), gm.astype(np.float32), semi, texture)


# ----------------------------------------------------------------------------- tumour


@dataclass(frozen=True)
class _Tumour:
    edema: np.ndarray  # soft fraction of the whole tumour (WT)
    core: np.ndarray  # soft fraction of the tumour core (TC), ≤ edema
    necrosis: np.ndarray  # soft fraction of the necrotic core, ≤ core
    enhancing: bool  # whether TC minus necrosis enhances (label 4) or is non-enhancing (label 1)


def _tumour(rng: np.random.Generator, shape: tuple[int, int, int], spacing_mm: Vec3, anatomy: _Anatomy) -> _Tumour:
    xyz = _grid(shape, spacing_mm)
    semi = anatomy.semi_axes
    mean_axis = float(semi.mean())
    radius_wt = mean_axis * rng.uniform(0.25, 0.5)
    radius_tc = radius_wt * rng.uniform(0.45, 0.75)
    has_necrosis, enhancing = rng.random() < 0.85, rng.random() < 0.9
    radius_ncr = radius_tc * rng.uniform(0.4, 0.75) if has_necrosis else 0.0
    for _ in range(100):  # centre inside the brain, at least a core radius below its surface
        u = rng.uniform(-0.7, 0.7, 3)
        centre = u * semi
        idx = tuple(int(np.clip(round((c / s) + (n - 1) / 2.0), 0, n - 1)) for c, s, n in zip(centre, spacing_mm, shape))
        if anatomy.depth_mm[idx] > radius_tc:
            break
    else:
        centre = np.zeros(3)
    rotation = _random_rotation(rng)
    stretch = rng.uniform(0.75, 1.3, 3)
    stretch = stretch / np.cbrt(stretch.prod())
    shape_wt, = smooth_fields(rng, 1, shape, spacing_mm, max(4.0, 0.4 * radius_wt))
    shape_tc, rim = smooth_fields(rng, 2, shape, spacing_mm, max(3.0, 0.35 * radius_tc))
    edge = 1.2  # partial-volume width, mm

    rho_tc = _ellipsoid_radius(xyz, centre, stretch, rotation)
    core_extent = radius_tc * (1.0 + 0.22 * shape_tc)
    core = _ramp(core_extent - rho_tc, edge)
    if has_necrosis:
        ncr_extent = radius_ncr * (1.0 + 0.22 * shape_tc + 0.12 * rim)
        necrosis = np.minimum(_ramp(ncr_extent - rho_tc, edge), core)
    else:
        necrosis = np.zeros_like(core)
    offset = rng.normal(0.0, 0.15 * radius_tc, 3)
    rho_wt = _ellipsoid_radius(xyz, centre + offset, stretch, rotation)
    wt_extent = radius_wt * (1.0 + 0.3 * shape_wt - 0.35 * anatomy.gm)  # edema spreads in white matter
    edema = np.maximum(_ramp(wt_extent - rho_wt, edge), core)
    inside = anatomy.brain.astype(np.float32)
    return _Tumour(edema * inside, core * inside, necrosis * inside, enhancing)


def _labels(tumour: _Tumour) -> np.ndarray:
    """Hard BraTS labels from the soft fractions (threshold 0.5, nested by construction)."""
    labels = np.zeros(tumour.edema.shape, dtype=np.uint8)
    labels[tumour.edema > 0.5] = EDEMA
    labels[tumour.core > 0.5] = ENHANCING if tumour.enhancing else NECROSIS
    labels[tumour.necrosis > 0.5] = NECROSIS
    return labels


# ----------------------------------------------------------------------------- signal


def _signal(rng: np.random.Generator, anatomy: _Anatomy, tumour: _Tumour, spacing_mm: Vec3) -> np.ndarray:
    """Noise-free-then-noisy channels (4, X, Y, Z) float32, zero outside the brain."""
    shape = anatomy.brain.shape
    jitter = {k: np.array(v, dtype=np.float32) * rng.uniform(0.95, 1.05, 4).astype(np.float32) for k, v in TISSUE_SIGNAL.items()}
    gains = np.exp(rng.uniform(np.log(200.0), np.log(2500.0), 4)).astype(np.float32)
    noise_level = rng.uniform(0.015, 0.035)
    tumour_texture, = smooth_fields(rng, 1, shape, spacing_mm, 3.0)
    bias = smooth_fields(rng, 4, shape, spacing_mm, 40.0)
    core_value = jitter["enhancing"] if tumour.enhancing else jitter["necrosis"]

    channels = np.empty((4, *shape), dtype=np.float32)
    tissue_mod = 1.0 + 0.04 * anatomy.texture
    tumour_mod = 1.0 + 0.08 * tumour_texture
    for m in range(4):
        v = jitter["wm"][m] + (jitter["gm"][m] - jitter["wm"][m]) * anatomy.gm
        v = (v + (jitter["csf"][m] - v) * anatomy.csf) * tissue_mod
        v = v + (jitter["edema"][m] * tumour_mod - v) * tumour.edema
        v = v + (core_value[m] * tumour_mod - v) * tumour.core
        v = v + (jitter["necrosis"][m] * tumour_mod - v) * tumour.necrosis
        signal = v * np.exp(0.12 * bias[m]) * gains[m]
        sigma = noise_level * gains[m] * jitter["wm"][m]
        real = signal + sigma * rng.standard_normal(shape, dtype=np.float32)
        imag = sigma * rng.standard_normal(shape, dtype=np.float32)
        magnitude = np.sqrt(real * real + imag * imag)  # Rician
        channels[m] = np.where(anatomy.brain, np.maximum(magnitude, 1e-3), 0.0)
    return channels


def make_brats_case(
    rng: np.random.Generator, shape: tuple[int, int, int] = (96, 96, 80), spacing_mm: Vec3 = (1.0, 1.0, 1.0)
) -> BratsPhantom:
    """One deterministic (for a given generator state) BraTS-like case; see the module docstring."""
    shape = tuple(int(n) for n in shape)  # type: ignore[assignment]
    spacing_mm = tuple(float(s) for s in spacing_mm)  # type: ignore[assignment]
    anatomy_rng, tumour_rng, noise_rng = rng.spawn(3)
    anatomy = _anatomy(anatomy_rng, shape, spacing_mm)
    tumour = _tumour(tumour_rng, shape, spacing_mm, anatomy)
    channels = _signal(noise_rng, anatomy, tumour, spacing_mm)
    return BratsPhantom(channels, _labels(tumour), spacing_mm, anatomy.brain)


# ----------------------------------------------------------------------------- regions ↔ labels


def brats_regions(labels: np.ndarray) -> np.ndarray:
    """BraTS labels (...) → regions (3, ...) bool: WT = {1, 2, 4}, TC = {1, 4}, ET = {4}."""
    return np.stack(
        [np.isin(labels, (NECROSIS, EDEMA, ENHANCING)), np.isin(labels, (NECROSIS, ENHANCING)), labels == ENHANCING]
    )


def labels_from_regions(regions: np.ndarray) -> np.ndarray:
    """Regions (3, ...) bool (WT, TC, ET) → BraTS labels uint8, painted WT → 2, TC → 1, ET → 4.

    ET → 4, TC∖ET → 1, WT∖TC → 2. Non-nested input is resolved by the painting order (an ET voxel
    outside TC is still 4, a TC voxel outside WT is still 1).
    """
    regions = np.asarray(regions, dtype=bool)
    if regions.shape[0] != 3:
        raise ValueError(f"expected 3 region channels (WT, TC, ET), got {regions.shape[0]}")
    labels = np.zeros(regions.shape[1:], dtype=np.uint8)
    labels[regions[0]] = EDEMA
    labels[regions[1]] = NECROSIS
    labels[regions[2]] = ENHANCING
    return labels
