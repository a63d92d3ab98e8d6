"""Procedural endoscopic frames with EndoVis2018-style instrument labels (demo data for SurgicalSAM).

A frame is tissue (pinkish-red low-frequency colour noise, darker vessel curves, specular
highlights) with 1-3 instruments of distinct classes. Each instrument enters from the image border
at a random angle and ends in a class-specific jaw; later-drawn instruments occlude earlier ones.
Labels are exact (drawn before blur and noise): 0 background, 1..7 the EndoVis2018 class ids.
Everything is vectorised numpy on the full (H, W) grid; a 256×320 frame takes a few ms.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CLASS_IDS = tuple(range(1, 8))


@dataclass(frozen=True)
class InstrumentStyle:
    """Class-specific look: shaft width (px at 256 rows), RGB shade 0-255 and jaw kind."""

    shaft_width: float
    shade: tuple[float, float, float]
    jaw: str


# EndoVis2018: 1 Bipolar, 2 Prograsp, 3 Large Needle Driver, 4 Monopolar Curved Scissors,
# 5 Ultrasound Probe, 6 Suction Instrument, 7 Clip Applier.
STYLES: dict[int, InstrumentStyle] = {
    1: InstrumentStyle(18.0, (150.0, 160.0, 185.0), "bipolar"),  # bluish-grey, two thin prongs
    2: InstrumentStyle(22.0, (38.0, 38.0, 42.0), "prograsp"),  # black, broad fenestrated two-pronged jaw
    3: InstrumentStyle(26.0, (195.0, 195.0, 195.0), "needle_driver"),  # bright metal, stubby jaw
    4: InstrumentStyle(16.0, (90.0, 82.0, 72.0), "scissors"),  # dark brownish, curved crossing blades
    5: InstrumentStyle(32.0, (225.0, 222.0, 210.0), "probe"),  # thick off-white, round tip
    6: InstrumentStyle(12.0, (165.0, 150.0, 120.0), "suction"),  # thin brassy tube, rounded end
    7: InstrumentStyle(16.0, (110.0, 135.0, 120.0), "clip"),  # greenish-grey, parallel clip jaws
}


@dataclass(frozen=True)
class Instrument:
    """One drawn instrument: class id, tip (row, col) in px, direction angle (rad) pointing from
    the entry side towards the tip, scale (× nominal size) and jaw opening (rad)."""

    class_id: int
    tip: tuple[float, float]
    angle: float
    scale: float
    opening: float


@dataclass(frozen=True)
class SurgicalFrame:
    """rgb (H, W, 3) uint8, labels (H, W) uint8 (0 background, 1..7), instruments in drawing order."""

    rgb: np.ndarray
    labels: np.ndarray
    instruments: tuple[Instrument, ...]


# --------------------------------------------------------------------------- primitives


def _grid(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Row and column coordinates (H, 1) and (1, W) float32 (broadcast to the full grid on use)."""
    return np.arange(shape[0], dtype=np.float32)[:, None], np.arange(shape[1], dtype=np.float32)[None, :]


