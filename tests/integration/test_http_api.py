"""Routes, probes and the typed error contract of a real `bentoml serve`."""

from __future__ import annotations

import io
import os
import zipfile

import numpy as np
import pydicom
import pytest
from PIL import Image

from tests.integration.conftest import UPLOAD_LIMIT_MB

pytestmark = pytest.mark.integration

PYDICOM_FILES = os.path.join(os.path.dirname(pydicom.__file__), "data", "test_files")


def png_of(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def post(client, data: bytes, name: str = "upload", **form: str):
    return client.post("/v1/segment", files={"file": (name, data, "application/octet-stream")}, data={"model": "swtr_unet", **form})


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == code and isinstance(body["message"], str) and body["message"]
    return body


def test_probes_and_metrics(client) -> None:
    assert client.get("/livez").status_code == 200
    assert client.get("/readyz").status_code == 200
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    assert "bentoml_service_request" in metrics.text


def test_models_lists_the_served_models_with_provenance(client) -> None:
    body = client.get("/v1/models").json()
    (model,) = [m for m in body["models"] if m["name"] == "swtr_unet"]
    assert model["task"] == "image2d" and model["variant"] == "small" and model["version"] == "1"
    assert [label["name"] for label in model["labels"]] == ["background", "liver", "liver lesion"]
    assert model["weights"]["kind"] == "demo" and len(model["weights"]["sha256"]) == 64
    assert model["weights"]["metrics"]["liver_whole"] >= 0.9  # the held-out Dice of the training record
    by_name = {m["name"]: m for m in body["models"]}
    assert set(by_name) == {"swtr_unet", "hnf_net", "mast", "surgical_sam"}
    assert by_name["hnf_net"]["input"]["channel_names"] == ["t1", "t1ce", "t2", "flair"]
    assert [r["name"] for r in by_name["hnf_net"]["regions"]] == ["WT", "TC", "ET"]
    assert by_name["mast"]["graphs"] == ["mast_encoder", "mast_pair_head"] and by_name["mast"]["threshold"] == 0.5
    surgical = by_name["surgical_sam"]
    assert surgical["task"] == "class_prompted" and len(surgical["labels"]) == 8
    assert surgical["graphs"] == ["surgical_sam_image_encoder", "surgical_sam_prompt_decoder"]


def test_png_round_trip_keeps_source_size(client) -> None:
    image = (np.random.default_rng(0).random((123, 201)) * 255).astype(np.uint8)
    response = post(client, png_of(image), "x.png")
    assert response.status_code == 200
    assert np.asarray(Image.open(io.BytesIO(response.content))).shape == (123, 201)


def test_unknown_model_is_404(client) -> None:
    body = assert_error(post(client, png_of(np.zeros((32, 32), np.uint8)), model="no_such_model"), 404, "model_not_found")
    assert "swtr_unet" in body["message"]


def test_missing_model_and_bad_output_are_400(client) -> None:
    image = png_of(np.zeros((32, 32), np.uint8))
    assert_error(client.post("/v1/segment", files={"file": ("x.png", image)}), 400, "bad_input")
    assert_error(post(client, image, output="tiff"), 400, "bad_input")


def test_errors_raised_by_the_framework_follow_the_contract(client, service) -> None:
    """Form validation and content-type refusals happen in BentoML, before our handler: same body shape."""
    image = png_of(np.zeros((32, 32), np.uint8))
    only_fields = client.post("/v1/segment", files={"model": (None, "swtr_unet")})
    assert "'file'" in assert_error(only_fields, 400, "bad_input")["message"]
    not_a_number = post(client, image, "x.png", threshold="DOE^JANE")
    assert "'threshold'" in assert_error(not_a_number, 400, "bad_input")["message"]
    assert "DOE" not in not_a_number.text and "DOE" not in service.log_text()
    assert "invalid request: 'threshold'" in service.log_text()  # BentoML's log line, scrubbed
    pickled = client.post("/v1/segment", content=b"x", headers={"content-type": "application/vnd.bentoml+pickle"})
    assert_error(pickled, 415, "unsupported_media_type")
    assert "Traceback" not in service.log_text()  # client errors are logged in one line
    assert_error(client.post("/v1/segment", json={"model": "swtr_unet"}), 400, "bad_input")


def test_truncated_png_is_400(client) -> None:
    image = png_of((np.random.default_rng(1).random((64, 64)) * 255).astype(np.uint8))
    assert_error(post(client, image[: len(image) // 2], "x.png"), 400, "bad_input")


def test_truncated_dicom_is_400(client) -> None:
    with open(os.path.join(PYDICOM_FILES, "CT_small.dcm"), "rb") as handle:
        data = handle.read()
    assert_error(post(client, data[: len(data) - 5000], "x.dcm"), 400, "bad_input")


@pytest.mark.parametrize(
    "payload",
    [b"hello, this is plain text\n" * 10, b"%PDF-1.4\n" + bytes(200)],
    ids=["text", "pdf"],
)
def test_unsupported_media_is_415(client, payload: bytes) -> None:
    assert_error(post(client, payload), 415, "unsupported_media_type")


def test_zip_is_415(client) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("a.txt", "x" * 100)
    assert_error(post(client, buffer.getvalue()), 415, "unsupported_media_type")


def test_dicom_that_is_not_an_image_is_422(client) -> None:
    with open(os.path.join(PYDICOM_FILES, "rtplan.dcm"), "rb") as handle:
        body = assert_error(post(client, handle.read(), "plan.dcm"), 422, "not_an_image")
    assert "RT Plan" in body["message"]


def test_body_over_the_limit_is_413_and_the_service_keeps_serving(client) -> None:
    too_big = bytes((UPLOAD_LIMIT_MB + 1) * 1024 * 1024)
    assert_error(post(client, too_big), 413, "payload_too_large")
    ok = post(client, png_of(np.zeros((32, 32), np.uint8)), "x.png")
    assert ok.status_code == 200


def test_empty_file_is_400(client) -> None:
    assert_error(post(client, b""), 400, "bad_input")


def test_python_client_round_trip_and_typed_errors(service) -> None:
    from clients import MedsegClient, MedsegHTTPError

    with MedsegClient(service.url) as medseg:
        assert "swtr_unet" in [m["name"] for m in medseg.models()]
        body = medseg.segment_bytes(png_of(np.zeros((40, 50), np.uint8)), "swtr_unet", "json").json()
        assert body["input"]["shape"] == [1, 40, 50]
        with pytest.raises(MedsegHTTPError) as raised:
            medseg.segment_bytes(b"not an image at all", "swtr_unet")
    assert raised.value.status == 415 and raised.value.code == "unsupported_media_type"


def test_a_repeated_file_field_is_refused_not_dropped(client) -> None:
    image = png_of(np.zeros((32, 32), np.uint8))
    files = [("file", ("a.png", image, "image/png")), ("file", ("b.png", image, "image/png"))]
    assert_error(client.post("/v1/segment", files=files, data={"model": "swtr_unet"}), 400, "bad_input")
