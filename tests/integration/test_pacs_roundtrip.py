"""A real PACS round trip: a CT series uploaded to Orthanc is forwarded (Orthanc's python plugin,
STOW-RS) to the service, which stores the DICOM SEG back into the same study in Orthanc; and a
SEG that finds Orthanc down is delivered once it is back."""

from __future__ import annotations

import io
import random
import subprocess
import time
from pathlib import Path

import highdicom as hd
import httpx
import numpy as np
import pydicom
import pytest
from dicomweb_client import DICOMwebClient

from export.phantoms.ct_liver import make_ct_slice
from export.phantoms.dicom_writer import PATIENT_ID, PATIENT_NAME, can_write, write_localizer, write_series
from load.local_service import ROOT, free_port, local_service
from load.orthanc import orthanc_server, wait_for
from load.pacs import pacs_pair
from services.codecs.seg import segment_numbers
from services.contract import discover_cards

pytestmark = pytest.mark.integration

LIVER_DICE, LESION_DICE = 0.90, 0.70
SYNTAXES = ("explicit_le", "jpeg2000_lossless", "jpegls_lossless", "rle")


def phantom_series(count: int, seed: int, shape: tuple[int, int] = (512, 512)):
    """``count`` phantom slices with lesions (each slice its own truth), as a CT series: descending
    table positions, an origin off zero, per-slice rescale, compressed instances mixed in."""
    slices = []
    for offset in range(40 * count):
        phantom = make_ct_slice(np.random.default_rng(seed + offset), shape=shape, spacing_mm=(0.78, 0.78))
        if (phantom.labels == 2).sum() >= 400:
            slices.append(phantom)
            if len(slices) == count:
                break
    syntaxes = [s for s in SYNTAXES if can_write(s)]
    files = write_series(
        np.stack([p.hu for p in slices]), (0.78, 0.78), 2.5,
        transfer_syntaxes=[syntaxes[i % len(syntaxes)] for i in range(count)],
        rescale=[(1.0, -1024.0) if i % 2 else (0.5, -1024.0) for i in range(count)],
        origin_mm=(-199.7, -210.3, 80.0), orientation=(1, 0, 0, 0, 1, 0), series_description="abdomen CT",
    )
    return files, [p.labels for p in slices]


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    total = pred.sum() + truth.sum()
    return 1.0 if total == 0 else 2.0 * float(np.logical_and(pred, truth).sum()) / float(total)


def seg_label_maps(seg_bytes: bytes, sources: list[pydicom.Dataset]) -> np.ndarray:
    """The SEG's label ids (swtr_unet's 1 liver, 2 lesion) per source instance, in ``sources`` order."""
    seg = hd.seg.Segmentation.from_dataset(pydicom.dcmread(io.BytesIO(seg_bytes)))
    segments = seg.get_pixels_by_source_instance([str(d.SOPInstanceUID) for d in sources], combine_segments=True)
    labels = np.zeros(segments.shape, np.uint8)
    for label_id, number in segment_numbers(discover_cards(ROOT / "model_repository")["swtr_unet"]).items():
        labels[segments == number] = label_id
    return labels


def dciodvfy_errors(data: bytes, tmp_path: Path) -> list[str]:
    path = tmp_path / "seg.dcm"
    path.write_bytes(data)
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


