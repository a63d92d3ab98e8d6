"""The frame-pair pipeline (task kind ``frame_pair``, MAST): each frame is segmented against a
reference frame; without one, the frame is its own reference (the paper's test protocol).

The card's first input is the anchor frame, the second the reference; the output is one sigmoid
logit map per region (``card.regions``), painted into a label map in the source grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from services.codecs.decoded import DecodedImage
from services.contract import ModelCard
from services.errors import BadInput, UnprocessableImage
from services.pipelines.ensemble import GraphRunner, run_ensemble
from services.pipelines.image2d import MIN_SIDE
from services.pipelines.volume3d import labels_from_regions
from services.preprocess import Letterbox, prepare_rgb, unletterbox


@dataclass(frozen=True)
class PreparedRgb:
    tensors: np.ndarray  # (frames, 3, S, S) float32 network input
    boxes: tuple[Letterbox, ...]


def prepare_rgb_frames(image: DecodedImage, card: ModelCard) -> PreparedRgb:
    """Decoded frames → normalised RGB network inputs, resized as medseg.json says."""
    if image.rows < MIN_SIDE or image.cols < MIN_SIDE:
        raise UnprocessableImage(f"image is {image.rows}x{image.cols} pixels; at least {MIN_SIDE}x{MIN_SIDE} is needed")
    prepared = [prepare_rgb(frame, image.modality, image.pixel_spacing_mm, card.preprocessing) for frame in image.pixels]
    return PreparedRgb(np.stack([t for t, _ in prepared]), tuple(b for _, b in prepared))


def check_threshold(value: float | None, default: float) -> float:
    """The ``threshold`` form field: a probability strictly between 0 and 1 (absent: ``default``)."""
    if value is None:
        return default
    if not 0.0 < value < 1.0:
        raise BadInput(f"threshold must be strictly between 0 and 1; got {value}")
    return float(value)


async def pair_labels(
    anchors: PreparedRgb, reference: PreparedRgb | None, card: ModelCard, run_graph: GraphRunner, threshold: float
) -> np.ndarray:
    """(frames, rows, cols) uint8 labels of every anchor frame against ``reference`` (its first
    frame) or, without one, against itself."""
    anchor_name, reference_name = card.inputs[0].name, card.inputs[1].name
    if reference is None:
        references = anchors.tensors  # the same array: the ensemble encodes it once
    else:
        if len(reference.tensors) != 1:
            raise UnprocessableImage("the reference must be a single frame")
        references = np.repeat(reference.tensors, len(anchors.tensors), axis=0)
    outputs = await run_ensemble(card, {anchor_name: anchors.tensors, reference_name: references}, run_graph)
    logits = outputs[card.outputs[0].name]
    cut = math.log(threshold / (1.0 - threshold))  # sigmoid(x) >= t  <=>  x >= logit(t)
    return np.stack(
        [labels_from_regions(unletterbox(frame, box) >= cut, card.regions) for frame, box in zip(logits, anchors.boxes)]
    )
