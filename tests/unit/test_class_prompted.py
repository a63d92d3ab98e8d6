"""The class-prompted pipeline (SurgicalSAM): class parsing, SAM geometry, merge by predicted IoU
and the per-frame ensemble calls, with fake graphs (no ONNX, no server)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from export.registry import get_spec
from services.codecs.decoded import DecodedImage
from services.contract import Batching, Component, ModelCard, Parity, Weights
from services.errors import BadInput
from services.pipelines.class_prompted import (
    frame_class_masks,
    low_res_to_source,
    merge_by_iou,
    parse_classes,
    prompt_frames,
    promptable_classes,
)
from services.pipelines.base import prepare_rgb_frames
from services.preprocess import plan_letterbox, prepare_rgb

SIZE = 64  # encoder input of the fake model; low-res logits are SIZE / 4


def surgical_like_card() -> ModelCard:
    """The registered SurgicalSAM spec's wiring, labels and preprocessing, on a SIZE x SIZE input."""
    spec = get_spec("surgical_sam")
    pre = spec.preprocessing("small")
    pre = type(pre)(**{**pre.__dict__, "size": (SIZE, SIZE)})
    parity = Parity(0.0, 1.0, 0.0, (1, 2), 0)
    inputs, outputs = spec.tensors("small")
    components = tuple(
        Component(g.role, spec.graph_model(g.role), g.inputs, g.outputs, "1/model.onnx", "", parity, g.batched)
        for g in spec.graphs("small")
    )
    return ModelCard(
        name="surgical_sam", display_name="", task="class_prompted", variant="small", version="1", description="",
        inputs=inputs, outputs=outputs, activation="sigmoid", preprocessing=pre, labels=spec.labels,
        batching=Batching(4, 10), weights=Weights("random", "", None), parity=parity, graph_file="", graph_sha256="",
        threshold=0.5, components=components, ensemble=spec.ensemble,
    )


CARD = surgical_like_card()


def test_the_card_says_which_graph_takes_whole_calls() -> None:
    assert CARD.unbatched_graphs() == {"surgical_sam_prompt_decoder"} and not CARD.batched
    assert [t.name for t in CARD.inputs] == ["image", "class_ids"] and CARD.inputs[0].shape[0] == 1
    assert promptable_classes(CARD) == (1, 2, 3, 4, 5, 6, 7)


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        (None, None),
        ("", None),
        ("3", (3,)),
        ("5, 1,5", (1, 5)),
        ("Bipolar Forceps;7", (1, 7)),
        ("monopolar curved scissors", (4,)),
    ],
)
def test_classes_field_accepts_ids_and_names(field: str | None, expected: tuple[int, ...] | None) -> None:
    assert parse_classes(field, CARD) == expected


@pytest.mark.parametrize("field", ["0", "8", "scalpel", "1,-2", ",", "1.5"])
def test_unknown_classes_are_a_bad_request_listing_the_valid_ones(field: str) -> None:
    with pytest.raises(BadInput) as error:
        parse_classes(field, CARD)
    assert error.value.status == 400
    if field != ",":
        assert "1 (bipolar forceps)" in str(error.value) and "7 (clip applier)" in str(error.value)


