"""The class-prompted pipeline (task kind ``class_prompted``, SurgicalSAM): every frame is encoded
once, then the requested classes are prompted together; one mask and a predicted IoU per class.

Geometry as Segment Anything: the frame's longest side is resized to the encoder size at the
top-left of a zero-padded square (``prepare_rgb`` with a letterbox card); the decoder's low-res
logits (4h × 4w, a quarter of the encoder input) are upsampled to the encoder input, cropped to the
resized frame and resized to the source grid. Masks are logits above the card's threshold; they
are merged into one label map in ascending predicted-IoU order, so the most confident class wins
where masks overlap (SurgicalSAM's merge).
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from services.codecs.decoded import DecodedImage
from services.contract import ModelCard
from services.errors import BadInput
from services.pipelines.base import (
    DecodeRunner,
    FrameRequest,
    PreparedFrames,
    Segmentation,
    StreamOptions,
    StreamState,
    check_threshold,
    decoded_frames,
    logit_cut,
    prepare_rgb_frames,
)
from services.pipelines.ensemble import GraphRunner, run_ensemble
from services.postprocess import rle_encode
from services.preprocess import Letterbox, upsample_unletterbox


@dataclass(frozen=True)
class ClassMasks:
    """One frame's answer: class ids (K,) as prompted, their masks (K, rows, cols) bool in the
    source grid, predicted IoU (K,), and the merged label map (rows, cols) uint8."""

    class_ids: tuple[int, ...]
    masks: np.ndarray
    predicted_iou: np.ndarray
    labels: np.ndarray


def promptable_classes(card: ModelCard) -> tuple[int, ...]:
    """The ids a client may prompt: every non-background label, ascending."""
    return tuple(sorted(label.id for label in card.labels if label.id != 0))


def parse_classes(value: str | None, card: ModelCard) -> tuple[int, ...] | None:
    """The ``classes`` form field → ascending unique class ids, or None when absent (prompt all).

    Accepts ids and label names (case-insensitive), separated by commas: "1,4" or
    "bipolar forceps, 4". Unknown entries are a 400 listing the valid ids.
    """
    if value is None or not value.strip():
        return None
    valid = promptable_classes(card)
    by_name = {label.name.lower(): label.id for label in card.labels if label.id != 0}
    chosen: set[int] = set()
    for item in (part.strip() for part in re.split(r"[,;]", value)):
        if not item:
            continue
        class_id = int(item) if item.isdigit() else by_name.get(item.lower())
        if class_id not in valid:
            listing = ", ".join(f"{i} ({card.label_by_id(i).name})" for i in valid)
            raise BadInput(f"unknown class {item[:40]!r} in 'classes'; valid classes: {listing}")
        chosen.add(class_id)
    if not chosen:
        raise BadInput("'classes' names no class; leave it out to prompt every class")
    return tuple(sorted(chosen))


def low_res_to_source(low_res_logits: np.ndarray, box: Letterbox) -> np.ndarray:
    """(K, 1, h4, w4) decoder logits → (K, rows, cols) float32 logits in the source grid: upsampled
    to the encoder input, cropped to the resized frame, resized to the source (one composed step)."""
    return upsample_unletterbox(low_res_logits[:, 0], box)


def merge_by_iou(masks: np.ndarray, predicted_iou: np.ndarray, class_ids: tuple[int, ...]) -> np.ndarray:
    """Masks (K, rows, cols) bool → label map (rows, cols) uint8, painted in ascending predicted
    IoU (ties: prompt order), so the highest-IoU class keeps overlapping pixels; unpainted is 0."""
    labels = np.zeros(masks.shape[1:], np.uint8)
    for k in np.argsort(predicted_iou, kind="stable"):
        labels[masks[k]] = class_ids[k]
    return labels


def frame_class_masks(
    low_res_logits: np.ndarray, predicted_iou: np.ndarray, class_ids: tuple[int, ...], box: Letterbox, threshold: float
) -> ClassMasks:
    """One frame's decoder outputs (K, 1, h4, w4) and (K, 1) → :class:`ClassMasks` in the source grid."""
    masks = low_res_to_source(low_res_logits, box) >= logit_cut(threshold)
    iou = predicted_iou[:, 0].astype(np.float32)
    return ClassMasks(class_ids, masks, iou, merge_by_iou(masks, iou, class_ids))


