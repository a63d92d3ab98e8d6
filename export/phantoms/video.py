"""Phantom clips as real video files, for stream tests and benchmarks (PyAV, FFmpeg inside its wheel).

``write_mp4`` encodes RGB frames near-losslessly by default: H.264 (libx264) at crf 0 in yuv444p,
so the only loss is the RGB → YUV → RGB rounding (measured on the phantoms: mean |Δ| ≈ 0.4, max 2
grey levels). ``codec="libx264rgb"`` is bit-exact (RGB planes, few players read it); yuv420p, what
cameras and browsers use, halves the chroma resolution (mean |Δ| ≈ 2-3, up to ~50 at sharp colour
edges) and needs even frame sizes.

``polyp_video`` writes a ``make_polyp_clip`` clip (a moving polyp, camera jitter) with its exact
masks. ``surgical_video`` writes a ``surgical_clip``: ``make_surgical_frame`` draws one frame with
random instruments and has no notion of time, so the default clip (``motion="pan"``) is a camera
panning smoothly over one larger phantom frame (the instruments move in the frame, their labels
are the same crop of the exact label map; tissue, instruments and noise are fixed to the scene);
``motion="independent"`` gives unrelated frames, one ``make_surgical_frame`` call each.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from export.phantoms.polyp import make_polyp_clip
from export.phantoms.surgical import make_surgical_frame

CRF_CODECS = frozenset({"libx264", "libx264rgb", "libvpx", "libvpx-vp9"})
QSCALE_CODECS = frozenset({"mpeg4", "mjpeg"})
DEFAULT_PIX_FMT = {"libx264": "yuv444p", "libx264rgb": "rgb24", "mjpeg": "yuvj444p"}  # else yuv420p
PAN_MARGIN = 24  # px of phantom frame around the surgical pan's window


def video_rate(fps: float | Fraction) -> Fraction:
    """A frame rate as the Fraction FFmpeg wants (29.97002997 → 30000/1001)."""
    if fps <= 0:
        raise ValueError(f"fps must be positive, not {fps}")
    return Fraction(fps).limit_denominator(1001)


def write_mp4(
    frames: Iterable[np.ndarray],
    path: Path | str,
    fps: float | Fraction = 30.0,
    codec: str = "libx264",
    crf: int | None = 0,
    pix_fmt: str | None = None,
    preset: str = "medium",
    qscale: int | None = 2,
    options: Mapping[str, str] | None = None,
) -> Path:
    """Encode (rows, cols, 3) uint8 RGB ``frames`` (a sequence or an (N, rows, cols, 3) array) to
    ``path``; the container follows the suffix (.mp4, .mkv, .avi, .webm...).

    ``crf``: constant quality for libx264 / libx264rgb / libvpx(-vp9) (0: lossless in the pixel
    format; None: the codec's default). ``qscale``: fixed quantiser for mpeg4 / mjpeg (1 best,
    31 worst; None: the codec's default bitrate). ``pix_fmt``: None for the codec's near-lossless
    choice (yuv444p for libx264). ``preset``: libx264's speed. ``options``: extra FFmpeg codec
    options (strings). Returns ``path``.
    """
    path = Path(path)
    pix_fmt = pix_fmt or DEFAULT_PIX_FMT.get(codec, "yuv420p")
    codec_options = {}
    if crf is not None and codec in CRF_CODECS:
        codec_options["crf"] = str(int(crf))
        if codec == "libvpx-vp9":
            codec_options["b"] = "0"  # VP9: constant quality, no bitrate cap
        elif codec == "libvpx":
            codec_options["b"] = "50M"  # VP8 ignores crf without a bitrate cap
            codec_options["qmin"] = str(min(int(crf), 4))  # and refuses a crf under qmin (4)
    if codec.startswith("libx264"):
        codec_options["preset"] = preset
    codec_options.update(options or {})
    count = 0
    with av.open(str(path), mode="w") as container:
        stream = None
        for frame in frames:
            frame = np.asarray(frame)
            if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
                raise ValueError(f"frames must be (rows, cols, 3) uint8 RGB, not {frame.shape} {frame.dtype}")
            if stream is None:
                rows, cols = frame.shape[:2]
                if pix_fmt in ("yuv420p", "yuvj420p", "nv12") and (rows % 2 or cols % 2):
                    raise ValueError(f"{pix_fmt} needs even frame sizes, not {rows}x{cols}: use yuv444p")
                stream = container.add_stream(codec, rate=video_rate(fps))
                stream.width, stream.height, stream.pix_fmt = cols, rows, pix_fmt
                stream.options = codec_options
                if qscale is not None and codec in QSCALE_CODECS:
                    stream.codec_context.qscale = int(qscale)
            elif frame.shape[:2] != (stream.height, stream.width):
                raise ValueError(f"frame {count} is {frame.shape[:2]}, the first was {(stream.height, stream.width)}")
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
            count += 1
        if stream is None:
            raise ValueError("no frames to write")
        container.mux(stream.encode())  # flush the encoder's delayed frames
    return path


def polyp_video(
    seed: int,
    frames: int,
    shape: tuple[int, int],
    path: Path | str,
    fps: float = 30.0,
    **encode,
) -> tuple[Path, np.ndarray]:
    """``make_polyp_clip(default_rng(seed), frames, shape)`` written to ``path`` →
    (path, truth masks (frames, rows, cols) bool, True on the polyp). ``encode``: write_mp4's options."""
    clip = make_polyp_clip(np.random.default_rng(seed), frames=frames, shape=shape)
    return write_mp4(clip.frames, path, fps, **encode), clip.masks


def _pan_offsets(rng: np.random.Generator, frames: int, margin: int) -> np.ndarray:
    """(frames, 2) int window offsets in [-margin, margin]: a Lissajous path, at most ~1.5 px per frame."""
    amplitude = margin - 1
    periods = rng.uniform(80, 140, 2)
    phases = rng.uniform(0, 2 * np.pi, 2)
    t = np.arange(frames)[:, None]
    return np.rint(amplitude * np.sin(2 * np.pi * t / periods + phases)).astype(int)


def surgical_clip(
    seed: int, frames: int = 16, shape: tuple[int, int] = (256, 320), motion: str = "pan"
) -> tuple[np.ndarray, np.ndarray]:
    """(rgb (frames, rows, cols, 3) uint8, labels (frames, rows, cols) uint8, 0 background and
    EndoVis2018 ids 1..7), deterministic for ``seed``. ``motion``: "pan" (a camera moving smoothly
    over one phantom frame PAN_MARGIN px larger on each side) or "independent" (unrelated frames)."""
    rng = np.random.default_rng(seed)
    rows, cols = shape
    rgb = np.empty((frames, rows, cols, 3), np.uint8)
    labels = np.empty((frames, rows, cols), np.uint8)
    if motion == "independent":
        for t in range(frames):
            frame = make_surgical_frame(rng, shape)
            rgb[t], labels[t] = frame.rgb, frame.labels
    elif motion == "pan":
        m = PAN_MARGIN
        scene = make_surgical_frame(rng, (rows + 2 * m, cols + 2 * m))
        for t, (dy, dx) in enumerate(_pan_offsets(rng, frames, m)):
            window = (slice(m + dy, m + dy + rows), slice(m + dx, m + dx + cols))
            rgb[t], labels[t] = scene.rgb[window], scene.labels[window]
    else:
        raise ValueError(f"motion must be 'pan' or 'independent', not {motion!r}")
    return rgb, labels


def surgical_video(
    seed: int,
    frames: int,
    shape: tuple[int, int],
    path: Path | str,
    fps: float = 30.0,
    motion: str = "pan",
    **encode,
) -> tuple[Path, np.ndarray]:
    """``surgical_clip(seed, frames, shape, motion)`` written to ``path`` →
    (path, truth label maps (frames, rows, cols) uint8). ``encode``: write_mp4's options."""
    rgb, labels = surgical_clip(seed, frames, shape, motion)
    return write_mp4(rgb, path, fps, **encode), labels