def test_low_res_logits_map_back_like_sam_postprocess() -> None:
    """Upsample to the encoder input, crop to the resized frame, resize to the frame: the same
    numbers as Segment Anything's torch postprocessing (F.interpolate, align_corners=False)."""
    rng = np.random.default_rng(0)
    box = plan_letterbox((48, 80), (SIZE, SIZE), None, "letterbox")
    assert box.scaled == (38, 64)  # 48 * 0.8 = 38.4 rounds down, 80 * 0.8 = 64
    low_res = rng.normal(size=(3, 1, SIZE // 4, SIZE // 4)).astype(np.float32)
    got = low_res_to_source(low_res, box)
    t = F.interpolate(torch.from_numpy(low_res), size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    t = F.interpolate(t[..., :38, :64], size=(48, 80), mode="bilinear", align_corners=False)[:, 0].numpy()
    assert got.shape == (3, 48, 80)
    np.testing.assert_allclose(got, t, atol=1e-4)


def test_merge_paints_in_ascending_predicted_iou() -> None:
    masks = np.zeros((3, 4, 4), bool)
    masks[0, :2] = True  # class 2, rows 0-1
    masks[1, 1:3] = True  # class 5, rows 1-2 (overlaps class 2 on row 1)
    masks[2, 3, 3] = True  # class 7, one pixel
    labels = merge_by_iou(masks, np.array([0.9, 0.4, 0.1], np.float32), (2, 5, 7))
    assert labels[1].tolist() == [2, 2, 2, 2], "the higher predicted IoU keeps the overlap"
    assert labels[2].tolist() == [5, 5, 5, 5] and labels[3].tolist() == [0, 0, 0, 7]
    labels = merge_by_iou(masks, np.array([0.2, 0.4, 0.1], np.float32), (2, 5, 7))
    assert labels[1].tolist() == [5, 5, 5, 5]


def test_threshold_is_applied_on_the_sigmoid() -> None:
    box = plan_letterbox((SIZE, SIZE), (SIZE, SIZE), None, "letterbox")
    low_res = np.full((1, 1, SIZE // 4, SIZE // 4), 0.5, np.float32)  # sigmoid(0.5) = 0.62
    assert frame_class_masks(low_res, np.ones((1, 1), np.float32), (3,), box, 0.6).masks.all()
    assert not frame_class_masks(low_res, np.ones((1, 1), np.float32), (3,), box, 0.7).masks.any()


class FakeSam:
    """Encoder: embedding = the image's per-channel means; prompt stage: class k lights the
    quadrant k mod 4 of the low-res map, predicted IoU = k / 10. Records every call's shapes."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, tuple[tuple[int, ...], str]]]] = []

    async def __call__(self, model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls.append((model, {k: (v.shape, v.dtype.name) for k, v in inputs.items()}))
        if model == "surgical_sam_image_encoder":
            means = inputs["image"].mean(axis=(2, 3))
            return {"image_embedding": np.broadcast_to(means[:, :1, None, None], (len(means), 256, 4, 4)).copy()}
        assert model == "surgical_sam_prompt_decoder"
        ids = inputs["class_ids"]
        side = SIZE // 4
        logits = np.full((len(ids), 1, side, side), -5.0, np.float32)
        for k, class_id in enumerate(ids):
            q = int(class_id) % 4
            logits[k, 0, (q // 2) * side // 2 : (q // 2 + 1) * side // 2, (q % 2) * side // 2 : (q % 2 + 1) * side // 2] = 5.0
        return {"low_res_logits": logits, "iou": (ids[:, None] / 10).astype(np.float32)}


def rgb_image(frames: int, rows: int, cols: int) -> DecodedImage:
    pixels = (np.random.default_rng(1).random((frames, rows, cols, 3)) * 255).astype(np.uint8)
    return DecodedImage(pixels, "OT", "png", None, None, None, "RGB")


def test_each_frame_is_encoded_once_and_all_classes_go_in_one_prompt_call() -> None:
    graphs = FakeSam()
    frames = prepare_rgb_frames(rgb_image(3, SIZE, SIZE), CARD)
    results = asyncio.run(prompt_frames(frames, (1, 2, 6), CARD, graphs, 0.5))
    encoder_calls = [shapes for model, shapes in graphs.calls if model == "surgical_sam_image_encoder"]
    prompt_calls = [shapes for model, shapes in graphs.calls if model == "surgical_sam_prompt_decoder"]
    assert len(encoder_calls) == 3 and all(c["image"][0] == (1, 3, SIZE, SIZE) for c in encoder_calls)
    assert len(prompt_calls) == 3
    assert all(c["class_ids"] == ((3,), "int64") and c["image_embedding"][0][0] == 1 for c in prompt_calls)
    half, m = SIZE // 2, 2  # quadrant interiors; bilinear upsampling softens the borders
    for result in results:
        assert result.class_ids == (1, 2, 6) and result.masks.shape == (3, SIZE, SIZE)
        np.testing.assert_allclose(result.predicted_iou, [0.1, 0.2, 0.6], rtol=1e-6)
        # classes 2 and 6 both light quadrant 2 (bottom-left); 6 has the higher IoU and wins
        assert (result.labels[m : half - m, half + m : -m] == 1).all()
        assert (result.labels[half + m : -m, m : half - m] == 6).all()
        assert (result.labels[m : half - m, m : half - m] == 0).all()


def test_sam_preprocessing_pads_with_zero_after_normalising() -> None:
    rgb = np.full((30, 60, 3), 200, np.uint8)
    image, box = prepare_rgb(rgb, "default", None, CARD.preprocessing)
    assert box.scaled == (32, 64) and image.shape == (3, SIZE, SIZE)
    mean, std = np.array(CARD.preprocessing.mean), np.array(CARD.preprocessing.std)
    np.testing.assert_allclose(image[:, 0, 0], (200 / 255 - mean) / std, rtol=1e-5)
    assert (image[:, 32:] == 0).all()
