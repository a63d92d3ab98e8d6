"""Procedural colonoscopy clips with one moving polyp and its exact per-frame mask.

A clip is drawn on a "world" canvas of mucosa a little larger than the frame: a pink/red base
colour with smooth brightness variation, shaded folds (sinusoidal ridges along a warped
direction), a network of darker vessel-like lines, an optional dark lumen, and a fine texture.
The camera looks at a window of that canvas that drifts a few pixels per frame (camera jitter).
The polyp is a lobulated ellipse with its own colour shift, pit-pattern texture and dome shading
lit from the scope, a soft rim shadow, and specular highlights; it moves slowly in the frame and
its outline deforms (lobulation phases and size drift). Per frame: specular highlights on the
mucosa, scope vignetting, a small gain flicker, optional defocus and Gaussian noise.

Everything comes from the caller's ``numpy.random.Generator``: the same generator state gives
the same clip, bit for bit. Pure numpy + Pillow; a 288×384 frame takes a few milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

FRAME_SHAPES: tuple[tuple[int, int], ...] = ((288, 384), (240, 320), (256, 256))  # (rows, cols)
MARGIN = 32  # px of world canvas around the frame, the camera-jitter range


@dataclass(frozen=True)
class PolypClip:
    """``frames`` (T, rows, cols, 3) uint8 RGB; ``masks`` (T, rows, cols) bool, True on the polyp."""

    frames: np.ndarray
    masks: np.ndarray


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cell: float) -> np.ndarray:
    """(rows, cols) float32 zero-mean, unit-std noise smooth on a scale of ``cell`` px (bicubic
    upsampling of a coarse Gaussian grid)."""
    coarse = (max(2, int(np.ceil(shape[0] / cell)) + 2), max(2, int(np.ceil(shape[1] / cell)) + 2))
    grid = rng.standard_normal(coarse).astype(np.float32)
    big = (int(round(coarse[0] * cell)), int(round(coarse[1] * cell)))
    image = Image.fromarray(grid, mode="F").resize((big[1], big[0]), Image.BICUBIC)
    field = np.asarray(image, dtype=np.float32)[: shape[0], : shape[1]]
    field = field - field.mean()
    return field / max(float(field.std()), 1e-6)


def _mucosa(rng: np.random.Generator, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """World canvas → (colour (rows, cols, 3) float32 in 0-255 units before lighting, base RGB (3,))."""
    rows, cols = shape
    base = np.array([rng.uniform(175, 225), rng.uniform(78, 125), rng.uniform(70, 112)], dtype=np.float32)
    y, x = np.mgrid[0:rows, 0:cols].astype(np.float32)
    brightness = 1.0 + 0.08 * smooth_noise(rng, shape, rng.uniform(60, 120))
    # folds: ridges along a random direction, the phase warped by smooth noise
    angle = rng.uniform(0, np.pi)
    period = rng.uniform(40, 95)
    warp = smooth_noise(rng, shape, rng.uniform(50, 90)) * rng.uniform(0.8, 2.2)
    phase = 2 * np.pi * (x * np.cos(angle) + y * np.sin(angle)) / period + warp
    fold = np.sin(phase)
    brightness += rng.uniform(0.06, 0.16) * fold - rng.uniform(0.0, 0.12) * np.maximum(-fold, 0.0) ** 3
    brightness += 0.03 * smooth_noise(rng, shape, rng.uniform(3, 6))  # fine texture
    if rng.random() < 0.5:  # dark lumen
        cy, cx = rng.uniform(0, rows), rng.uniform(0, cols)
        radius = rng.uniform(0.12, 0.3) * min(rows, cols)
        brightness *= 1.0 - rng.uniform(0.6, 0.9) * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * radius**2))
    colour = brightness[..., None] * base
    # vessels: thin lines along the zero level sets of smooth fields, darker and bluer
    for _ in range(int(rng.integers(1, 4))):
        field = smooth_noise(rng, shape, rng.uniform(18, 40))
        line = np.exp(-((field / rng.uniform(0.03, 0.07)) ** 2))
        tint = np.array([0.22, 0.42, 0.32], dtype=np.float32) * rng.uniform(0.25, 0.8)
        colour *= 1.0 - line[..., None] * tint
    return colour.astype(np.float32), base


def _add_highlight(image: np.ndarray, cy: float, cx: float, sigma: float, strength: float) -> None:
    """Blend a saturated white Gaussian spot into ``image`` (rows, cols, 3) float32, in place."""
    rows, cols = image.shape[:2]
    half = int(np.ceil(3 * sigma)) + 1
    y0, y1 = max(0, int(cy) - half), min(rows, int(cy) + half + 1)
    x0, x1 = max(0, int(cx) - half), min(cols, int(cx) + half + 1)
    if y0 >= y1 or x0 >= x1:
        return
    y, x = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    g = np.clip(strength * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * sigma**2)), 0.0, 1.0)[..., None]
    image[y0:y1, x0:x1] = image[y0:y1, x0:x1] * (1 - g) + 255.0 * g


@dataclass(frozen=True)
class _Polyp:
    """Polyp parameters (frame px): start centre, velocity per frame, radius, shape and look."""

    centre: tuple[float, float]
    velocity: tuple[float, float]
    radius: float
    aspect: float
    angle: float
    lobes: tuple[tuple[int, float, float, float], ...]  # (harmonic, amplitude, phase, phase drift/frame)
    breathing: tuple[float, float]  # (relative amplitude, rad/frame)
    colour: np.ndarray  # (3,) multiplier of the mucosa base colour
    texture_amp: float
    light: np.ndarray  # (3,) unit vector towards the light
    shadow: float


def _draw_polyp(rng: np.random.Generator, shape: tuple[int, int], base: np.ndarray) -> _Polyp:
    rows, cols = shape
    side = min(rows, cols)
    small = rng.random() < 0.25
    radius = side * (rng.uniform(0.04, 0.08) if small else rng.uniform(0.08, 0.3))
    if rng.random() < 0.2:  # partly outside the frame: centre within ~[-0.3, 0.6] radius of an edge
        edge = int(rng.integers(4))
        inset = radius * rng.uniform(-0.3, 0.6)
        along = rng.uniform(0.2, 0.8)
        cy, cx = {
            0: (inset, along * cols), 1: (rows - inset, along * cols),
            2: (along * rows, inset), 3: (along * rows, cols - inset),
        }[edge]
    else:
        cy, cx = rng.uniform(0.15, 0.85) * rows, rng.uniform(0.15, 0.85) * cols
    speed, heading = rng.uniform(0.2, 1.2), rng.uniform(0, 2 * np.pi)
    lobes = tuple(
        (k, float(rng.uniform(0.0, 0.12 / (k - 1) ** 0.5)), float(rng.uniform(0, 2 * np.pi)), float(rng.uniform(-0.06, 0.06)))
        for k in (2, 3, 4, 5)
    )
    kind = rng.integers(3)  # redder / paler / similar hue but stronger texture
    if kind == 0:
        shift = np.array([rng.uniform(0.0, 0.08), -rng.uniform(0.1, 0.3), -rng.uniform(0.05, 0.25)])
    elif kind == 1:
        shift = np.array([rng.uniform(0.0, 0.08), rng.uniform(0.08, 0.3), rng.uniform(0.05, 0.25)])
    else:
        shift = rng.uniform(-0.08, 0.08, 3)
    light = np.array([rng.uniform(-0.5, 0.5), rng.uniform(-0.5, 0.5), 1.0])
    return _Polyp(
        centre=(float(cy), float(cx)),
        velocity=(float(speed * np.sin(heading)), float(speed * np.cos(heading))),
        radius=float(radius),
        aspect=float(rng.uniform(0.7, 1.0)),
        angle=float(rng.uniform(0, np.pi)),
        lobes=lobes,
        breathing=(float(rng.uniform(0.0, 0.05)), float(rng.uniform(0.1, 0.5))),
        colour=(1.0 + shift).astype(np.float32),
        texture_amp=float(rng.uniform(0.03, 0.07) if kind != 2 else rng.uniform(0.06, 0.11)),
        light=(light / np.linalg.norm(light)).astype(np.float32),
        shadow=float(rng.uniform(0.1, 0.35)),
    )


def _polyp_geometry(p: _Polyp, t: int, shape: tuple[int, int], offset: tuple[float, float]) -> tuple[np.ndarray, float]:
    """Normalised radial distance d (rows, cols) (d < 1 inside) at frame ``t`` and the radius (px)."""
    cy = p.centre[0] + p.velocity[0] * t - offset[0]
    cx = p.centre[1] + p.velocity[1] * t - offset[1]
    y = np.arange(shape[0], dtype=np.float32)[:, None] - cy
    x = np.arange(shape[1], dtype=np.float32)[None, :] - cx
    ca, sa = np.cos(p.angle), np.sin(p.angle)
    u, v = x * ca + y * sa, (-x * sa + y * ca) / p.aspect
    rho = np.sqrt(u * u + v * v)
    theta = np.arctan2(v, u)
    radius = p.radius * (1.0 + p.breathing[0] * np.sin(p.breathing[1] * t))
    outline = np.ones_like(theta)
    for k, amp, phase, drift in p.lobes:
        outline += amp * np.cos(k * theta + phase + drift * t)
    return rho / (radius * outline), radius


def make_polyp_clip(
    rng: np.random.Generator, frames: int = 8, shape: tuple[int, int] | None = None
) -> PolypClip:
    """A clip of ``frames`` RGB frames of (rows, cols) ``shape`` (default: one of ``FRAME_SHAPES``)."""
    if shape is None:
        shape = FRAME_SHAPES[int(rng.integers(len(FRAME_SHAPES)))]
    rows, cols = shape
    world_shape = (rows + 2 * MARGIN, cols + 2 * MARGIN)
    world, base = _mucosa(rng, world_shape)
    polyp = _draw_polyp(rng, shape, base)
    texture = smooth_noise(rng, world_shape, rng.uniform(2.5, 5.0))
    gain = rng.uniform(0.85, 1.1)
    vignette = rng.uniform(0.25, 0.55)
    noise_sigma = rng.uniform(1.5, 5.0)
    blur = rng.uniform(0.0, 1.0) if rng.random() < 0.5 else 0.0
    spots = [(rng.uniform(0, world_shape[0]), rng.uniform(0, world_shape[1]), rng.uniform(0.8, 3.0))
             for _ in range(int(rng.integers(3, 16)))]
    # camera: smooth random walk of the window offset, ~0.5-2.5 px per frame
    speed, heading = rng.uniform(0.5, 2.5), rng.uniform(0, 2 * np.pi)
    velocity = np.array([np.sin(heading), np.cos(heading)]) * speed
    position = rng.uniform(-MARGIN / 3, MARGIN / 3, 2)

    yy = (np.arange(rows, dtype=np.float32)[:, None] - rows / 2) / (rows / 2)
    xx = (np.arange(cols, dtype=np.float32)[None, :] - cols / 2) / (cols / 2)
    falloff = (1.0 - vignette * np.clip((yy**2 + xx**2) / 2.0, 0, 1) ** 0.8)[..., None]

    out_frames = np.empty((frames, rows, cols, 3), dtype=np.uint8)
    out_masks = np.empty((frames, rows, cols), dtype=bool)
    for t in range(frames):
        oy, ox = (int(round(v)) for v in np.clip(position, -MARGIN + 1, MARGIN - 1))
        view = (slice(MARGIN + oy, MARGIN + oy + rows), slice(MARGIN + ox, MARGIN + ox + cols))
        image = world[view].copy()
        # the polyp sits on the mucosa: it follows the camera offset and its own slow motion
        d, radius = _polyp_geometry(polyp, t, shape, (float(oy), float(ox)))
        mask = d < 1.0
        height = np.sqrt(np.clip(1.0 - d * d, 0.0, 1.0))
        gy, gx = np.gradient(height * radius * 0.6)
        norm = np.sqrt(gx * gx + gy * gy + 1.0)
        shade = np.clip((-gx * polyp.light[1] - gy * polyp.light[0] + polyp.light[2]) / norm, 0.0, 1.0)
        tex_view = texture[view]
        look = (0.72 + 0.28 * shade + 0.1 * height + polyp.texture_amp * tex_view)[..., None]
        polyp_rgb = look * base * polyp.colour
        edge = max(1.0, 0.04 * radius)
        alpha = np.clip((1.0 - d) * radius / edge + 0.5, 0.0, 1.0)[..., None]
        ring = polyp.shadow * np.exp(-(((d - 1.0) * radius / max(2.0, 0.15 * radius)) ** 2)) * (d >= 1.0)
        image *= 1.0 - ring[..., None]
        image = image * (1.0 - alpha) + polyp_rgb * alpha
        # highlights: on the polyp near the light-facing part of the dome, and on the mucosa
        if mask.any():
            cy = polyp.centre[0] + polyp.velocity[0] * t - oy
            cx = polyp.centre[1] + polyp.velocity[1] * t - ox
            for j in range(1 + int(radius > 20)):
                hy = cy + radius * (0.35 * polyp.light[0] + 0.1 * np.sin(t * 0.3 + j * 2.1))
                hx = cx + radius * (0.35 * polyp.light[1] + 0.1 * np.cos(t * 0.3 + j * 2.1)) + j * 0.25 * radius
                _add_highlight(image, hy, hx, max(0.8, 0.06 * radius), 1.6)
        for sy, sx, sigma in spots:
            _add_highlight(image, sy - MARGIN - oy + np.sin(t + sx), sx - MARGIN - ox + np.cos(t + sy), sigma, 1.5)
        image *= falloff * gain * (1.0 + 0.02 * np.sin(t * 1.3 + gain * 10))
        if blur > 0.3:
            image = np.asarray(
                Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(blur)),
                dtype=np.float32,
            )
        image += rng.normal(0.0, noise_sigma, image.shape).astype(np.float32)
        out_frames[t] = np.clip(np.round(image), 0, 255).astype(np.uint8)
        out_masks[t] = mask
        velocity = 0.85 * velocity + rng.normal(0.0, 0.4, 2)
        position = position + velocity
    return PolypClip(frames=out_frames, masks=out_masks)
