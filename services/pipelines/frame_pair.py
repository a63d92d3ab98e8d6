"""The frame-pair pipeline (task kind ``frame_pair``, MAST): each frame is segmented against a
reference frame; without one, the frame is its own reference (the paper's test protocol).

The card's first input is the anchor frame, the second the reference; the output is one sigmoid
logit map per region (``card.regions``), painted into a label map in the source grid.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from services.contract import ModelCard
from services.errors import UnprocessableImage
from services.pipelines.base import (
    DecodeRunner,
    FrameRequest,
    PreparedFrames,
    Segmentation,
    check_threshold,
    decoded_frames,
    labels_from_regions,
    logit_cut,
    prepare_rgb_frames,
)
from services.pipelines.ensemble import GraphRunner, run_ensemble
from services.preprocess import unletterbox


async def pair_labels(
    anchors: PreparedFrames, reference: PreparedFrames | None, card: ModelCard, run_graph: GraphRunner, threshold: float
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
    cut = logit_cut(threshold)
    return np.stack(
        [labels_from_regions(unletterbox(frame, box) >= cut, card.regions) for frame, box in zip(logits, anchors.boxes)]
    )


class FramePairPipeline:
    """Every frame of the upload against the ``reference`` upload's frame (or itself when none),
    regions cut at ``threshold`` (default: the card's)."""

    task: ClassVar[str] = "frame_pair"
    fields: ClassVar[frozenset[str]] = frozenset({"reference", "threshold"})

    async def segment(
        self, request: FrameRequest, card: ModelCard, run_graph: GraphRunner, decoding: DecodeRunner
    ) -> Segmentation:
        threshold = check_threshold(request.threshold, card.threshold)
        image, anchors = await decoded_frames(request.data, card, decoding, prepare_rgb_frames)
        prepared_reference = None
        if request.reference is not None:
            _, prepared_reference = await decoded_frames(request.reference, card, decoding, prepare_rgb_frames)
        labels = await pair_labels(anchors, prepared_reference, card, run_graph, threshold)
        details = {"threshold": threshold, "reference": "provided" if request.reference is not None else "self"}
        return Segmentation(image, labels, card, details)
