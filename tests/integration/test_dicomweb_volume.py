"""A BraTS study sent as four MR series (T1, T1ce, T2, FLAIR) over STOW-RS becomes one hnf_net job
whose SEG equals the volume route's answer for the same voxels; studies that cannot form that
volume end in a failed job that says why."""

from __future__ import annotations

import gzip
import io
import time
from pathlib import Path

import highdicom as hd
import httpx
import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from export.phantoms.brats import make_brats_case
from export.phantoms.dicom_writer import write_series
from load.local_service import local_service
from services.codecs.seg import segment_numbers

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DESCRIPTIONS = {"t1": "T1 axial", "t1ce": "T1 post contrast", "t2": "T2 axial", "flair": "FLAIR"}
SHAPE = (72, 72, 48)  # (X, Y, Z) voxels, 1 mm


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    with local_service(ROOT / "model_repository", tmp_path_factory.mktemp("dicomweb-volume"),
                       env={"MEDSEG_SERIES_QUIET_S": "1"}) as running:
        yield running


@pytest.fixture(scope="module")
def case():
    return make_brats_case(np.random.default_rng(2101), shape=SHAPE)


def mr_series(case, study: str, frame: str, channels=tuple(DESCRIPTIONS), spacing=None, skip_slice=None):
    """Each channel (X, Y, Z) as an MR series of Z axial slices (rows = Y, columns = X)."""
    files = []
    for index, name in enumerate(("t1", "t1ce", "t2", "flair")):
        if name not in channels:
            continue
        volume = np.round(case.channels[index]).transpose(2, 1, 0)
        pixel = (spacing or {}).get(name, 1.0)
        written = write_series(volume, (pixel, pixel), 1.0, modality="MR", rescale=(1.0, 0.0), study_uid=study,
                               frame_of_reference_uid=frame, series_number=index + 1,
                               series_description=DESCRIPTIONS[name])
        if skip_slice is not None and name == "t2":
            del written[skip_slice]
        files += written
    return files


def stow(url: str, files: list[bytes]) -> httpx.Response:
    boundary = "brats-boundary"
    body = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + f + b"\r\n" for f in files)
    body += f"--{boundary}--\r\n".encode()
    return httpx.post(f"{url}/dicom-web/studies", content=body, timeout=120,
                      headers={"Content-Type": f"multipart/related; type=application/dicom; boundary={boundary}"})


def finished_jobs(url: str, study: str, timeout_s: float = 180) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        jobs = httpx.get(f"{url}/v1/jobs", params={"study": study}).json()["jobs"]
        if jobs and all(job["state"] in ("done", "failed") for job in jobs):
            return jobs
        time.sleep(0.3)
    raise AssertionError(f"jobs did not finish: {jobs}")


def nifti(volume: np.ndarray) -> bytes:
    image = nib.Nifti1Image(volume.astype(np.int16), np.eye(4))
    return gzip.compress(image.to_bytes())


def test_four_series_make_one_hnf_net_job_whose_seg_equals_the_volume_route(service, case) -> None:
    study, frame = generate_uid(), generate_uid()
    files = mr_series(case, study, frame)
    response = stow(service.url, files)
    assert response.status_code == 200, response.text
    (job,) = finished_jobs(service.url, study)
    assert job["state"] == "done", job["reason"]
    assert job["model"] == "hnf_net" and job["series_count"] == 4 and job["instance_count"] == len(files)
    assert sorted(s["channel"] for s in job["series"]) == ["flair", "t1", "t1ce", "t2"]

    (result,) = job["results"]
    seg_response = httpx.get(result["url"], timeout=60)
    assert seg_response.status_code == 200
    datasets = [pydicom.dcmread(io.BytesIO(f)) for f in files]
    seg = hd.seg.Segmentation.from_dataset(pydicom.dcmread(io.BytesIO(_only_part(seg_response))))
    assert {uid for _, _, uid in seg.get_source_image_uids()} == {str(d.SOPInstanceUID) for d in datasets}
    t1 = sorted((d for d in datasets if d.SeriesDescription == DESCRIPTIONS["t1"]), key=lambda d: float(d.ImagePositionPatient[2]))
    segments = seg.get_pixels_by_source_instance([str(d.SOPInstanceUID) for d in t1], combine_segments=True)
    labels = np.zeros(segments.shape, np.uint8)
    for label_id, number in segment_numbers(_card(service.url)).items():
        labels[segments == number] = label_id
    from_seg = labels.transpose(2, 1, 0)  # (Z, rows, cols) -> (X, Y, Z)

    volume = httpx.post(
        f"{service.url}/v1/segment/volume", timeout=120, data={"model": "hnf_net"},
        files={name: (f"{name}.nii.gz", nifti(np.round(case.channels[i])), "application/gzip")
               for i, name in enumerate(("t1", "t1ce", "t2", "flair"))},
    )
    assert volume.status_code == 200, volume.text
    from_route = np.asarray(nib.Nifti1Image.from_bytes(gzip.decompress(volume.content)).dataobj)
    assert from_route.any()
    np.testing.assert_array_equal(from_seg, from_route)

    def done_on_metrics() -> bool:
        text = httpx.get(f"{service.url}/metrics").text
        return any(line.startswith('medseg_jobs{state="done"}') and float(line.split()[-1]) >= 1 for line in text.splitlines())

    deadline = time.monotonic() + 10
    while not done_on_metrics():
        assert time.monotonic() < deadline, "medseg_jobs{state=\"done\"} not on /metrics"
        time.sleep(0.5)


def test_series_on_different_grids_fail_the_job_naming_the_channel(service, case) -> None:
    study, frame = generate_uid(), generate_uid()
    assert stow(service.url, mr_series(case, study, frame, spacing={"flair": 0.9})).status_code == 200
    (job,) = finished_jobs(service.url, study)
    assert job["state"] == "failed" and job["results"] == []
    assert job["reason"].startswith("grids_differ") and "flair" in job["reason"]


def test_a_missing_channel_fails_the_job(service, case) -> None:
    study, frame = generate_uid(), generate_uid()
    assert stow(service.url, mr_series(case, study, frame, channels=("t1", "t1ce", "flair"))).status_code == 200
    (job,) = finished_jobs(service.url, study)
    assert job["state"] == "failed" and job["reason"].startswith("missing_channels") and "t2" in job["reason"]


def test_a_missing_slice_fails_the_volume_job_with_the_gap(service, case) -> None:
    study, frame = generate_uid(), generate_uid()
    assert stow(service.url, mr_series(case, study, frame, skip_slice=20)).status_code == 200
    (job,) = finished_jobs(service.url, study)
    assert job["state"] == "failed" and job["reason"].startswith("gap"), job["reason"]


def _only_part(response: httpx.Response) -> bytes:
    from clients.http_client import related_parts

    (part,) = related_parts(response.headers["content-type"], response.content)
    return part


def _card(url: str):
    from services.contract import discover_cards

    return discover_cards(ROOT / "model_repository")["hnf_net"]
