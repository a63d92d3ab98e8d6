"""The /v1/segment use case as plain functions: bytes in, label maps and their encodings out."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import anyio
import numpy as np

from services.codecs import decode
from services.codecs.decoded import DecodedImage
from services.contract import ModelCard
from services.errors import BadInput, UnprocessableImage
from services.pipelines.class_prompted import ClassMasks, parse_classes, promptable_classes, prompt_frames
from services.pipelines.ensemble import GraphRunner
from services.pipelines.frame_pair import check_threshold, pair_labels, prepare_rgb_frames
from services.pipelines.image2d import SliceRunner, labels_from_logits, prepare_frames
from services.postprocess import label_statistics, rle_encode
from services.codecs.render import display_frames, overlay, png_bytes, tile_frames

OUTPUT_KINDS = ("png", "json", "overlay")
# Runs a decoding function of untrusted bytes, ``function(*args)``, away from the event loop and
# within a time budget (DecoderPool.run in the service).
DecodeRunner = Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class Segmentation:
    image: DecodedImage
    labels: np.ndarray  # (frames, rows, cols) uint8, the source pixel grid
    card: ModelCard
    details: dict[str, Any] = field(default_factory=dict)  # task-specific facts reported in json/headers
    extras: dict[str, Any] = field(default_factory=dict)  # task-specific json-only entries (per-class masks)


def check_output_kind(output: str) -> str:
    if output not in OUTPUT_KINDS:
        raise BadInput(f"output must be one of {', '.join(OUTPUT_KINDS)}; got {output[:40]!r}")
    return output


async def segment_upload(
    data: bytes,
    card: ModelCard,
    run_graph: GraphRunner,
    decoding: DecodeRunner,
    reference: bytes | None = None,
    threshold: float | None = None,
    classes: str | None = None,
) -> Segmentation:
    """POST /v1/segment for any 2-D task kind: plain slices, frames against a reference, or
    frames with class prompts."""
    if classes is not None and card.task != "class_prompted":
        raise BadInput(f"'classes' applies to class-prompted models; {card.name!r} is {card.task}")
    if reference is not None and card.task != "frame_pair":
        raise BadInput(f"'reference' applies to frame-pair models; {card.name!r} is {card.task}")
    if card.task == "frame_pair":
        threshold = check_threshold(threshold, card.threshold)
        return await segment_frame_pair(data, reference, card, run_graph, decoding, threshold)
    if card.task == "class_prompted":
        chosen = parse_classes(classes, card)
        threshold = check_threshold(threshold, card.threshold)
        return await segment_class_prompted(data, chosen, card, run_graph, decoding, threshold)
    if threshold is not None:
        raise BadInput(f"'threshold' applies to sigmoid models; {card.name!r} is {card.task}")

    async def run(tensors: np.ndarray) -> np.ndarray:
        outputs = await run_graph(card.name, {card.inputs[0].name: tensors})
        return outputs[card.outputs[0].name]

    return await segment_image(data, card, run, decoding)


async def segment_frame_pair(
    data: bytes, reference: bytes | None, card: ModelCard, run_graph: GraphRunner, decoding: DecodeRunner,
    threshold: float,
) -> Segmentation:
    """Every frame of the upload against the reference upload's frame (or itself when none)."""
    image = await decoding(decode, data)
    anchors = await anyio.to_thread.run_sync(prepare_rgb_frames, image, card)
    prepared_reference = None
    if reference is not None:
        reference_image = await decoding(decode, reference)
        prepared_reference = await anyio.to_thread.run_sync(prepare_rgb_frames, reference_image, card)
    labels = await pair_labels(anchors, prepared_reference, card, run_graph, threshold)
    details = {"threshold": threshold, "reference": "provided" if reference is not None else "self"}
    return Segmentation(image, labels, card, details)