def _interp_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) float32 weights of a smoothstep interpolation spanning n_in knots over n_out samples."""
    pos = np.linspace(0.0, n_in - 1, n_out)
    lo = np.minimum(pos.astype(int), n_in - 2)
    f = pos - lo
    f = f * f * (3 - 2 * f)  # smoothstep: no creases at the knots
    m = np.zeros((n_out, n_in), np.float32)
    m[np.arange(n_out), lo] = 1 - f
    m[np.arange(n_out), lo + 1] += f
    return m


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: tuple[int, int], channels: int) -> np.ndarray:
    """Low-frequency noise (H, W, channels) float32 in [-1, 1]: a random (cells + 1) knot grid, interpolated."""
    grid = rng.uniform(-1.0, 1.0, size=(channels, cells[0] + 1, cells[1] + 1)).astype(np.float32)
    out = _interp_matrix(shape[0], cells[0] + 1) @ grid @ _interp_matrix(shape[1], cells[1] + 1).T
    return out.transpose(1, 2, 0)


def _segment_distance(u: np.ndarray, v: np.ndarray, a: tuple[float, float], b: tuple[float, float]) -> np.ndarray:
    """Distance (px) of points (u, v) to the segment a-b, all in the same local frame."""
    du, dv = b[0] - a[0], b[1] - a[1]
    t = np.clip(((u - a[0]) * du + (v - a[1]) * dv) / max(du * du + dv * dv, 1e-9), 0.0, 1.0)
    return np.hypot(u - a[0] - t * du, v - a[1] - t * dv)


def _capsule(u: np.ndarray, v: np.ndarray, a: tuple[float, float], b: tuple[float, float], r: float) -> np.ndarray:
    return _segment_distance(u, v, a, b) <= r


def _jaw_mask(jaw: str, u: np.ndarray, v: np.ndarray, w: float, s: float, opening: float) -> np.ndarray:
    """Jaw of kind ``jaw`` in the tip frame: u along the shaft (0 at the joint, + beyond), v across.

    ``w`` shaft width, ``s`` scale, ``opening`` half-angle of open jaws (rad).
    """
    if jaw == "bipolar":  # two thin diverging prongs
        length, r = 24 * s, 2.2 * s
        ends = [(length * np.cos(a), length * np.sin(a)) for a in (opening, -opening)]
        return _capsule(u, v, (0, w * 0.25), ends[0], r) | _capsule(u, v, (0, -w * 0.25), ends[1], r)
    if jaw == "prograsp":  # broad fenestrated prongs
        length, r = 22 * s, 4.5 * s
        mask = np.zeros(u.shape, bool)
        for a in (opening, -opening):
            end = (length * np.cos(a), length * np.sin(a))
            prong = _capsule(u, v, (0, 0), end, r)
            window = _capsule(u, v, (0.3 * end[0], 0.3 * end[1]), (0.75 * end[0], 0.75 * end[1]), 1.6 * s)
            mask |= prong & ~window
        return mask
    if jaw == "needle_driver":  # short, thick, tapered closed jaw
        length = 18 * s
        half = (w / 2) * (1 - 0.55 * np.clip(u / length, 0, 1))
        return (u >= 0) & (u <= length) & (np.abs(v) <= half)
    if jaw == "scissors":  # two curved crossing blades
        length, r = 22 * s, 2.0 * s
        mask = np.zeros(u.shape, bool)
        for sign in (1.0, -1.0):
            t = np.clip(u / length, 0.0, 1.0)
            centre = sign * (opening * 14 * s * (t - 0.5)) + 6 * s * t * t  # crossing, curving to one side
            mask |= (u >= 0) & (u <= length) & (np.abs(v - centre) <= r * (1.2 - 0.5 * t))
        return mask
    if jaw == "probe":  # round probe head
        return np.hypot(u - 0.45 * w, v) <= 0.75 * w
    if jaw == "suction":  # plain rounded tube end
        return np.hypot(u, v) <= w / 2
    if jaw == "clip":  # two parallel jaws with a clip between them
        length = 20 * s
        gap = 3 * s + 6 * s * opening
        jaws = (u >= 0) & (u <= length) & (np.abs(np.abs(v) - gap) <= 2.2 * s)
        clip = (u >= length * 0.55) & (u <= length * 0.9) & (np.abs(v) <= gap)
        return jaws | clip
    raise ValueError(f"unknown jaw {jaw!r}")


def instrument_frame(shape: tuple[int, int], inst: Instrument) -> tuple[np.ndarray, np.ndarray]:
    """(u, v) local coordinates (H, W) of ``inst``: u along the shaft (0 at the tip joint, negative
    towards the entry border), v across it."""
    rows, cols = _grid(shape)
    dy, dx = rows - np.float32(inst.tip[0]), cols - np.float32(inst.tip[1])
    c, s = np.float32(np.cos(inst.angle)), np.float32(np.sin(inst.angle))
    return dx * c + dy * s, -dx * s + dy * c


def _mask_in_frame(u: np.ndarray, v: np.ndarray, inst: Instrument) -> np.ndarray:
    style = STYLES[inst.class_id]
    w = style.shaft_width * inst.scale
    shaft = (u <= 0) & (np.abs(v) <= w / 2)
    return shaft | _jaw_mask(style.jaw, u, v, w, inst.scale, inst.opening)


def instrument_mask(shape: tuple[int, int], inst: Instrument) -> np.ndarray:
    """(H, W) bool: every pixel of ``inst`` (shaft from beyond the border to the tip, plus jaw), unoccluded."""
    return _mask_in_frame(*instrument_frame(shape, inst), inst)


def _shading(u: np.ndarray, v: np.ndarray, width: float) -> np.ndarray:
    """Brightness factor at (u, v): cylindrical across-shaft shading, a specular streak, and a
    gradient along u (darker towards the entry border, away from the light)."""
    across = np.clip(np.abs(v) / (width / 2), 0.0, 1.0)
    cylinder = 0.55 + 0.45 * np.sqrt(1.0 - across**2)
    streak = 0.35 * np.exp(-np.square((v - 0.15 * width) / (0.12 * width + 0.5)))
    along = 1.0 + 0.25 * np.clip(u / 250.0, -1.0, 0.0)
    return (cylinder + streak) * along


def _random_instrument(rng: np.random.Generator, class_id: int, shape: tuple[int, int]) -> Instrument:
    """Tip inside the central 70 % of the frame; the shaft comes from a random direction, so it
    crosses the border at a random angle."""
    h, w = shape
    tip = (float(rng.uniform(0.15, 0.85) * h), float(rng.uniform(0.15, 0.85) * w))
    angle = float(rng.uniform(-np.pi, np.pi))
    scale = float(rng.uniform(0.8, 1.2) * h / 256.0)
    opening = float(rng.uniform(0.1, 0.45))
    return Instrument(class_id, tip, angle, scale, opening)


# --------------------------------------------------------------------------- frame


def _tissue(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) float tissue: pinkish red with low-frequency colour noise and darker vessels."""
    h, w = shape
    base = (np.array([185.0, 80.0, 75.0]) + rng.uniform(-15, 15, size=3)).astype(np.float32)
    img = base + 28.0 * _smooth_noise(rng, shape, (4, 5), 3) + 10.0 * _smooth_noise(rng, shape, (16, 20), 1)
    rows, cols = _grid(shape)
    for _ in range(int(rng.integers(2, 6))):  # vessels: sinusoidal curves at random orientation
        a = rng.uniform(0, np.pi)
        along = cols * np.cos(a) + rows * np.sin(a)
        across = -cols * np.sin(a) + rows * np.cos(a) - rng.uniform(-0.2, 1.2) * max(h, w) * 0.7
        wave = rng.uniform(5, 25) * np.sin(along / rng.uniform(20, 70) + rng.uniform(0, 2 * np.pi))
        dist = np.abs(across - wave)
        profile = np.exp(-np.square(dist / np.float32(rng.uniform(1.0, 3.0))))
        img -= profile[..., None] * (np.array([70.0, 45.0, 25.0], np.float32) * np.float32(rng.uniform(0.4, 1.0)))
    return img


