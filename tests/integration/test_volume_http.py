"""POST /v1/segment/volume through a real `bentoml serve`: BraTS-like phantoms as NIfTI.

The returned label map must lie in the input's grid and affine, use BraTS 2018-2021 labels
(1, 2, 4), and reach the region Dice of issue 3 with the demo weights (aggregated over the
phantoms: sum 2|P∩T| / sum (|P|+|T|)). Bad uploads get typed 4xx answers.
"""

from __future__ import annotations

import gzip
import io

import nibabel as nib
import numpy as np
import pytest

from export.phantoms.brats import BratsPhantom, brats_regions, make_brats_case

pytestmark = pytest.mark.integration

MODALITIES = ("t1", "t1ce", "t2", "flair")
REGION_DICE = {"WT": 0.85, "TC": 0.75, "ET": 0.65}
# A BraTS-like affine: LPS-flipped X and Y, translated, 1 mm voxels.
AFFINE = np.array([[-1.0, 0, 0, 90.0], [0, -1.0, 0, 126.0], [0, 0, 1.0, -72.0], [0, 0, 0, 1.0]])


def phantom(seed: int, shape: tuple[int, int, int] = (96, 96, 80)) -> BratsPhantom:
    return make_brats_case(np.random.default_rng(seed), shape=shape)


def nifti_bytes(data: np.ndarray, affine: np.ndarray = AFFINE) -> bytes:
    """gzip int16 NIfTI-1, as BraTS distributes its scans."""
    image = nib.Nifti1Image(np.round(data).astype(np.int16), affine)
    image.set_sform(affine, 1)
    image.set_qform(affine, 1)
    return gzip.compress(image.to_bytes())


def channel_files(case: BratsPhantom, affine: np.ndarray = AFFINE) -> dict[str, tuple[str, bytes, str]]:
    return {
        name: (f"{name}.nii.gz", nifti_bytes(case.channels[i], affine), "application/gzip")
        for i, name in enumerate(MODALITIES)
    }


def decode_labels(content: bytes) -> nib.Nifti1Image:
    return nib.Nifti1Image.from_bytes(gzip.decompress(content))


def post_volume(client, files, **fields):
    return client.post("/v1/segment/volume", files=files, data={"model": "hnf_net", **fields})


