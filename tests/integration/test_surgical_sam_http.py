"""SurgicalSAM through a real `bentoml serve`: procedural endoscopic frames posted as PNG.

With the present classes prompted (the paper's protocol) the merged label maps reach a mean IoU
over (frame, present class) pairs of at least 0.80 with the demo weights, in each frame's own
grid. Without ``classes`` all 7 classes are prompted and the answer says so; the json output
carries each prompted class's own mask and predicted IoU; bad prompts get typed 400s.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from clients.http_client import MedsegClient
from export.phantoms.surgical import make_surgical_frame
from services.postprocess import rle_decode

pytestmark = pytest.mark.integration

MIN_MEAN_IOU = 0.80
# The demo weights were trained on 256x320 phantom frames (the EndoVis 1024x1280 aspect ratio,
# scaled down); the quality threshold is checked there. Phantoms rendered at other sizes look
# different once resized (less blur and noise per pixel), so those only check the geometry.
QUALITY_SHAPE = (256, 320)
# As many frames as the training record's held-out set: ~200 (frame, class) pairs, a standard error
# near 0.015 (40 frames gave 0.798 against 0.814 for 100 with the same weights).
QUALITY_FRAMES = 100
OTHER_SHAPES = ((512, 640), (300, 300), (240, 427), (97, 61))  # 2x EndoVis, square, 16:9, portrait


def png(frame: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="PNG")
    return buffer.getvalue()


def post_frame(client, rgb: np.ndarray, **fields):
    return client.post(
        "/v1/segment", files={"file": ("frame.png", png(rgb), "image/png")}, data={"model": "surgical_sam", **fields}
    )


def labels_of(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.asarray(Image.open(io.BytesIO(response.content)))


def test_present_classes_prompted_reach_mean_iou_in_the_source_grid(client) -> None:
    ious = []
    for index in range(QUALITY_FRAMES):
        shape = QUALITY_SHAPE
        frame = make_surgical_frame(np.random.default_rng([4001, index]), shape)
        present = sorted(int(c) for c in np.unique(frame.labels) if c)
        response = post_frame(client, frame.rgb, classes=",".join(map(str, present)))
        assert response.headers["x-medseg-prompting"] == "requested"
        assert response.headers["x-medseg-classes"] == ",".join(map(str, present))
        predicted = labels_of(response)
        assert predicted.shape == shape and set(np.unique(predicted)) <= {0, *present}
        for c in present:
            p, t = predicted == c, frame.labels == c
            ious.append(float((p & t).sum() / (p | t).sum()))
    assert np.mean(ious) >= MIN_MEAN_IOU, f"mean IoU {np.mean(ious):.3f} over {len(ious)} (frame, class) pairs"


@pytest.mark.parametrize("shape", OTHER_SHAPES)
def test_other_frame_shapes_come_back_in_their_own_grid(client, shape: tuple[int, int]) -> None:
    frame = make_surgical_frame(np.random.default_rng([4051, shape[0]]), shape)
    predicted = labels_of(post_frame(client, frame.rgb))
    assert predicted.shape == shape and predicted.dtype == np.uint8 and predicted.max() <= 7


def test_without_classes_all_seven_are_prompted_and_json_has_each_class_mask(client) -> None:
    frame = make_surgical_frame(np.random.default_rng([4101, 0]), (256, 320))
    response = post_frame(client, frame.rgb, output="json")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "surgical_sam" and body["weights"]["kind"] == "demo"
    assert body["prompting"] == "all" and body["classes"] == "1,2,3,4,5,6,7" and body["threshold"] == 0.5
    entries = body["class_masks"]
    assert [e["id"] for e in entries] == [1, 2, 3, 4, 5, 6, 7] and all(e["frame"] == 0 for e in entries)
    assert entries[0]["name"] == "bipolar forceps"
    merged = labels_of(post_frame(client, frame.rgb))
    for entry in entries:
        assert 0.0 <= entry["predicted_iou"] <= 1.5  # a regression head: about 0..1
        mask = rle_decode(entry["rle"]["counts"], tuple(entry["rle"]["size"]))
        assert mask.shape == (256, 320) and int(mask.sum()) == entry["pixels"]
        assert ((merged == entry["id"]) <= mask).all(), "the merged map paints a class only inside its own mask"
    # merge rule: where two class masks overlap, the higher predicted IoU owns the pixel
    masks = {e["id"]: rle_decode(e["rle"]["counts"], (256, 320)) for e in entries}
    iou = {e["id"]: e["predicted_iou"] for e in entries}
    for a in masks:
        for b in masks:
            overlap = masks[a] & masks[b]
            if a != b and overlap.any() and iou[a] > iou[b]:
                assert not (merged[overlap] == b).any()


def test_client_prompts_by_name(service) -> None:
    frame = make_surgical_frame(np.random.default_rng([4201, 0]), (256, 320), classes=(4, 6))
    with MedsegClient(service.url) as client:
        body = client.segment_bytes(png(frame.rgb), "surgical_sam", "json", classes=["suction instrument", 4]).json()
    assert body["prompting"] == "requested" and body["classes"] == "4,6"
    assert [e["id"] for e in body["class_masks"]] == [4, 6]


@pytest.mark.parametrize(
    ("model", "fields", "message"),
    [
        ("surgical_sam", {"classes": "9"}, "valid classes: 1 (bipolar forceps)"),
        ("surgical_sam", {"classes": "scalpel"}, "unknown class 'scalpel'"),
        ("surgical_sam", {"threshold": "1.0"}, "threshold must be strictly between 0 and 1"),
        ("mast", {"classes": "1"}, "'classes' applies to class-prompted models"),
        ("swtr_unet", {"classes": "1"}, "'classes' applies to class-prompted models"),
    ],
)
def test_bad_prompts_are_typed_400s(client, model: str, fields: dict[str, str], message: str) -> None:
    frame = make_surgical_frame(np.random.default_rng([4301, 0]), (64, 80))
    response = client.post(
        "/v1/segment", files={"file": ("f.png", png(frame.rgb), "image/png")}, data={"model": model, **fields}
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "bad_input" and message in response.json()["message"]


def test_a_reference_frame_is_refused_for_surgical_sam(client) -> None:
    frame = make_surgical_frame(np.random.default_rng([4401, 0]), (64, 80))
    files = {"file": ("f.png", png(frame.rgb), "image/png"), "reference": ("r.png", png(frame.rgb), "image/png")}
    response = client.post("/v1/segment", files=files, data={"model": "surgical_sam"})
    assert response.status_code == 400 and "'reference' applies to frame-pair models" in response.json()["message"]
