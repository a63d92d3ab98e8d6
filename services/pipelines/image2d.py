"""The 2-D slice pipeline (task kind ``image2d``): every frame is one independent slice."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from services.codecs.decoded import DecodedImage
from services.contract import ModelCard
from services.errors import UnprocessableImage
from services.postprocess import label_map_from_logits
from services.preprocess import Letterbox, prepare_slice

# Runs the network on (N, C, H, W) network inputs, returns (N, classes, H, W) logits.
SliceRunner = Callable[[np.ndarray], Awaitable[np.ndarray]]

MIN_SIDE = 8  # pixels; smaller images carry no segmentable anatomy


@dataclass(frozen=True)
class PreparedSlices:
    tensors: np.ndarray  # (frames, channels, rows, cols) float32 network input
    boxes: tuple[Letterbox, ...]  # one per frame


def prepare_frames(image: DecodedImage, card: ModelCard) -> PreparedSlices:
    """Decoded frames → network inputs, each letterboxed as medseg.json says."""
    if image.rows < MIN_SIDE or image.cols < MIN_SIDE:
        raise UnprocessableImage(f"image is {image.rows}x{image.cols} pixels; at least {MIN_SIDE}x{MIN_SIDE} is needed")
    tensors, boxes = [], []
    for frame in image.pixels:
        tensor, box = prepare_slice(frame, image.modality, image.pixel_spacing_mm, card.preprocessing)
        tensors.append(tensor)
        boxes.append(box)
    return PreparedSlices(np.stack(tensors), tuple(boxes))


def labels_from_logits(logits: np.ndarray, boxes: tuple[Letterbox, ...]) -> np.ndarray:
    """(frames, classes, h, w) logits → (frames, rows, cols) uint8 label maps in the source grid."""
    return np.stack([label_map_from_logits(frame_logits, box) for frame_logits, box in zip(logits, boxes)])
