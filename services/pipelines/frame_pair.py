"""The frame-pair pipeline (task kind ``frame_pair``, MAST): each frame is segmented against a
reference frame; without one, the frame is its own reference (the paper's test protocol).

The card's first input is the anchor frame, the second the reference; the output is one sigmoid
logit map per region (``card.regions``), painted into a label map in the source grid.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from services.codecs.decoded import DecodedImage
from services.contract import ModelCard
from services.errors import UnprocessableImage
from services.pipelines.base import (
    DecodeRunner,
    FrameRequest,
    PreparedFrames,
    Segmentation,
    StreamOptions,
    StreamState,
    check_threshold,
    decoded_frames,
    labels_from_regions,
    logit_cut,
    prepare_rgb_frames,
)
from services.pipelines.ensemble import GraphRunner, run_ensemble, run_ensemble_tensors
from services.preprocess import Letterbox, unletterbox


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
    return labels_from_pair_logits(outputs[card.outputs[0].name], anchors.boxes, card, threshold)


def labels_from_pair_logits(logits: np.ndarray, boxes: tuple[Letterbox, ...], card: ModelCard, threshold: float) -> np.ndarray:
    """(frames, regions, h, w) logits → (frames, rows, cols) uint8 labels in the source grid."""
    cut = logit_cut(threshold)
    return np.stack([labels_from_regions(unletterbox(frame, box) >= cut, card.regions) for frame, box in zip(logits, boxes)])


def reference_features(card: ModelCard, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """From the ensemble tensors of one anchor frame: what the reference steps would compute for
    that frame (MAST: the encoder's feat4 as ``feat4_r``), so it can serve as a later frame's
    reference without a second encoder pass."""
    anchor_name, reference_name = card.inputs[0].name, card.inputs[1].name
    features = {}
    for step in card.ensemble:
        if reference_name not in step.input_map.values():
            continue
        twin = next(
            s for s in card.ensemble if s.role == step.role and anchor_name in s.input_map.values()
        )  # the same graph on the anchor
        for graph_output, outer in step.output_map.items():
            features[outer] = tensors[twin.output_map[graph_output]]
    return features


def uses_own_reference(options: StreamOptions, state: StreamState) -> bool:
    """Whether this stream frame is its own reference (and the next frames' reference source):
    the stream's first frame, and with a refresh period N, every N-th frame after the last one."""
    if state.reference_features is None or state.reference_index is None:
        return True
    return isinstance(options.reference, int) and state.index - state.reference_index >= options.reference


class FramePairPipeline:
    """Every frame of the upload against the ``reference`` upload's frame (or itself when none),
    regions cut at ``threshold`` (default: the card's). In a stream the reference is the first
    frame, the previous one, or refreshed every N frames, and its encoder features are kept: one
    encoder pass per frame."""

    task: ClassVar[str] = "frame_pair"
    fields: ClassVar[frozenset[str]] = frozenset({"reference", "threshold"})

    prepare = staticmethod(prepare_rgb_frames)

    async def stream_frame(
        self, image: DecodedImage, prepared: PreparedFrames, card: ModelCard, run_graph: GraphRunner,
        options: StreamOptions, state: StreamState,
    ) -> Segmentation:
        threshold = options.threshold_for(card)
        own = uses_own_reference(options, state)
        frame = prepared.tensors  # (1, 3, h, w): also its own reference input (encoded once)
        inputs = {card.inputs[0].name: frame, card.inputs[1].name: frame}
        tensors = await run_ensemble_tensors(card, inputs, run_graph, None if own else state.reference_features)
        reference_index = state.index if own else state.reference_index
        if own or options.reference == "previous":
            state.reference_features, state.reference_index = reference_features(card, tensors), state.index
        labels = labels_from_pair_logits(tensors[card.outputs[0].name], prepared.boxes, card, threshold)
        return Segmentation(image, labels, card, {"threshold": threshold, "reference_frame": reference_index})

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
