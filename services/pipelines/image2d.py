"""The 2-D slice pipeline (task kind ``image2d``): every frame is one independent slice, letterboxed
to the network input; softmax logits are cut back to the source grid and arg-maxed."""

from __future__ import annotations

from typing import ClassVar

import anyio
import numpy as np

from services.codecs.decoded import DecodedImage
from services.contract import ModelCard
from services.pipelines.base import (
    DecodeRunner,
    FrameRequest,
    PreparedFrames,
    Segmentation,
    StreamOptions,
    StreamState,
    check_min_side,
    decoded_frames,
)
from services.pipelines.ensemble import GraphRunner
from services.postprocess import label_map_from_logits
from services.preprocess import Letterbox, prepare_slice


def prepare_frames(image: DecodedImage, card: ModelCard) -> PreparedFrames:
    """Decoded frames → network inputs, each letterboxed as medseg.json says."""
    check_min_side(image)
    tensors, boxes = [], []
    for frame in image.pixels:
        tensor, box = prepare_slice(frame, image.modality, image.pixel_spacing_mm, card.preprocessing)
        tensors.append(tensor)
        boxes.append(box)
    return PreparedFrames(np.stack(tensors), tuple(boxes))


def labels_from_logits(logits: np.ndarray, boxes: tuple[Letterbox, ...]) -> np.ndarray:
    """(frames, classes, h, w) logits → (frames, rows, cols) uint8 label maps in the source grid."""
    return np.stack([label_map_from_logits(frame_logits, box) for frame_logits, box in zip(logits, boxes)])


class Image2dPipeline:
    """DICOM / PNG / JPEG slices (every frame of a multi-frame image) through one graph."""

    task: ClassVar[str] = "image2d"
    fields: ClassVar[frozenset[str]] = frozenset()

    prepare = staticmethod(prepare_frames)

    async def segment(
        self, request: FrameRequest, card: ModelCard, run_graph: GraphRunner, decoding: DecodeRunner
    ) -> Segmentation:
        image, prepared = await decoded_frames(request.data, card, decoding, prepare_frames)
        return await self._finish(image, prepared, card, run_graph)

    async def stream_frame(
        self, image: DecodedImage, prepared: PreparedFrames, card: ModelCard, run_graph: GraphRunner,
        options: StreamOptions, state: StreamState,
    ) -> Segmentation:
        return await self._finish(image, prepared, card, run_graph)

    @staticmethod
    async def _finish(image: DecodedImage, prepared: PreparedFrames, card: ModelCard, run_graph: GraphRunner) -> Segmentation:
        outputs = await run_graph(card.name, {card.inputs[0].name: prepared.tensors})  # the worker splits rows
        logits = outputs[card.outputs[0].name]
        labels = await anyio.to_thread.run_sync(labels_from_logits, logits, prepared.boxes)
        return Segmentation(image, labels, card)
