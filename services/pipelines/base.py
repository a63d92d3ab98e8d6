"""What the pipelines share: the request a 2-D pipeline takes, the answer it gives, the operator
protocol each task kind implements, and the steps more than one of them uses.

A task kind's pipeline (``image2d``, ``frame_pair``, ``class_prompted``) declares the optional
form fields it takes and runs prepare / run / finish for one upload; ``services.pipelines``
keys them by task kind, so no use case branches on it.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import anyio
import numpy as np

from services.codecs import decode
from services.codecs.decoded import DecodedImage
from services.contract import ModelCard, Region
from services.errors import BadInput, UnprocessableImage
from services.pipelines.ensemble import GraphRunner
from services.preprocess import Letterbox, prepare_rgb

# Runs a decoding function of untrusted bytes, ``function(*args)``, away from the event loop and
# within a time budget (DecoderPool.run in the service).
DecodeRunner = Callable[..., Awaitable[Any]]

MIN_SIDE = 8  # pixels (voxels for volumes); smaller inputs carry no segmentable anatomy

# The optional form fields of POST /v1/segment, and the models each applies to (for the 400).
OPTIONAL_FIELDS = {"classes": "class-prompted models", "reference": "frame-pair models", "threshold": "sigmoid models"}


@dataclass(frozen=True)
class FrameRequest:
    """POST /v1/segment after form parsing: the upload and the optional fields (None: not sent)."""

    data: bytes
    reference: bytes | None = None
    threshold: float | None = None
    classes: str | None = None


@dataclass(frozen=True)
class Segmentation:
    image: DecodedImage
    labels: np.ndarray  # (frames, rows, cols) uint8, the source pixel grid
    card: ModelCard
    details: dict[str, Any] = field(default_factory=dict)  # task-specific facts reported in json/headers
    extras: dict[str, Any] = field(default_factory=dict)  # task-specific json-only entries (per-class masks)


@dataclass(frozen=True)
class StreamOptions:
    """A video stream's validated settings (its handshake): sigmoid ``threshold``, prompted
    ``classes`` (None: all), and the frame-pair ``reference`` mode: "first", "previous" or N
    (refreshed every N frames); None where the model takes no such field."""

    threshold: float | None = None
    classes: tuple[int, ...] | None = None
    reference: str | int | None = None

    def threshold_for(self, card: ModelCard) -> float:
        """The stream's threshold, or the card's when the handshake left it out."""
        return self.threshold if self.threshold is not None else card.threshold


@dataclass
class StreamState:
    """What one stream keeps between its frames; its pipeline updates it."""

    index: int = 0  # arrival number of the frame being segmented
    reference_features: dict[str, np.ndarray] | None = None  # frame-pair: the reference's encoder outputs
    reference_index: int | None = None  # the frame they come from


class FramePipeline(Protocol):
    """One task kind's operator for POST /v1/segment and for video streams."""

    task: ClassVar[str]
    fields: ClassVar[frozenset[str]]  # the OPTIONAL_FIELDS it takes

    def prepare(self, image: DecodedImage, card: ModelCard) -> PreparedFrames:
        """Decoded frames → network inputs."""
        ...

    async def segment(
        self, request: FrameRequest, card: ModelCard, run_graph: GraphRunner, decoding: DecodeRunner
    ) -> Segmentation:
        """Validate the request's fields, decode, prepare, run the card's graphs, finish."""
        ...

    async def stream_frame(
        self, image: DecodedImage, prepared: PreparedFrames, card: ModelCard, run_graph: GraphRunner,
        options: StreamOptions, state: StreamState,
    ) -> Segmentation:
        """One decoded, prepared frame of a stream, with the stream's state (kept features)."""
        ...


def check_fields(request: FrameRequest, card: ModelCard, fields: frozenset[str]) -> None:
    """400 for an optional field sent to a model whose pipeline does not take it."""
    for name, models in OPTIONAL_FIELDS.items():
        if getattr(request, name) is not None and name not in fields:
            raise BadInput(f"'{name}' applies to {models}; {card.name!r} is {card.task}")


def check_min_side(image: DecodedImage) -> None:
    if image.rows < MIN_SIDE or image.cols < MIN_SIDE:
        raise UnprocessableImage(f"image is {image.rows}x{image.cols} pixels; at least {MIN_SIDE}x{MIN_SIDE} is needed")


@dataclass(frozen=True)
class PreparedFrames:
    tensors: np.ndarray  # (frames, channels, rows, cols) float32 network input
    boxes: tuple[Letterbox, ...]  # one per frame


def prepare_rgb_frames(image: DecodedImage, card: ModelCard) -> PreparedFrames:
    """Decoded frames → normalised RGB network inputs, resized as medseg.json says."""
    check_min_side(image)
    prepared = [prepare_rgb(frame, image.modality, image.pixel_spacing_mm, card.preprocessing) for frame in image.pixels]
    return PreparedFrames(np.stack([t for t, _ in prepared]), tuple(b for _, b in prepared))


async def decoded_frames(
    data: bytes, card: ModelCard, decoding: DecodeRunner, prepare: Callable[[DecodedImage, ModelCard], PreparedFrames]
) -> tuple[DecodedImage, PreparedFrames]:
    """An upload decoded by ``decoding`` (the decoder pool), then its frames made network inputs
    by ``prepare`` off the event loop."""
    image = await decoding(decode, data)
    return image, await anyio.to_thread.run_sync(prepare, image, card)


def check_threshold(value: float | None, default: float) -> float:
    """The ``threshold`` form field: a probability strictly between 0 and 1 (absent: ``default``)."""
    if value is None:
        return default
    if not 0.0 < value < 1.0:
        raise BadInput(f"threshold must be strictly between 0 and 1; got {value}")
    return float(value)


def logit_cut(threshold: float) -> float:
    """The logit at which a sigmoid reaches ``threshold``: sigmoid(x) >= t  <=>  x >= logit(t)."""
    return math.log(threshold / (1.0 - threshold))


def labels_from_regions(masks: np.ndarray, regions: tuple[Region, ...]) -> np.ndarray:
    """(K, ...) boolean region masks → uint8 label map, painting ``regions`` in order.

    Regions are listed outermost first (BraTS: WT → 2, TC → 1, ET → 4), so each inner region
    overwrites the outer one: ET → 4, TC∖ET → 1, WT∖TC → 2.
    """
    labels = np.zeros(masks.shape[1:], dtype=np.uint8)
    for region in regions:
        labels[masks[region.channel]] = region.paint_label
    return labels