def assert_error(response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"] == code


def test_labels_in_the_source_grid_reach_region_dice(client) -> None:
    cases = [phantom(seed) for seed in (2001, 2002, 2003)]
    sums = {region: [0.0, 0.0] for region in REGION_DICE}
    for case in cases:
        response = post_volume(client, channel_files(case))
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/gzip"
        image = decode_labels(response.content)
        labels = np.asarray(image.dataobj)
        assert labels.shape == case.labels.shape and image.get_data_dtype() == np.uint8
        np.testing.assert_allclose(image.affine, AFFINE)
        assert set(np.unique(labels)) <= {0, 1, 2, 4}
        predicted, truth = brats_regions(labels), brats_regions(case.labels)
        for k, region in enumerate(REGION_DICE):
            sums[region][0] += 2.0 * float(np.logical_and(predicted[k], truth[k]).sum())
            sums[region][1] += float(predicted[k].sum() + truth[k].sum())
    dice = {region: inter / total for region, (inter, total) in sums.items()}
    for region, minimum in REGION_DICE.items():
        assert dice[region] >= minimum, f"{region} Dice {dice[region]:.3f} < {minimum} ({dice})"


def test_single_4d_file_odd_grid_and_json_volumes(client) -> None:
    case = phantom(2101, shape=(90, 100, 70))  # not multiples of the patch stride
    zooms = np.diag([1.0, 1.0, 1.5, 1.0])
    per_channel = post_volume(client, channel_files(case, zooms))
    assert per_channel.status_code == 200, per_channel.text
    labels = np.asarray(decode_labels(per_channel.content).dataobj)
    assert labels.shape == (90, 100, 70)

    stacked = nifti_bytes(np.moveaxis(case.channels, 0, 3), zooms)
    single = post_volume(client, {"file": ("case.nii.gz", stacked, "application/gzip")})
    assert single.status_code == 200, single.text
    np.testing.assert_array_equal(np.asarray(decode_labels(single.content).dataobj), labels)

    body = post_volume(client, channel_files(case, zooms), output="json").json()
    assert body["model"] == "hnf_net" and body["input"]["shape"] == [90, 100, 70]
    assert body["input"]["voxel_mm"] == pytest.approx([1.0, 1.0, 1.5])
    assert body["weights"]["kind"] == "demo"
    by_id = {entry["id"]: entry for entry in body["labels"]}
    for label_id in (1, 2, 4):
        voxels = int((labels == label_id).sum())
        assert by_id[label_id]["voxels"] == voxels
        assert by_id[label_id]["volume_ml"] == pytest.approx(voxels * 1.5 / 1000.0)
    regions = {entry["name"]: entry for entry in body["regions"]}
    assert regions["WT"]["voxels"] == int(np.isin(labels, (1, 2, 4)).sum())
    assert regions["ET"]["volume_ml"] == pytest.approx(by_id[4]["volume_ml"])


def test_mismatched_channels_are_422(client) -> None:
    case = phantom(2201)
    files = channel_files(case)
    files["t2"] = ("t2.nii.gz", nifti_bytes(case.channels[2][:, :, :64]), "application/gzip")
    response = post_volume(client, files)
    assert_error(response, 422, "unprocessable_image")
    assert "t2" in response.json()["message"]

    shifted = AFFINE.copy()
    shifted[0, 3] += 2.0
    files = channel_files(case)
    files["flair"] = ("flair.nii.gz", nifti_bytes(case.channels[3], shifted), "application/gzip")
    response = post_volume(client, files)
    assert_error(response, 422, "unprocessable_image")
    assert "flair" in response.json()["message"] and "affine" in response.json()["message"]


def test_bad_volume_requests_get_typed_errors(client) -> None:
    case = phantom(2301)
    files = channel_files(case)
    assert_error(post_volume(client, {"t1": files["t1"]}), 400, "bad_input")  # three channels missing
    assert_error(post_volume(client, {**files, "t1_extra": files["t1"]}), 400, "bad_input")  # nothing dropped silently
    assert_error(post_volume(client, {**files, "file": files["t1"]}), 400, "bad_input")  # both ways at once
    repeated = [(name, upload) for name, upload in files.items()] + [("t1", files["t1"])]
    assert_error(client.post("/v1/segment/volume", files=repeated, data={"model": "hnf_net"}), 400, "bad_input")
    assert_error(post_volume(client, {**files, "t1": ("t1.nii.gz", files["t1"][1][:5000], "application/gzip")}), 400, "bad_input")
    assert_error(post_volume(client, {**files, "t1": ("t1.png", b"\x89PNG\r\n\x1a\n" + bytes(400), "image/png")}), 415, "unsupported_media_type")
    assert_error(post_volume(client, files, output="png"), 400, "bad_input")
    assert_error(client.post("/v1/segment/volume", files=files, data={"model": "swtr_unet"}), 422, "unprocessable_image")
    assert_error(client.post("/v1/segment/volume", files=files, data={"model": "nope"}), 404, "model_not_found")
    assert_error(client.post("/v1/segment/volume", content=b"{}", headers={"content-type": "application/json"}), 415, "unsupported_media_type")
    # the volume model on the 2-D route
    png = io.BytesIO()
    from PIL import Image

    Image.fromarray(np.zeros((32, 32), np.uint8)).save(png, format="PNG")
    response = client.post("/v1/segment", files={"file": ("x.png", png.getvalue(), "image/png")}, data={"model": "hnf_net"})
    assert_error(response, 422, "unprocessable_image")
    assert client.get("/readyz").status_code == 200


def test_command_line_client_writes_the_label_volume(service, tmp_path) -> None:
    from clients.__main__ import main

    case = phantom(2401)
    arguments = []
    for name, (filename, data, _) in channel_files(case).items():
        (tmp_path / filename).write_bytes(data)
        arguments.append(f"{name}={tmp_path / filename}")
    out = tmp_path / "labels.nii.gz"
    assert main(["--url", service.url, "volume", *arguments, "--model", "hnf_net", "-o", str(out)]) == 0
    labels = np.asarray(decode_labels(out.read_bytes()).dataobj)
    assert labels.shape == case.labels.shape and set(np.unique(labels)) <= {0, 1, 2, 4}