def _speculars(rng: np.random.Generator, shape: tuple[int, int], count: int) -> np.ndarray:
    """(H, W) in [0, 1]: small bright blobs (glints of the light source on wet tissue/metal)."""
    h, w = shape
    out = np.zeros(shape, np.float32)
    for _ in range(count):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = rng.uniform(1.0, 4.0, size=2)
        y0, y1 = max(int(cy - 3 * ry), 0), min(int(cy + 3 * ry) + 1, h)  # the blob is negligible beyond 3 radii
        x0, x1 = max(int(cx - 3 * rx), 0), min(int(cx + 3 * rx) + 1, w)
        yy = ((np.arange(y0, y1, dtype=np.float32) - cy) / ry)[:, None]
        xx = ((np.arange(x0, x1, dtype=np.float32) - cx) / rx)[None, :]
        out[y0:y1, x0:x1] = np.maximum(out[y0:y1, x0:x1], np.exp(-np.square(yy * yy + xx * xx)))
    return out


def _blur3(img: np.ndarray) -> np.ndarray:
    """Separable [1, 2, 1]/4 blur over the first two axes (edge-replicated)."""
    p = np.pad(img, ((1, 1), (0, 0), (0, 0)), mode="edge")
    img = (p[:-2] + 2 * p[1:-1] + p[2:]) / 4
    p = np.pad(img, ((0, 0), (1, 1), (0, 0)), mode="edge")
    return (p[:, :-2] + 2 * p[:, 1:-1] + p[:, 2:]) / 4


def make_surgical_frame(
    rng: np.random.Generator, shape: tuple[int, int] = (256, 320), classes: tuple[int, ...] | None = None
) -> SurgicalFrame:
    """One frame of ``shape`` (rows, cols): 1-3 instruments of distinct random classes (or exactly
    ``classes``, drawn in that order), deterministic for a given ``rng`` state."""
    if classes is None:
        count = int(rng.choice([1, 2, 3], p=[0.3, 0.4, 0.3]))
        classes = tuple(int(c) for c in rng.choice(CLASS_IDS, size=count, replace=False))
    img = _tissue(rng, shape)
    labels = np.zeros(shape, np.uint8)
    instruments = []
    for class_id in classes:
        inst = _random_instrument(rng, class_id, shape)
        u, v = instrument_frame(shape, inst)
        mask = _mask_in_frame(u, v, inst)
        shade = np.array(STYLES[class_id].shade, np.float32) * np.float32(rng.uniform(0.88, 1.12))
        width = STYLES[class_id].shaft_width * inst.scale
        img[mask] = _shading(u[mask], v[mask], width)[:, None] * shade
        labels[mask] = class_id
        instruments.append(inst)
    glints = _speculars(rng, shape, int(rng.integers(3, 12)))[..., None]
    img = img * (1 - glints) + 250.0 * glints
    sigma = np.float32(rng.uniform(1.5, 4.0))
    img = _blur3(img) + sigma * rng.standard_normal(size=img.shape, dtype=np.float32)
    rgb = np.clip(img, 0, 255).astype(np.uint8)
    return SurgicalFrame(rgb=rgb, labels=labels, instruments=tuple(instruments))
