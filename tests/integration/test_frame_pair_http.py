"""MAST through a real `bentoml serve`: polyp-clip phantoms posted as PNG frames.

Masks come back in each frame's own grid and reach Dice >= 0.85 with the demo weights, both
with the frame as its own reference (the default) and with frame k + 3 as the reference;
the threshold is applied and reported.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from export.phantoms.polyp import make_polyp_clip

pytestmark = pytest.mark.integration

MIN_DICE = 0.85
SHAPES = ((288, 384), (240, 320), (256, 256))


def png(frame: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="PNG")
    return buffer.getvalue()


def post_frame(client, frame: np.ndarray, reference: np.ndarray | None = None, **fields):
    files = {"file": ("frame.png", png(frame), "image/png")}
    if reference is not None:
        files["reference"] = ("reference.png", png(reference), "image/png")
    return client.post("/v1/segment", files=files, data={"model": "mast", **fields})


def mask_of(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.asarray(Image.open(io.BytesIO(response.content))) == 1


def global_dice(pairs: list[tuple[np.ndarray, np.ndarray]]) -> float:
    inter = sum(float(np.logical_and(p, t).sum()) for p, t in pairs)
    total = sum(float(p.sum() + t.sum()) for p, t in pairs)
    return 2.0 * inter / total


def test_masks_in_the_source_grid_reach_dice_with_and_without_reference(client) -> None:
    own, paired = [], []
    for index, shape in enumerate(SHAPES):
        clip = make_polyp_clip(np.random.default_rng(3001 + index), frames=6, shape=shape)
        for k in (0, 2):
            response = post_frame(client, clip.frames[k])
            assert response.headers["x-medseg-reference"] == "self"
            predicted = mask_of(response)
            assert predicted.shape == shape
            own.append((predicted, clip.masks[k]))
            paired.append((mask_of(post_frame(client, clip.frames[k], clip.frames[k + 3])), clip.masks[k]))
    assert global_dice(own) >= MIN_DICE, f"self-reference Dice {global_dice(own):.3f}"
    assert global_dice(paired) >= MIN_DICE, f"pair Dice {global_dice(paired):.3f}"


def test_threshold_is_applied_and_reported(client) -> None:
    clip = make_polyp_clip(np.random.default_rng(3101), frames=1, shape=(240, 320))
    low, high = (post_frame(client, clip.frames[0], threshold=t) for t in (0.05, 0.95))
    assert mask_of(low).sum() >= mask_of(high).sum()
    body = post_frame(client, clip.frames[0], output="json", threshold=0.3).json()
    assert body["threshold"] == 0.3 and body["reference"] == "self"
    assert body["weights"]["kind"] == "demo"
    assert [entry["name"] for entry in body["labels"]] == ["polyp"]


def test_frame_pair_errors_are_typed(client) -> None:
    clip = make_polyp_clip(np.random.default_rng(3201), frames=1, shape=(240, 320))
    response = post_frame(client, clip.frames[0], threshold=1.5)
    assert response.status_code == 400 and response.json()["error"] == "bad_input"
    bad_reference = client.post(
        "/v1/segment",
        files={"file": ("f.png", png(clip.frames[0]), "image/png"), "reference": ("r.bin", b"not an image", "x")},
        data={"model": "mast"},
    )
    assert bad_reference.status_code == 415 and bad_reference.json()["error"] == "unsupported_media_type"


def test_python_client_sends_reference_and_threshold(service) -> None:
    from clients import MedsegClient

    clip = make_polyp_clip(np.random.default_rng(3301), frames=4, shape=(240, 320))
    with MedsegClient(service.url) as medseg:
        body = medseg.segment_bytes(png(clip.frames[0]), "mast", "json", reference=png(clip.frames[3]), threshold=0.4).json()
    assert body["reference"] == "provided" and body["threshold"] == 0.4
    assert body["input"]["shape"] == [1, 240, 320]
