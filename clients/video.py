"""The video side of the stream client: read a video's frames, encode each for ``WS /v1/stream``,
write the answers (an overlay video or a folder of label-map PNGs), summarise the latencies.

PyAV (FFmpeg inside its wheel) reads and writes the videos, Pillow encodes the frames sent, and
``services.codecs.render`` draws the overlays and the label-map PNGs the service's HTTP routes draw.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Mapping
from fractions import Fraction
from pathlib import Path
from types import TracebackType

import av
import numpy as np
from PIL import Image

from services.codecs.render import overlay, png_bytes

DEFAULT_FPS = 30.0
# overlay output: container suffix → (codec, FFmpeg options); watchable quality, not lossless
VIDEO_CODECS: dict[str, tuple[str, dict[str, str]]] = {
    ".mp4": ("libx264", {"crf": "18", "preset": "veryfast"}),
    ".mkv": ("libx264", {"crf": "18", "preset": "veryfast"}),
    ".avi": ("mpeg4", {}),  # quality set by qscale below
    ".webm": ("libvpx", {"crf": "8", "b": "20M"}),  # VP8 ignores crf without a bitrate cap
}
PALETTE: tuple[tuple[int, int, int], ...] = (  # default label colours, by id, cycled
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
)


class VideoSource:
    """A video file's first video stream: ``fps`` (average rate, DEFAULT_FPS when unknown),
    ``frame_count`` (from the container, None when it does not say), ``size`` (rows, cols) and
    ``codec``. Iterating decodes the frames from the start as (rows, cols, 3) uint8 RGB arrays and
    closes the file at the end; iterating again reopens it. Use as a context manager or ``close()``
    to close a file left half read."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._container: av.container.InputContainer | None = av.open(str(self.path))
        self._fresh = True  # the open container has not been read yet
        try:
            stream = self._container.streams.video[0]
        except IndexError:
            self.close()
            raise ValueError(f"{self.path.name} has no video stream") from None
        rate = stream.average_rate or stream.guessed_rate
        self.fps: float = float(rate) if rate else DEFAULT_FPS
        self.frame_count: int | None = stream.frames or None
        self.size: tuple[int, int] = (stream.codec_context.height, stream.codec_context.width)
        self.codec: str = stream.codec_context.name

    def __iter__(self) -> Iterator[np.ndarray]:
        if self._container is None or not self._fresh:
            self.close()
            self._container = av.open(str(self.path))
        self._fresh = False
        container = self._container
        try:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                yield frame.to_ndarray(format="rgb24")
        finally:
            container.close()
            if self._container is container:
                self._container = None

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None

    def __enter__(self) -> VideoSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_video(path: Path | str) -> VideoSource:
    """Open a video file (anything FFmpeg reads: MP4, MKV, AVI, WebM...) for reading its frames."""
    return VideoSource(path)


