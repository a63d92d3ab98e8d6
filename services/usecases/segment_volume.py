"""The /v1/segment/volume use case as plain functions: NIfTI uploads in, a label volume out."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import anyio
import numpy as np

from services.codecs.nifti import NiftiVolume, read_nifti, split_channels, stack_channels
from services.contract import ModelCard
from services.errors import BadInput, UnprocessableImage
from services.pipelines.base import MIN_SIDE, DecodeRunner, labels_from_regions
from services.pipelines.volume3d import PatchRunner, sliding_window_async, zscore_over_foreground
from services.usecases.segment import provenance

VOLUME_OUTPUT_KINDS = ("nifti", "json")
SINGLE_FILE_FIELD = "file"


@dataclass(frozen=True)
class VolumeSegmentation:
    """``labels`` (X, Y, Z) uint8 in the reference volume's grid and affine."""

    labels: np.ndarray
    reference: NiftiVolume
    card: ModelCard


def check_volume_output(output: str) -> str:
    if output not in VOLUME_OUTPUT_KINDS:
        raise BadInput(f"output must be one of {', '.join(VOLUME_OUTPUT_KINDS)}; got {output[:40]!r}")
    return output


def check_volume_model(card: ModelCard) -> None:
    if card.sliding_window is None:  # the card of a volume model carries its 3-D window
        raise UnprocessableImage(f"model {card.name!r} ({card.task}) does not take volumes; use POST /v1/segment")


def channels_from_uploads(uploads: dict[str, bytes], card: ModelCard, max_bytes: int) -> tuple[np.ndarray, NiftiVolume]:
    """Form files → ((C, X, Y, Z) float32 in the card's channel order, the reference volume).

    Either one file per channel name (``t1``, ``t1ce``, ...) or one 4-D file in ``file``;
    400 when fields are missing or both ways are mixed, 422 when the grids disagree.
    """
    names = card.channel_names
    given = [name for name in names if name in uploads]
    if SINGLE_FILE_FIELD in uploads:
        if given:
            raise BadInput(f"send either one 4-D NIfTI in 'file' or the files {', '.join(names)}, not both")
        volume = read_nifti(uploads[SINGLE_FILE_FIELD], max_bytes)
        channels, reference = split_channels(volume, names), volume
    else:
        missing = [name for name in names if name not in uploads]
        if missing:
            raise BadInput(
                f"missing NIfTI file field(s) {', '.join(missing)}; send {', '.join(names)} "
                "(co-registered 3-D volumes) or one 4-D volume in 'file'"
            )
        channels, reference = stack_channels({name: read_nifti(uploads[name], max_bytes) for name in names})
    if min(channels.shape[1:]) < MIN_SIDE:
        raise UnprocessableImage(f"volume shape {list(channels.shape[1:])} is too small (minimum {MIN_SIDE} per axis)")
    return channels, reference


async def segment_volume_uploads(
    uploads: dict[str, bytes], card: ModelCard, run: PatchRunner, decoding: DecodeRunner, max_bytes: int,
    parallel_batches: int,
) -> VolumeSegmentation:
    """Decode, z-score, sliding-window inference, threshold and paint the labels (``card.regions``)."""
    check_volume_model(card)
    assert card.sliding_window is not None
    channels, reference = await decoding(channels_from_uploads, uploads, card, max_bytes)
    labels = await segment_channels(channels, card, run, parallel_batches)
    return VolumeSegmentation(labels, reference, card)


async def segment_channels(channels: np.ndarray, card: ModelCard, run: PatchRunner, parallel_batches: int) -> np.ndarray:
    """(C, X, Y, Z) co-registered channels in the card's order → (X, Y, Z) uint8 labels: z-score,
    sliding-window inference, threshold and paint the labels (``card.regions``)."""
    check_volume_model(card)
    assert card.sliding_window is not None
    if channels.shape[0] != card.preprocessing.channels:
        raise UnprocessableImage(f"model {card.name!r} takes {card.preprocessing.channels} channels")
    normalised = await anyio.to_thread.run_sync(zscore_over_foreground, channels)
    probabilities = await sliding_window_async(normalised, run, card.sliding_window, parallel_batches)
    return labels_from_regions(probabilities >= card.threshold, card.regions)


def volume_json(seg: VolumeSegmentation) -> dict[str, Any]:
    """The ``json`` output: provenance, geometry, and voxel counts / volumes (mL) per label and region."""
    card, labels = seg.card, seg.labels
    voxel_ml = float(np.prod(seg.reference.voxel_mm)) / 1000.0
    counts = {int(value): int(count) for value, count in zip(*np.unique(labels, return_counts=True))}
    return {
        **provenance(card),
        "input": {
            "shape": list(labels.shape),
            "voxel_mm": list(seg.reference.voxel_mm),
            "affine": np.round(seg.reference.affine, 6).tolist(),
            "channels": list(card.channel_names),
        },
        "threshold": card.threshold,
        "sliding_window": asdict(card.sliding_window) if card.sliding_window else None,
        "labels": [
            {"id": label.id, "name": label.name, "voxels": counts.get(label.id, 0), "volume_ml": counts.get(label.id, 0) * voxel_ml}
            for label in card.labels
            if label.id != 0
        ],
        "regions": [
            {
                "name": region.name,
                "labels": list(region.labels),
                "voxels": sum(counts.get(i, 0) for i in region.labels),
                "volume_ml": sum(counts.get(i, 0) for i in region.labels) * voxel_ml,
            }
            for region in card.regions
        ],
    }