async def segment_class_prompted(
    data: bytes, classes: tuple[int, ...] | None, card: ModelCard, run_graph: GraphRunner, decoding: DecodeRunner,
    threshold: float,
) -> Segmentation:
    """Every frame of the upload with the requested classes prompted (all of them when ``classes``
    is None); per-class masks and predicted IoU go to the json output."""
    image = await decoding(decode, data)
    frames = await anyio.to_thread.run_sync(prepare_rgb_frames, image, card)
    class_ids = classes or promptable_classes(card)
    results = await prompt_frames(frames, class_ids, card, run_graph, threshold)
    details = {
        "prompting": "requested" if classes else "all",
        "classes": ",".join(str(i) for i in class_ids),
        "threshold": threshold,
    }
    extras = {"class_masks": class_masks_json(results, card)}
    return Segmentation(image, np.stack([r.labels for r in results]), card, details, extras)


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


async def segment_image(data: bytes, card: ModelCard, run: SliceRunner, decoding: DecodeRunner) -> Segmentation:
    """Decode an upload (DICOM / PNG / JPEG), run every frame, return label maps in the source grid."""
    if card.task != "image2d":
        raise UnprocessableImage(f"model {card.name!r} ({card.task}) does not take single images; use POST /v1/segment/volume")
    image = await decoding(decode, data)
    prepared = await anyio.to_thread.run_sync(prepare_frames, image, card)
    logits = await run(prepared.tensors)  # every frame in one call: the worker's batcher splits it
    labels = await anyio.to_thread.run_sync(labels_from_logits, logits, prepared.boxes)
    return Segmentation(image, labels, card)


def provenance(card: ModelCard) -> dict[str, Any]:
    """What answered: model, version, variant and weights provenance (first keys of every json answer)."""
    return {"model": card.name, "version": card.version, "variant": card.variant, "weights": asdict(card.weights)}


def segmentation_json(seg: Segmentation) -> dict[str, Any]:
    """The ``json`` output: model, provenance, input geometry and per-label statistics with RLE."""
    image, card = seg.image, seg.card
    label_ids = [label.id for label in card.labels if label.id != 0]
    stats = label_statistics(seg.labels, label_ids, image.pixel_spacing_mm, image.slice_spacing_mm)
    labels = []
    for label_id in label_ids:
        label = card.label_by_id(label_id)
        entry: dict[str, Any] = {"id": label_id, "name": label.name, **stats[label_id]}
        entry["rle"] = [
            {"frame": index, "size": [image.rows, image.cols], "order": "C", "counts": rle_encode(frame == label_id)}
            for index, frame in enumerate(seg.labels)
        ]
        labels.append(entry)
    return {
        **provenance(card),
        "input": {
            "source": image.source,
            "modality": image.modality,
            "shape": [image.frames, image.rows, image.cols],
            "pixel_spacing_mm": list(image.pixel_spacing_mm) if image.pixel_spacing_mm else None,
            "slice_spacing_mm": image.slice_spacing_mm,
        },
        **seg.details,
        "labels": labels,
        **seg.extras,
    }


def segmentation_png(seg: Segmentation) -> bytes:
    """The ``png`` output: uint8 label map (frames stacked top to bottom when multi-frame)."""
    return png_bytes(tile_frames(seg.labels))


def segmentation_overlay(seg: Segmentation) -> bytes:
    """The ``overlay`` output: label colours blended over the windowed source image."""
    window = seg.image.window
    if window is None and seg.image.modality == "CT":
        rule = seg.card.preprocessing.rule_for("CT")
        window = (rule.center, rule.width)
    display = display_frames(seg.image.pixels, window)
    colours = {label.id: label.color for label in seg.card.labels}
    return png_bytes(tile_frames(overlay(display, seg.labels, colours)))


def frame_headers(seg: Segmentation) -> dict[str, str]:
    """Headers that let a client untile a multi-frame PNG."""
    return {
        "X-Medseg-Model": seg.card.name,
        "X-Medseg-Model-Version": seg.card.version,
        "X-Medseg-Frames": str(seg.image.frames),
        "X-Medseg-Rows": str(seg.image.rows),
        "X-Medseg-Columns": str(seg.image.cols),
        **{f"X-Medseg-{key.title()}": str(value) for key, value in seg.details.items()},
    }
