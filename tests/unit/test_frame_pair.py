"""The frame-pair pipeline and the ensemble runner, with fake graphs (no ONNX, no server)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from export.registry import get_spec
from services.codecs.decoded import DecodedImage
from services.contract import Batching, Component, ModelCard, Parity, Weights
from services.errors import BadInput, UnprocessableImage
from services.pipelines.ensemble import run_ensemble
from services.pipelines.base import check_threshold, prepare_rgb_frames
from services.pipelines.frame_pair import pair_labels

SIZE = 32  # a tiny network input keeps the fake graphs cheap


def mast_like_card() -> ModelCard:
    """The registered MAST spec's wiring and preprocessing, on a SIZE x SIZE input."""
    spec = get_spec("mast")
    pre = spec.preprocessing("small")
    pre = type(pre)(**{**pre.__dict__, "size": (SIZE, SIZE)})
    graphs = spec.graphs("small")
    parity = Parity(0.0, 1.0, 0.0, (1, 2), 0)
    inputs, outputs = spec.tensors("small")
    return ModelCard(
        name="mast", display_name="", task="frame_pair", variant="small", version="1", description="",
        inputs=inputs, outputs=outputs, activation="sigmoid", preprocessing=pre, labels=spec.labels,
        batching=Batching(8, 10), weights=Weights("random", "", None), parity=parity, graph_file="", graph_sha256="",
        regions=spec.regions, threshold=0.5,
        components=tuple(Component(g.role, spec.graph_model(g.role), g.inputs, g.outputs, "1/model.onnx", "", parity) for g in graphs),
        ensemble=spec.ensemble,
    )


class FakeGraphs:
    """Encoder: feat maps = the frame's mean; pair head: logits = red channel of the anchor minus
    the reference's stage-4 mean (so the reference matters). Records every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []
        self.frames: dict[int, np.ndarray] = {}

    async def __call__(self, model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch = len(next(iter(inputs.values())))
        self.calls.append((model, batch))
        if model == "mast_encoder":
            frame = inputs["frame"]
            mean = frame.mean(axis=(1, 2, 3))[:, None, None, None]
            feat2 = np.broadcast_to(frame[:, :1], frame[:, :1].shape).copy()  # carries the anchor's red channel
            return {"feat2": feat2, "feat3": mean * np.ones((batch, 1, 2, 2)), "feat4": mean * np.ones((batch, 1, 1, 1))}
        assert model == "mast_pair_head"
        logits = inputs["feat2_a"] - inputs["feat4_r"].mean(axis=(1, 2, 3))[:, None, None, None]
        return {"logits": logits.astype(np.float32)}


def rgb_image(frames: int, rows: int, cols: int, seed: int = 0) -> DecodedImage:
    pixels = (np.random.default_rng(seed).random((frames, rows, cols, 3)) * 255).astype(np.uint8)
    return DecodedImage(pixels, "OT", "png", None, None, None, "RGB")


def test_a_frame_that_is_its_own_reference_is_encoded_once() -> None:
    card, graphs = mast_like_card(), FakeGraphs()
    anchors = prepare_rgb_frames(rgb_image(3, 40, 50), card)
    labels = asyncio.run(pair_labels(anchors, None, card, graphs, 0.5))
    assert labels.shape == (3, 40, 50) and labels.dtype == np.uint8
    assert graphs.calls == [("mast_encoder", 3), ("mast_pair_head", 3)]


def test_a_reference_frame_is_encoded_and_changes_the_answer() -> None:
    card = mast_like_card()
    image = rgb_image(2, 40, 50)
    anchors = prepare_rgb_frames(image, card)
    bright = DecodedImage(np.full((1, 30, 30, 3), 255, np.uint8), "OT", "png", None, None, None, "RGB")
    graphs = FakeGraphs()
    with_reference = asyncio.run(pair_labels(anchors, prepare_rgb_frames(bright, card), card, graphs, 0.5))
    assert [c[0] for c in graphs.calls] == ["mast_encoder", "mast_encoder", "mast_pair_head"]
    assert graphs.calls[1] == ("mast_encoder", 2)  # the reference, repeated per anchor frame
    self_reference = asyncio.run(pair_labels(anchors, None, card, FakeGraphs(), 0.5))
    assert not np.array_equal(with_reference, self_reference)

    two_frames = prepare_rgb_frames(rgb_image(2, 30, 30), card)
    with pytest.raises(UnprocessableImage, match="single frame"):
        asyncio.run(pair_labels(anchors, two_frames, card, FakeGraphs(), 0.5))


def test_threshold_moves_the_mask_monotonically() -> None:
    card = mast_like_card()
    ramp = np.zeros((1, 64, 48, 3), np.uint8)
    ramp[..., 0] = np.linspace(0, 255, 48).astype(np.uint8)  # red rises left to right
    anchors = prepare_rgb_frames(DecodedImage(ramp, "OT", "png", None, None, None, "RGB"), card)
    areas = [int((asyncio.run(pair_labels(anchors, None, card, FakeGraphs(), t)) == 1).sum()) for t in (0.2, 0.5, 0.8)]
    assert areas[0] > areas[1] > areas[2] > 0


def test_threshold_field_validation() -> None:
    assert check_threshold(None, 0.5) == 0.5
    assert check_threshold(0.3, 0.5) == 0.3
    for bad in (0.0, 1.0, -0.1, 2.0):
        with pytest.raises(BadInput):
            check_threshold(bad, 0.5)


def test_ensemble_outputs_and_dedup_by_identity_not_value() -> None:
    card, graphs = mast_like_card(), FakeGraphs()
    frame = np.zeros((1, 3, SIZE, SIZE), np.float32)
    out = asyncio.run(run_ensemble(card, {"anchor": frame, "reference": frame.copy()}, graphs))
    assert set(out) == {"logits"} and out["logits"].shape == (1, 1, SIZE, SIZE)
    # equal values but different arrays are two encoder runs (a reference that happens to match)
    assert [c[0] for c in graphs.calls] == ["mast_encoder", "mast_encoder", "mast_pair_head"]