def encode_frame(rgb: np.ndarray, fmt: str = "jpeg", quality: int = 90) -> bytes:
    """A (rows, cols, 3) uint8 RGB frame → JPEG (``quality`` 1-95) or PNG (lossless, zlib level 1
    for speed) bytes: one binary message of the stream."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"a frame must be (rows, cols, 3) uint8 RGB, not {rgb.shape} {rgb.dtype}")
    buffer = io.BytesIO()
    image = Image.fromarray(np.ascontiguousarray(rgb))
    fmt = fmt.lower()
    if fmt in ("jpeg", "jpg"):
        image.save(buffer, format="JPEG", quality=int(quality))
    elif fmt == "png":
        image.save(buffer, format="PNG", compress_level=1)
    else:
        raise ValueError(f"fmt must be 'jpeg' or 'png', not {fmt!r}")
    return buffer.getvalue()


class MaskWriter:
    """Writes a stream's answers to ``out``.

    Video mode (``out`` ends in .mp4, .mkv, .avi or .webm): every frame, in order, at ``fps``, with
    the label ``colours`` ({label id: (r, g, b)}, default PALETTE; ids without a colour are not
    drawn) blended at ``alpha`` where labels are non-zero; a frame without labels (dropped or
    errored) is written plain, so the output keeps the source's frame count. Directory mode (any other ``out``): ``frame_000000.png`` label maps
    (uint8 label ids, the frame's size) for the frames that have labels, nothing for the others.
    ``written``: frames written (video) or PNGs written (directory).
    """

    def __init__(
        self,
        out: Path | str,
        fps: float | Fraction = DEFAULT_FPS,
        colours: Mapping[int, tuple[int, int, int]] | None = None,
        alpha: float = 0.45,
    ) -> None:
        self.out = Path(out)
        self.video = self.out.suffix.lower() in VIDEO_CODECS
        self.fps = fps
        self.colours = dict(colours) if colours is not None else None
        self.alpha = alpha
        self.written = 0
        self._next = 0
        self._container: av.container.OutputContainer | None = None
        self._stream: av.video.stream.VideoStream | None = None
        self._closed = False
        if self.video:
            self.out.parent.mkdir(parents=True, exist_ok=True)
        else:
            self.out.mkdir(parents=True, exist_ok=True)

    def _colours_for(self, labels: np.ndarray) -> dict[int, tuple[int, int, int]]:
        """The colours of the ids present in ``labels`` (overlay costs one pass per colour)."""
        present = np.flatnonzero(np.bincount(labels.ravel(), minlength=1))
        if self.colours is None:
            return {int(i): PALETTE[(int(i) - 1) % len(PALETTE)] for i in present if i}
        return {int(i): self.colours[int(i)] for i in present if int(i) in self.colours}

    def _open_video(self, rows: int, cols: int) -> av.video.stream.VideoStream:
        codec, options = VIDEO_CODECS[self.out.suffix.lower()]
        self._container = av.open(str(self.out), mode="w")
        stream = self._container.add_stream(codec, rate=Fraction(self.fps).limit_denominator(1001))
        stream.width, stream.height = cols, rows
        # x264 needs even sizes for 4:2:0; odd-sized frames keep full chroma instead
        stream.pix_fmt = "yuv444p" if codec == "libx264" and (rows % 2 or cols % 2) else "yuv420p"
        stream.options = dict(options)
        if codec == "mpeg4":
            stream.codec_context.qscale = 3
        self._stream = stream
        return stream

    def write(self, index: int, rgb: np.ndarray, labels: np.ndarray | None) -> None:
        """Frame ``index``'s (rows, cols, 3) uint8 RGB and its (rows, cols) label map, or None when
        the frame has no answer. Video mode takes every index, in order, from 0."""
        if self._closed:
            raise ValueError("the writer is closed")
        rgb = np.asarray(rgb)
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"a frame must be (rows, cols, 3) uint8 RGB, not {rgb.shape} {rgb.dtype}")
        if labels is not None:
            labels = np.asarray(labels)
            if labels.shape != rgb.shape[:2]:
                raise ValueError(f"frame {index}: labels {labels.shape} do not match the frame {rgb.shape[:2]}")
            if labels.dtype != np.uint8:
                if labels.size and (labels.min() < 0 or labels.max() > 255):
                    raise ValueError(f"frame {index}: label ids must be 0-255")
                labels = labels.astype(np.uint8)
        if not self.video:
            if labels is not None:
                (self.out / f"frame_{index:06d}.png").write_bytes(png_bytes(labels))
                self.written += 1
            return
        if index != self._next:
            raise ValueError(f"video mode writes frames in order: expected frame {self._next}, got {index}")
        stream = self._stream or self._open_video(*rgb.shape[:2])
        if rgb.shape[:2] != (stream.height, stream.width):
            raise ValueError(f"frame {index} is {rgb.shape[:2]}, the video is {(stream.height, stream.width)}")
        picture = rgb if labels is None else overlay(rgb, labels, self._colours_for(labels), self.alpha)
        self._container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(picture), format="rgb24")))
        self._next += 1
        self.written += 1

    def close(self) -> None:
        """Flush the encoder and close the video (a no-op in directory mode, and the second time)."""
        if self._closed:
            return
        self._closed = True
        if self._container is not None:
            try:
                self._container.mux(self._stream.encode())
            finally:
                self._container.close()

    def __enter__(self) -> MaskWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def latency_summary(latencies_ms: list[float]) -> dict[str, float | int | None]:
    """count, mean, p50, p95 (linear interpolation) and max of latencies in ms; None figures when empty."""
    if not latencies_ms:
        return {"count": 0, "mean": None, "p50": None, "p95": None, "max": None}
    values = np.asarray(latencies_ms, dtype=np.float64)
    p50, p95 = np.percentile(values, [50, 95])
    return {
        "count": int(values.size),
        "mean": float(values.mean()),
        "p50": float(p50),
        "p95": float(p95),
        "max": float(values.max()),
    }
