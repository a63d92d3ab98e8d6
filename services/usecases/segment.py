"""The /v1/segment use case as plain functions: bytes in, label maps and their encodings out."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from services.codecs.dicom import read_dataset
from services.codecs.render import display_frames, overlay, png_bytes, tile_frames
from services.codecs.seg import build_segmentation, segmentation_bytes
from services.contract import ModelCard
from services.errors import BadInput, UnprocessableImage, UnsupportedMediaType
from services.pipelines import FRAME_PIPELINES
from services.pipelines.base import DecodeRunner, FrameRequest, Segmentation, check_fields
from services.pipelines.ensemble import GraphRunner
from services.postprocess import label_statistics, rle_encode

OUTPUT_KINDS = ("png", "json", "overlay", "seg")


def check_output_kind(output: str) -> str:
    if output not in OUTPUT_KINDS:
        raise BadInput(f"output must be one of {', '.join(OUTPUT_KINDS)}; got {output[:40]!r}")
    return output


async def segment_upload(
    request: FrameRequest, card: ModelCard, run_graph: GraphRunner, decoding: DecodeRunner
) -> Segmentation:
    """POST /v1/segment: the card's task kind's pipeline (``services.pipelines``) on the upload;
    400 for optional fields that pipeline does not take, 422 for a model without a 2-D pipeline."""
    pipeline = FRAME_PIPELINES.get(card.task)
    check_fields(request, card, pipeline.fields if pipeline else frozenset())
    if pipeline is None:
        raise UnprocessableImage(f"model {card.name!r} ({card.task}) does not take single images; use POST /v1/segment/volume")
    return await pipeline.segment(request, card, run_graph, decoding)


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


def segmentation_dicom(seg: Segmentation, upload: bytes) -> bytes:
    """The ``seg`` output: a DICOM Segmentation of the uploaded instance (single- or multi-frame),
    one segment per label of the card, in the upload's study."""
    if seg.image.source != "dicom":
        raise UnsupportedMediaType("output=seg needs a DICOM upload (the SEG references its source instance)")
    header = read_dataset(upload, stop_before_pixels=True)
    return segmentation_bytes(build_segmentation([header], seg.labels, seg.card))


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