async def prompt_frames(
    frames: PreparedFrames, class_ids: tuple[int, ...], card: ModelCard, run_graph: GraphRunner, threshold: float
) -> list[ClassMasks]:
    """Every frame through the card's ensemble (one call per frame: encoder, then all classes at
    once); the encoder calls of concurrent frames are batched by the inference worker."""
    image_name, classes_name = card.inputs[0].name, card.inputs[1].name
    logits_name, iou_name = card.outputs[0].name, card.outputs[1].name
    ids = np.asarray(class_ids, dtype=np.int64)

    async def one(tensor: np.ndarray) -> dict[str, np.ndarray]:
        return await run_ensemble(card, {image_name: tensor[None], classes_name: ids}, run_graph)

    outputs = await asyncio.gather(*(one(tensor) for tensor in frames.tensors))
    return [
        frame_class_masks(out[logits_name], out[iou_name], class_ids, box, threshold)
        for out, box in zip(outputs, frames.boxes)
    ]


def class_masks_json(results: list[ClassMasks], card: ModelCard) -> list[dict[str, Any]]:
    """Per frame and prompted class: id, name, predicted IoU, pixel count and the class's own
    mask (before the merge) as RLE."""
    entries = []
    for frame, result in enumerate(results):
        for k, class_id in enumerate(result.class_ids):
            mask = result.masks[k]
            entries.append(
                {
                    "frame": frame,
                    "id": class_id,
                    "name": card.label_by_id(class_id).name,
                    "predicted_iou": round(float(result.predicted_iou[k]), 4),
                    "pixels": int(mask.sum()),
                    "rle": {"size": list(mask.shape), "order": "C", "counts": rle_encode(mask)},
                }
            )
    return entries


class ClassPromptedPipeline:
    """Every frame of the upload with the requested ``classes`` prompted (all of them when left
    out), masks cut at ``threshold``; per-class masks and predicted IoU go to the json output.
    A stream keeps its classes; each frame reports per-class predicted IoU and pixel counts."""

    task: ClassVar[str] = "class_prompted"
    fields: ClassVar[frozenset[str]] = frozenset({"classes", "threshold"})

    prepare = staticmethod(prepare_rgb_frames)

    async def stream_frame(
        self, image: DecodedImage, prepared: PreparedFrames, card: ModelCard, run_graph: GraphRunner,
        options: StreamOptions, state: StreamState,
    ) -> Segmentation:
        threshold = options.threshold_for(card)
        class_ids = options.classes or promptable_classes(card)
        (result,) = await prompt_frames(prepared, class_ids, card, run_graph, threshold)
        classes = [
            {"id": class_id, "name": card.label_by_id(class_id).name,
             "predicted_iou": round(float(result.predicted_iou[k]), 4), "pixels": int(result.masks[k].sum())}
            for k, class_id in enumerate(result.class_ids)
        ]
        return Segmentation(image, result.labels[None], card, {"threshold": threshold}, {"classes": classes})

    async def segment(
        self, request: FrameRequest, card: ModelCard, run_graph: GraphRunner, decoding: DecodeRunner
    ) -> Segmentation:
        chosen = parse_classes(request.classes, card)
        threshold = check_threshold(request.threshold, card.threshold)
        image, frames = await decoded_frames(request.data, card, decoding, prepare_rgb_frames)
        class_ids = chosen or promptable_classes(card)
        results = await prompt_frames(frames, class_ids, card, run_graph, threshold)
        details = {
            "prompting": "requested" if chosen else "all",
            "classes": ",".join(str(i) for i in class_ids),
            "threshold": threshold,
        }
        extras = {"class_masks": class_masks_json(results, card)}
        return Segmentation(image, np.stack([r.labels for r in results]), card, details, extras)