def test_a_ct_series_uploaded_to_orthanc_comes_back_with_a_seg(tmp_path) -> None:
    files, truths = phantom_series(8, seed=7100)
    sources = [pydicom.dcmread(io.BytesIO(f), stop_before_pixels=True) for f in files]
    study = str(sources[0].StudyInstanceUID)
    localizer = write_localizer(np.full((64, 512), -1000.0, np.float32), (0.78, 0.78), study_uid=study)
    with pacs_pair(tmp_path, env={"MEDSEG_SERIES_QUIET_S": "1"}, stable_age_s=2) as (service, orthanc):
        upload = [*files, localizer]
        random.Random(3).shuffle(upload)
        orthanc.upload(upload)

        def seg_series():
            return [s for s in orthanc.series_of_study(study) if s["MainDicomTags"].get("Modality") == "SEG"]

        (seg_entry,) = wait_for(seg_series, timeout_s=180)
        (seg_id,) = seg_entry["Instances"]
        seg_bytes = orthanc.instance_file(seg_id)

        jobs = httpx.get(f"{service.url}/v1/jobs", params={"study": study}).json()["jobs"]
        (job,) = jobs  # the CT series only: the localizer's series is stored, never a job
        assert job["state"] == "delivered" and job["instance_count"] == len(files)
        assert set(job["timings_s"]) >= {"quiet_wait", "queue", "assembly", "inference", "seg", "delivery"}

        time.sleep(5)  # longer than StableAge: had Orthanc forwarded the SEG, it would be here by now
        received = {p.parent.name for p in (service.log_path.parent / "data" / "instances" / study).glob("*/*.dcm")}
        assert seg_entry["MainDicomTags"]["SeriesInstanceUID"] not in received
        assert len(httpx.get(f"{service.url}/v1/jobs", params={"study": study}).json()["jobs"]) == 1
        log = service.log_text() + orthanc.log_text()
        assert PATIENT_NAME not in log and PATIENT_ID not in log

    assert dciodvfy_errors(seg_bytes, tmp_path) == []
    seg = pydicom.dcmread(io.BytesIO(seg_bytes))
    assert seg.StudyInstanceUID == study and seg.Modality == "SEG"
    referenced = {item.ReferencedSOPInstanceUID for s in seg.ReferencedSeriesSequence for item in s.ReferencedInstanceSequence}
    assert referenced == {str(d.SOPInstanceUID) for d in sources}
    predicted = seg_label_maps(seg_bytes, sources)
    truth = np.stack(truths)
    assert dice(predicted > 0, truth > 0) >= LIVER_DICE
    assert dice(predicted == 2, truth == 2) >= LESION_DICE


def _stow_small_series(url: str) -> str:
    files, _ = phantom_series(3, seed=7300, shape=(256, 256))
    datasets = [pydicom.dcmread(io.BytesIO(f)) for f in files]
    DICOMwebClient(f"{url}/dicom-web").store_instances(datasets)
    return str(datasets[0].StudyInstanceUID)


def _job(url: str, study: str, predicate, timeout_s: float = 120) -> dict:
    def matching():
        jobs = httpx.get(f"{url}/v1/jobs", params={"study": study}).json()["jobs"]
        return jobs[0] if jobs and predicate(jobs[0]) else None

    return wait_for(matching, timeout_s=timeout_s)


def test_a_seg_ready_while_orthanc_is_down_is_delivered_once_it_is_back(tmp_path) -> None:
    orthanc_port = free_port()
    env = {
        "MEDSEG_SERIES_QUIET_S": "0.5",
        "MEDSEG_PACS_URL": f"http://127.0.0.1:{orthanc_port}/dicom-web",
        "MEDSEG_DELIVERY_ATTEMPTS": "30",
        "MEDSEG_DELIVERY_BACKOFF_S": "0.5",
    }
    with local_service(ROOT / "model_repository", tmp_path / "service", env=env) as service:
        study = _stow_small_series(service.url)
        waiting = _job(service.url, study, lambda j: j["state"] == "done" and j["delivery_attempts"] >= 2)
        assert waiting["reason"].startswith("delivery: PACS not reachable")
        with orthanc_server(tmp_path / "orthanc", port=orthanc_port) as orthanc:
            delivered = _job(service.url, study, lambda j: j["state"] == "delivered", timeout_s=90)
            assert delivered["reason"] is None
            (result,) = delivered["results"]
            series = orthanc.series_of_study(study)
            assert [s["MainDicomTags"]["SeriesInstanceUID"] for s in series] == [result["series_uid"]]


def test_delivery_failed_after_the_last_attempt_and_retry_delivers(tmp_path) -> None:
    orthanc_port = free_port()
    env = {
        "MEDSEG_SERIES_QUIET_S": "0.5",
        "MEDSEG_PACS_URL": f"http://127.0.0.1:{orthanc_port}/dicom-web",
        "MEDSEG_DELIVERY_ATTEMPTS": "2",
        "MEDSEG_DELIVERY_BACKOFF_S": "0.2",
    }
    with local_service(ROOT / "model_repository", tmp_path / "service", env=env) as service:
        study = _stow_small_series(service.url)
        failed = _job(service.url, study, lambda j: j["state"] == "delivery_failed")
        assert failed["delivery_attempts"] == 2 and failed["results"]
        with orthanc_server(tmp_path / "orthanc", port=orthanc_port) as orthanc:
            retried = httpx.post(f"{service.url}/v1/jobs/{failed['id']}/retry")
            assert retried.status_code == 202 and retried.json()["state"] == "done"
            _job(service.url, study, lambda j: j["state"] == "delivered", timeout_s=60)
            assert len(orthanc.series_of_study(study)) == 1
