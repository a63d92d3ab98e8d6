"""DICOMweb through a real `bentoml serve`: STOW-RS in, jobs, QIDO-RS / WADO-RS of the SEGs out.

One module-scoped service (MEDSEG_SERIES_QUIET_S=1) serves most tests; a service with a 1 MiB
study limit serves the 413 test, and the durability tests start, SIGKILL and restart their own on
one data directory. Every request of the shared clients is checked: no 5xx anywhere.

- STOW with dicomweb-client of a mixed-encoding phantom series: 200, one ReferencedSOPSequence
  item per instance, one job waiting → done with its counts and timings and no patient
  identifier; its SEG (WADO-RS series and instance) references every source, lives in a new
  series of the source study, equals the PNG route slice by slice and reaches liver Dice 0.90.
- Raw bodies: chunked or not, boundary and type quoted or not, parts with or without their own
  Content-Length, a preamble; the study in the URL (right: 200; wrong: 409 + 0xA900, nothing
  stored; mixed: 202); re-sending is idempotent; non-multipart bodies 415; a body cut inside a
  part keeps the parts before it; a cut or garbage part is 0xC000 alone; over MEDSEG_MAX_STUDY_MB
  413 without the service's memory growing; a 48 MB study under the limit is streamed to disk.
- Non-images (SR, dose SR, SEG, KO, PR, RT dose, localizers, our own SEG or output) are stored,
  acknowledged, and never make or join a job.
- Named job states: another size in another series is another job; mixed sizes in a series fail
  "mixed_size"; a missing slice is fine for a 2-D model; retry re-runs a failed job.
- output=seg on POST /v1/segment for single- and multi-frame DICOM; 415 for a PNG.
- Durability: SIGKILL right after the STOW answer, or while the job runs: after a restart on the
  same data directory the job reaches done with every acknowledged instance.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydicom
import pytest
from dicomweb_client import DICOMwebClient
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from export.phantoms.ct_liver import make_ct_slice
from export.phantoms.dicom_writer import write_ct_slice, write_localizer, write_multiframe
from load.process_memory import PeakRss
from load.local_service import LocalService, kill_tree, local_service
from services.codecs.seg import segment_numbers
from services.contract import discover_cards
from tests.integration.dicomweb_fixtures import (
    CANNOT_UNDERSTAND,
    DOES_NOT_MATCH,
    PATIENT_IDENTIFIERS,
    REPOSITORY,
    SLICE_MM,
    SPACING_MM,
    Series,
    chunks,
    dice,
    failed,
    jobs_of,
    phantom_series,
    png_labels,
    read,
    referenced,
    rehome,
    related_body,
    related_type,
    seg_labels,
    segmentation,
    sop_uid,
    stow,
    study_jobs_settled,
    to_bytes,
    wait_for,
    wait_job,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

QUIET_S = 1.0
STAGES = ("quiet_wait", "queue", "assembly", "inference", "seg")
SERVER_ERRORS: list[str] = []  # every 5xx any client of this module saw


def _record_httpx(response: httpx.Response) -> None:
    if response.status_code >= 500:
        SERVER_ERRORS.append(f"{response.request.method} {response.request.url.path} → {response.status_code}")


def _record_requests(response: Any, *args: Any, **kwargs: Any) -> None:
    if response.status_code >= 500:
        SERVER_ERRORS.append(f"{response.request.method} {response.url} → {response.status_code}")


@pytest.fixture(autouse=True)
def no_server_errors() -> Iterator[None]:
    SERVER_ERRORS.clear()
    yield
    assert not SERVER_ERRORS, f"5xx answers: {SERVER_ERRORS}"


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalService]:
    with local_service(REPOSITORY, tmp_path_factory.mktemp("dicomweb"), env={"MEDSEG_SERIES_QUIET_S": str(QUIET_S)}) as running:
        yield running


def client_for(service: LocalService) -> httpx.Client:
    return httpx.Client(base_url=service.url, timeout=120, event_hooks={"response": [_record_httpx]})


@pytest.fixture(scope="module")
def http(pacs: LocalService) -> Iterator[httpx.Client]:
    with client_for(pacs) as client:
        yield client


def data_dir(service: LocalService) -> Path:
    return service.log_path.parent / "data"


def dicomweb(service: LocalService) -> tuple[DICOMwebClient, list[int]]:
    """A dicomweb-client on the service, and the list of HTTP statuses it received."""
    statuses: list[int] = []
    client = DICOMwebClient(service.url + "/dicom-web")
    client._session.hooks["response"].append(lambda r, *a, **k: statuses.append(r.status_code))  # noqa: SLF001
    client._session.hooks["response"].append(_record_requests)  # noqa: SLF001
    return client, statuses


@pytest.fixture(scope="module")
def numbers() -> dict[int, int]:
    """swtr_unet's label id → SEG segment number."""
    return segment_numbers(discover_cards(REPOSITORY)["swtr_unet"])


def png_route(http: httpx.Client, data: bytes) -> np.ndarray:
    response = http.post("/v1/segment", files={"file": ("x.dcm", data, "application/dicom")},
                         data={"model": "swtr_unet", "output": "png"})
    assert response.status_code == 200, response.text
    return png_labels(response.content)


def seg_of_job(http: httpx.Client, job: dict[str, Any]) -> Any:
    """The job's one SEG, fetched by WADO-RS (instance URL) with httpx and read by highdicom."""
    (result,) = job["results"]
    response = http.get(result["url"].removeprefix(str(http.base_url).rstrip("/")),
                        headers={"accept": 'multipart/related; type="application/dicom"'})
    assert response.status_code == 200, response.text
    (part,) = multipart_parts(response)
    return segmentation(part)


def multipart_parts(response: httpx.Response) -> list[bytes]:
    content_type = response.headers["content-type"]
    assert content_type.startswith("multipart/related"), content_type
    boundary = content_type.split("boundary=")[1].split(";")[0].strip('"')
    parts = []
    for chunk in response.content.split(b"--" + boundary.encode())[1:]:
        if chunk.startswith(b"--"):
            break
        _, _, content = chunk.partition(b"\r\n\r\n")
        parts.append(content.removesuffix(b"\r\n"))
    return parts


def assert_no_identifiers(text: str, where: str) -> None:
    for identifier in PATIENT_IDENTIFIERS:
        assert identifier not in text, f"{identifier!r} in {where}"


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == code and body["message"], body
    return body


# --- 1. STOW with dicomweb-client, the job, the SEG ---------------------------------------------------


SYNTAXES = ["explicit_le", "jpeg2000_lossless", "rle", "jpegls_lossless", "explicit_le", "rle"]
RESCALES = [(1.0, -1024.0), (0.5, -1024.0), (1.0, -1000.0), (2.0, -2048.0), (1.0, -1024.0), (0.25, -1100.0)]


@pytest.fixture(scope="module")
def processed(pacs: LocalService, http: httpx.Client) -> dict[str, Any]:
    """A 6-slice phantom series STOWed with dicomweb-client, and what came of it."""
    series = phantom_series(101, 6, shape=(256, 256), syntaxes=SYNTAXES, rescales=RESCALES)
    syntaxes = {str(read(f).file_meta.TransferSyntaxUID) for f in series.files}
    client, statuses = dicomweb(pacs)
    answer = client.store_instances([read(f, pixels=True) for f in series.files])
    first_seen = jobs_of(http, series.study)
    job = wait_job(http, first_seen[0]["id"], timeout_s=60) if first_seen else None
    return {"series": series, "syntaxes": syntaxes, "answer": answer, "statuses": list(statuses),
            "first_seen": first_seen, "job": job, "client": client}


def test_stow_with_dicomweb_client_acknowledges_every_instance(processed: dict[str, Any]) -> None:
    series: Series = processed["series"]
    answer = processed["answer"]
    assert len(processed["syntaxes"]) >= 2, processed["syntaxes"]  # compressed and native instances
    assert processed["statuses"] == [200]
    assert "FailedSOPSequence" not in answer
    items = answer.ReferencedSOPSequence
    assert sorted(item.ReferencedSOPInstanceUID for item in items) == sorted(series.sops)
    for item in items:
        assert item.ReferencedSOPClassUID == pydicom.uid.CTImageStorage
        # dicomweb-client sends "Host: 127.0.0.1" without the port: only the path is checked here
        assert item.RetrieveURL.endswith(
            f"/dicom-web/studies/{series.study}/series/{series.series}/instances/{item.ReferencedSOPInstanceUID}")


def test_the_series_becomes_one_job_waiting_then_done(processed: dict[str, Any], pacs: LocalService) -> None:
    (first,) = processed["first_seen"]
    assert first["state"] == "waiting"
    job = processed["job"]
    assert job["state"] == "done", job
    assert job["model"] == "swtr_unet" and job["route"] == "ct-mr-slices"
    assert job["study"] == processed["series"].study
    assert job["series_count"] == 1 and job["series"][0]["uid"] == processed["series"].series
    assert job["instance_count"] == 6
    assert job["run_attempts"] == 1 and job["reason"] is None
    assert set(STAGES) <= set(job["timings_s"]), job["timings_s"]
    assert all(value >= 0 for value in job["timings_s"].values())
    assert job["timings_s"]["quiet_wait"] >= QUIET_S - 0.05
    assert job["created_at"] <= job["queued_at"] <= job["started_at"] <= job["finished_at"]
    assert len(job["results"]) == 1 and job["results"][0]["modality"] == "SEG"
    assert_no_identifiers(json.dumps(job), "the job JSON")
    assert_no_identifiers(pacs.log_text(), "the service log")


def test_wado_seg_references_every_source_and_equals_the_png_route(
    processed: dict[str, Any], http: httpx.Client, numbers: dict[int, int]
) -> None:
    series: Series = processed["series"]
    client: DICOMwebClient = processed["client"]
    (result,) = processed["job"]["results"]
    by_series = client.retrieve_series(series.study, result["series_uid"])
    assert len(by_series) == 1
    one = client.retrieve_instance(series.study, result["series_uid"], result["sop_instance_uid"])
    assert to_bytes(one) == to_bytes(by_series[0])
    seg = segmentation(one)
    assert seg.Modality == "SEG" and seg.SOPInstanceUID == result["sop_instance_uid"]
    assert seg.StudyInstanceUID == series.study
    assert seg.SeriesInstanceUID == result["series_uid"] != series.series
    assert seg.SeriesInstanceUID != series.series
    sources = seg.get_source_image_uids()
    assert sorted(sop for _, _, sop in sources) == sorted(series.sops)
    assert {(study, ser) for study, ser, _ in sources} == {(series.study, series.series)}
    assert_no_identifiers(json.dumps(http.get(f"/dicom-web/studies/{series.study}/series").json()), "QIDO")

    predictions = []
    for data, sop in zip(series.files, series.sops):
        (labels,) = seg_labels(seg, sop, numbers)
        expected = png_route(http, data)
        assert labels.shape == expected.shape == (256, 256)
        np.testing.assert_array_equal(labels, expected, err_msg=f"SEG frame of {sop} differs from output=png")
        predictions.append(labels)
    truth = np.stack([p.labels for p in series.phantoms])
    liver = dice(np.stack(predictions) > 0, truth > 0)
    assert liver >= 0.90, f"liver Dice over the series {liver:.3f}"


def test_qido_lists_the_seg_series_of_the_study(processed: dict[str, Any], http: httpx.Client, pacs: LocalService) -> None:
    series: Series = processed["series"]
    (result,) = processed["job"]["results"]
    response = http.get(f"/dicom-web/studies/{series.study}/series")
    assert response.status_code == 200 and response.headers["content-type"].startswith("application/dicom+json")
    (item,) = response.json()
    assert item["0020000D"]["Value"] == [series.study]
    assert item["0020000E"]["Value"] == [result["series_uid"]]
    assert item["00080060"]["Value"] == ["SEG"]
    assert item["00201209"]["Value"] == [1]
    assert item["00081190"]["Value"] == [f"{pacs.url}/dicom-web/studies/{series.study}/series/{result['series_uid']}"]
    assert len(http.get(f"/dicom-web/studies/{series.study}/series", params={"Modality": "SEG"}).json()) == 1
    assert http.get(f"/dicom-web/studies/{series.study}/series", params={"Modality": "CT"}).json() == []
    assert http.get(f"/dicom-web/studies/{generate_uid()}/series").json() == []
    assert_error(http.get("/dicom-web/studies/not-a-uid/series"), 400, "bad_input")
    missing = http.get(f"/dicom-web/studies/{series.study}/series/{generate_uid()}")
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"


def test_retrieve_urls_of_stored_instances_resolve(http: httpx.Client, pacs: LocalService) -> None:
    """Each RetrieveURL of the STOW answer is a WADO-RS URL of this service: it must give the instance."""
    series = phantom_series(111, 1)
    answer = stow(http, series.files)
    assert answer.status_code == 200, answer.text
    (item,) = referenced(answer.json())
    assert item["url"] == f"{pacs.url}/dicom-web/studies/{series.study}/series/{series.series}/instances/{item['sop']}"
    response = http.get(item["url"], headers={"accept": 'multipart/related; type="application/dicom"'})
    assert response.status_code == 200, f"the RetrieveURL of a stored instance answers {response.status_code}: {response.text}"
    (part,) = multipart_parts(response)
    assert sop_uid(part) == item["sop"]


def test_wado_answers_406_to_what_it_cannot_give(processed: dict[str, Any], http: httpx.Client) -> None:
    """WADO-RS here gives DICOM instances only: a request for metadata (application/dicom+json)
    or rendered frames must not get a multipart of DICOM files."""
    series: Series = processed["series"]
    (result,) = processed["job"]["results"]
    path = f"/dicom-web/studies/{series.study}/series/{result['series_uid']}"
    for accept in ('multipart/related; type="application/dicom"', "application/dicom", "*/*", 'multipart/related; type="application/dicom"; transfer-syntax=*'):
        assert http.get(path, headers={"accept": accept}).status_code == 200, accept
    for accept in ("application/json", "text/html", "application/dicom+json", 'multipart/related; type="image/jpeg"'):
        response = http.get(path, headers={"accept": accept})
        assert response.status_code == 406, f"Accept: {accept} got {response.status_code} {response.headers['content-type']}"


# --- 2. STOW-RS bodies as sent by other clients -----------------------------------------------------------


BODY_CASES = {
    "chunked-unquoted-no-part-lengths": {"chunked": True, "quoted": False, "lengths": False},
    "content-length-quoted-part-lengths": {"chunked": False, "quoted": True, "lengths": True},
    "chunked-quoted-some-part-lengths": {"chunked": True, "quoted": True, "lengths": [True, False]},
    "preamble-and-epilogue": {"chunked": False, "quoted": False, "lengths": True,
                              "preamble": b"This is a preamble.\r\n", "epilogue": b"\r\nand an epilogue"},
}


@pytest.mark.parametrize("case", BODY_CASES, ids=list(BODY_CASES))
def test_stow_bodies_of_other_clients_are_stored(case: str, http: httpx.Client, pacs: LocalService) -> None:
    options = BODY_CASES[case]
    series = phantom_series(200 + len(case), 2)
    boundary = f"{generate_uid()[-12:]}-{case}"  # an Orthanc-like boundary with dashes and dots
    body = related_body(series.files, boundary, lengths=options["lengths"],
                        preamble=options.get("preamble", b""), epilogue=options.get("epilogue", b""))
    content = chunks(body) if options["chunked"] else body
    response = http.post("/dicom-web/studies", content=content,
                         headers={"content-type": related_type(boundary, options["quoted"])})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/dicom+json")
    answer = response.json()
    assert failed(answer) == []
    items = referenced(answer)
    assert sorted(item["sop"] for item in items) == sorted(series.sops)
    for item in items:
        assert item["class"] == pydicom.uid.CTImageStorage
        assert item["url"] == f"{pacs.url}/dicom-web/studies/{series.study}/series/{series.series}/instances/{item['sop']}"
    (job,) = jobs_of(http, series.study)
    assert job["instance_count"] == 2 and job["series_count"] == 1


def test_stow_to_its_study_url_is_200_and_resending_is_idempotent(http: httpx.Client, pacs: LocalService) -> None:
    series = phantom_series(301, 2)
    first = stow(http, series.files, study=series.study)
    assert first.status_code == 200, first.text
    assert first.json()["00081190"]["Value"] == [f"{pacs.url}/dicom-web/studies/{series.study}"]
    while_waiting = stow(http, series.files, study=series.study)  # re-sent before the quiet period ends
    assert while_waiting.status_code == 200, while_waiting.text
    (job,) = jobs_of(http, series.study)
    assert job["state"] == "waiting" and job["instance_count"] == 2
    done = wait_job(http, job["id"])
    assert done["state"] == "done" and done["instance_count"] == 2

    again = stow(http, series.files, study=series.study)
    assert again.status_code == 200, again.text
    assert sorted(i["sop"] for i in referenced(again.json())) == sorted(i["sop"] for i in referenced(first.json()))
    time.sleep(QUIET_S + 1.0)  # past the quiet period: a job made by the re-send would be queued by now
    (after,) = jobs_of(http, series.study)
    assert after["id"] == job["id"] and after["state"] == "done"
    assert after["instance_count"] == 2 and after["run_attempts"] == 1


def test_stow_of_another_study_to_a_study_url_is_409_and_stores_nothing(http: httpx.Client, pacs: LocalService) -> None:
    series = phantom_series(311, 2)
    url_study = generate_uid()
    response = stow(http, series.files, study=url_study)
    assert response.status_code == 409, response.text
    answer = response.json()
    assert referenced(answer) == []
    failures = failed(answer)
    assert sorted(f["sop"] for f in failures) == sorted(series.sops)
    assert all(f["reason"] == DOES_NOT_MATCH and f["class"] == pydicom.uid.CTImageStorage for f in failures)
    time.sleep(QUIET_S + 0.5)
    assert jobs_of(http, series.study) == [] and jobs_of(http, url_study) == []
    assert not (data_dir(pacs) / "instances" / series.study).exists()
    assert not (data_dir(pacs) / "instances" / url_study).exists()
    assert list((data_dir(pacs) / "incoming").iterdir()) == []


def test_stow_mixing_the_url_study_and_another_is_202(http: httpx.Client) -> None:
    right = phantom_series(321, 1)
    wrong = phantom_series(322, 1)
    response = stow(http, [right.files[0], wrong.files[0]], study=right.study)
    assert response.status_code == 202, response.text
    answer = response.json()
    assert [i["sop"] for i in referenced(answer)] == right.sops
    assert [(f["sop"], f["reason"]) for f in failed(answer)] == [(wrong.sops[0], DOES_NOT_MATCH)]
    (job,) = study_jobs_settled(http, right.study, 1)
    assert job["state"] == "done" and job["instance_count"] == 1
    assert jobs_of(http, wrong.study) == []


NOT_MULTIPART = {
    "application-dicom": "application/dicom",
    "form-data": "multipart/form-data; boundary=B",
    "text-plain": "text/plain",
    "related-of-json": 'multipart/related; type="application/dicom+json"; boundary=B',
    "related-without-boundary": 'multipart/related; type="application/dicom"',
    "none": None,
}


@pytest.mark.parametrize("kind", NOT_MULTIPART, ids=list(NOT_MULTIPART))
def test_a_body_that_is_not_multipart_related_dicom_is_415(kind: str, http: httpx.Client) -> None:
    series = phantom_series(331, 1)
    content_type = NOT_MULTIPART[kind]
    if content_type is None:
        body, headers = series.files[0], {}
    elif content_type.startswith("multipart/form-data"):
        body = (b'--B\r\nContent-Disposition: form-data; name="file"; filename="a.dcm"\r\n'
                b"Content-Type: application/dicom\r\n\r\n" + series.files[0] + b"\r\n--B--\r\n")
        headers = {"content-type": content_type}
    elif content_type.startswith("multipart/related"):
        body, headers = related_body(series.files, "B"), {"content-type": content_type}
    else:
        body, headers = series.files[0], {"content-type": content_type}
    response = http.post("/dicom-web/studies", content=body, headers=headers)
    assert_error(response, 415, "unsupported_media_type")
    assert jobs_of(http, series.study) == []


def test_a_body_cut_inside_a_part_keeps_the_parts_before_it(http: httpx.Client, pacs: LocalService) -> None:
    series = phantom_series(341, 2)
    body = related_body(series.files, "cut-here")
    cut = body.index(series.files[1]) + len(series.files[1]) // 2  # in the middle of the second file
    response = http.post("/dicom-web/studies", content=body[:cut], headers={"content-type": related_type("cut-here")})
    assert response.status_code == 202, response.text
    answer = response.json()
    assert [i["sop"] for i in referenced(answer)] == series.sops[:1]
    assert [f["reason"] for f in failed(answer)] == [CANNOT_UNDERSTAND]
    (job,) = study_jobs_settled(http, series.study, 1)
    assert job["state"] == "done" and job["instance_count"] == 1
    stored = sorted(p.stem for p in (data_dir(pacs) / "instances" / series.study / series.series).iterdir())
    assert stored == series.sops[:1]
    assert list((data_dir(pacs) / "incoming").iterdir()) == []


def test_a_cut_instance_or_garbage_fails_alone_with_c000(http: httpx.Client) -> None:
    series = phantom_series(351, 3)
    cut_file = series.files[1][: len(series.files[1]) - 3000]  # a whole part whose file lost its last pixels
    garbage = bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8))
    response = stow(http, [series.files[0], cut_file, series.files[2], garbage, b"DICM" * 10])
    assert response.status_code == 202, response.text
    answer = response.json()
    assert sorted(i["sop"] for i in referenced(answer)) == sorted([series.sops[0], series.sops[2]])
    failures = failed(answer)
    assert [f["reason"] for f in failures] == [CANNOT_UNDERSTAND] * 3
    assert failures[0]["sop"] == series.sops[1]  # the cut file is still identified
    (job,) = study_jobs_settled(http, series.study, 1)
    assert job["state"] == "done" and job["instance_count"] == 2


# --- memory: the body goes to disk, and a study over the limit is refused -------------------------------------


MAX_GROWTH_MB = 40
BIG_MB = 50


def zeros(megabytes: int, head: bytes = b"") -> Iterator[bytes]:
    yield head
    for _ in range(megabytes):
        yield bytes(1 << 20)


@pytest.fixture(scope="module")
def small_limit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalService]:
    with local_service(REPOSITORY, tmp_path_factory.mktemp("dicomweb-1mb"), env={"MEDSEG_MAX_STUDY_MB": "1"}) as running:
        yield running


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_study_over_the_limit_is_413_and_not_buffered(framing: str, small_limit: LocalService) -> None:
    head = b"--B\r\nContent-Type: application/dicom\r\n\r\n"
    headers = {"content-type": related_type("B", quoted=False)}
    if framing == "content-length":
        headers["content-length"] = str(len(head) + BIG_MB * 2**20)
    with client_for(small_limit) as client, PeakRss(small_limit.process.pid) as rss:
        started = time.monotonic()
        response = client.post("/dicom-web/studies", content=zeros(BIG_MB, head), headers=headers)
        elapsed = time.monotonic() - started
    assert_error(response, 413, "payload_too_large")
    assert rss.growth_mb < MAX_GROWTH_MB, f"the service grew by {rss.growth_mb:.0f} MB on a refused {BIG_MB} MB body"
    assert elapsed < 30
    with client_for(small_limit) as client:  # and it still takes a study under the limit
        series = phantom_series(361, 1)
        assert stow(client, series.files).status_code == 200
    assert not (data_dir(small_limit) / "incoming").exists() or list((data_dir(small_limit) / "incoming").iterdir()) == []


def big_secondary_capture(study: str, series: str, index: int) -> bytes:
    """A ~4.9 MB OT image no route takes (stored, never a job)."""
    ds = read(write_ct_slice(np.zeros((1600, 1600), np.float32), (0.5, 0.5), modality="OT"), pixels=True)
    ds.PixelData = np.random.default_rng(index).integers(0, 4096, (1600, 1600), dtype=np.uint16).tobytes()
    return rehome(ds, study, series, InstanceNumber=index + 1)


def test_a_large_study_is_streamed_to_disk(http: httpx.Client, pacs: LocalService) -> None:
    study, series = generate_uid(), generate_uid()
    files = [big_secondary_capture(study, series, i) for i in range(10)]
    body = related_body(files, "big")
    assert len(body) > 45 * 2**20
    with PeakRss(pacs.process.pid) as rss:
        response = http.post("/dicom-web/studies", content=chunks(body, 1 << 16), headers={"content-type": related_type("big")})
    assert response.status_code == 200, response.text
    assert len(referenced(response.json())) == 10
    assert rss.growth_mb < MAX_GROWTH_MB, f"the service grew by {rss.growth_mb:.0f} MB receiving a {len(body) >> 20} MB study"
    stored = list((data_dir(pacs) / "instances" / study / series).iterdir())
    assert sorted(p.read_bytes() for p in stored) == sorted(files)
    assert jobs_of(http, study) == []


# --- 3. non-images: stored and acknowledged, never processed ----------------------------------------------


def key_object_or_presentation_state(study: str, modality: str) -> bytes:
    """A minimal KO (Key Object Selection Document) or PR (Grayscale Softcopy Presentation State)."""
    sop_class = {"KO": "1.2.840.10008.5.1.4.1.1.88.59", "PR": "1.2.840.10008.5.1.4.1.1.11.1"}[modality]
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.Modality = modality
    ds.PatientName, ds.PatientID = "Phantom^Liver", "PHANTOM-001"
    ds.ContentDate, ds.ContentTime, ds.InstanceNumber, ds.SeriesNumber = "20240102", "120000", 1, 50
    return rehome(ds, study)


def test_non_images_are_stored_and_acknowledged_but_never_processed(http: httpx.Client, pacs: LocalService) -> None:
    ct = phantom_series(401, 3)
    frame_of_reference = str(read(ct.files[0]).FrameOfReferenceUID)
    scout = write_localizer(make_ct_slice(np.random.default_rng(402), shape=(64, 64)).hu, SPACING_MM,
                            study_uid=ct.study, frame_of_reference_uid=frame_of_reference)
    scout_in_series = rehome(scout, ct.study, ct.series, InstanceNumber=99)
    others = {
        "SR": rehome(get_testdata_file("test-SR.dcm"), ct.study),
        "dose SR": rehome(get_testdata_file("test-SR.dcm"), ct.study, SOPClassUID="1.2.840.10008.5.1.4.1.1.88.67"),
        "SEG": rehome(get_testdata_file("liver_1frame.dcm"), ct.study),
        "RT dose": rehome(get_testdata_file("rtdose.dcm"), ct.study),
        "KO": key_object_or_presentation_state(ct.study, "KO"),
        "PR": key_object_or_presentation_state(ct.study, "PR"),
        "localizer series": scout,
    }
    sent = [*ct.files, scout_in_series, *others.values()]
    response = stow(http, sent)
    assert response.status_code == 200, response.text
    assert sorted(i["sop"] for i in referenced(response.json())) == sorted(sop_uid(f) for f in sent)

    (job,) = study_jobs_settled(http, ct.study, 1)
    time.sleep(QUIET_S + 1.0)  # nothing else turns into a job later
    (job,) = jobs_of(http, ct.study)
    assert job["state"] == "done", job
    assert [s["uid"] for s in job["series"]] == [ct.series]
    assert job["instance_count"] == 3  # the localizer of the series is not part of it
    sources = {sop for _, _, sop in seg_of_job(http, job).get_source_image_uids()}
    assert sources == set(ct.sops)
    for name, data in [*others.items(), ("localizer in the CT series", scout_in_series)]:
        ds = read(data)
        path = data_dir(pacs) / "instances" / ct.study / str(ds.SeriesInstanceUID) / f"{ds.SOPInstanceUID}.dcm"
        assert path.read_bytes() == data, f"the {name} was not stored as sent"


def test_our_own_outputs_sent_back_are_stored_without_a_job(processed: dict[str, Any], http: httpx.Client) -> None:
    series: Series = processed["series"]
    client: DICOMwebClient = processed["client"]
    (result,) = processed["job"]["results"]
    seg = client.retrieve_instance(series.study, result["series_uid"], result["sop_instance_uid"])
    # a CT image made by this service (Manufacturer medseg-serve), e.g. a derived image, in a new series
    ours = rehome(series.files[0], series.study, Manufacturer="medseg-serve")
    response = stow(http, [to_bytes(seg), ours])
    assert response.status_code == 200, response.text
    assert sorted(i["sop"] for i in referenced(response.json())) == sorted([result["sop_instance_uid"], sop_uid(ours)])
    time.sleep(QUIET_S + 1.5)
    (job,) = jobs_of(http, series.study)  # still the one job of the source series: the loop is closed
    assert job["id"] == processed["job"]["id"] and job["state"] == "done" and job["run_attempts"] == 1
    (listed,) = http.get(f"/dicom-web/studies/{series.study}/series").json()
    assert listed["00201209"]["Value"] == [1]


# --- 4. series that end in named job states -----------------------------------------------------------------


def test_a_second_series_of_another_size_is_its_own_job(http: httpx.Client, numbers: dict[int, int]) -> None:
    small = phantom_series(501, 2, shape=(64, 64))
    large = phantom_series(502, 2, shape=(96, 80), study=small.study)
    response = stow(http, [small.files[0], large.files[0], small.files[1], large.files[1]])
    assert response.status_code == 200, response.text
    jobs = study_jobs_settled(http, small.study, 2)
    by_series = {job["series"][0]["uid"]: job for job in jobs}
    assert set(by_series) == {small.series, large.series}
    for series, shape in ((small, (64, 64)), (large, (96, 80))):
        job = by_series[series.series]
        assert job["state"] == "done", job
        assert job["series_count"] == 1 and job["instance_count"] == 2
        seg = seg_of_job(http, job)
        assert {sop for _, _, sop in seg.get_source_image_uids()} == set(series.sops)
        assert seg_labels(seg, series.sops[0], numbers).shape == (1, *shape)


@pytest.fixture(scope="module")
def mixed_size_job(http: httpx.Client) -> dict[str, Any]:
    """A job whose series mixes 64×64 and 96×96 slices, once it has ended."""
    first = phantom_series(511, 2, shape=(64, 64))
    frame_of_reference = str(read(first.files[0]).FrameOfReferenceUID)
    other = phantom_series(512, 1, shape=(96, 96), study=first.study, series=first.series,
                           frame_of_reference=frame_of_reference)
    assert stow(http, [*first.files, *other.files]).status_code == 200
    (job,) = study_jobs_settled(http, first.study, 1)
    return job


def test_mixed_sizes_inside_a_series_fail_with_mixed_size(mixed_size_job: dict[str, Any]) -> None:
    job = mixed_size_job
    assert job["state"] == "failed", job
    assert job["reason"].startswith("mixed_size"), job["reason"]
    assert "64x64" in job["reason"] and "96x96" in job["reason"]
    assert job["instance_count"] == 3 and job["results"] == []
    assert_no_identifiers(job["reason"], "the failure reason")


def test_a_missing_slice_is_fine_for_a_2d_model(http: httpx.Client, numbers: dict[int, int]) -> None:
    series = phantom_series(521, 5)
    kept = [0, 1, 3, 4]  # slice 2 never arrives
    assert stow(http, [series.files[i] for i in kept]).status_code == 200
    (job,) = study_jobs_settled(http, series.study, 1)
    assert job["state"] == "done", job
    assert job["instance_count"] == 4
    seg = seg_of_job(http, job)
    assert sorted(sop for _, _, sop in seg.get_source_image_uids()) == sorted(series.sops[i] for i in kept)
    for i in kept:
        (labels,) = seg_labels(seg, series.sops[i], numbers)
        np.testing.assert_array_equal(labels, png_route(http, series.files[i]))


def test_an_instance_resent_under_another_series_does_not_break_the_waiting_job(http: httpx.Client) -> None:
    """The same SOP instance UID arrives again in another series (a corrected or re-labelled
    push) while the first series waits: the first series' job must still be about one series."""
    series = phantom_series(531, 2)
    assert stow(http, series.files).status_code == 200
    moved = read(series.files[0], pixels=True)
    moved.SeriesInstanceUID = generate_uid()
    response = stow(http, [to_bytes(moved)])
    assert response.status_code in (200, 202, 409), response.text
    jobs = study_jobs_settled(http, series.study, len(jobs_of(http, series.study)))
    original = next(job for job in jobs if series.series in [s["uid"] for s in job["series"]])
    assert original["state"] == "done", original


# --- 5. output=seg on POST /v1/segment -----------------------------------------------------------------------


def post_segment(http: httpx.Client, data: bytes, output: str, name: str = "x.dcm", mime: str = "application/dicom") -> httpx.Response:
    return http.post("/v1/segment", files={"file": (name, data, mime)}, data={"model": "swtr_unet", "output": output})


def test_output_seg_of_a_single_frame_ct_equals_output_png(http: httpx.Client, numbers: dict[int, int]) -> None:
    phantom = make_ct_slice(np.random.default_rng(601), shape=(256, 256), spacing_mm=SPACING_MM)
    data = write_ct_slice(phantom.hu, SPACING_MM, transfer_syntax="rle")
    response = post_segment(http, data, "seg")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/dicom"
    seg = segmentation(response.content)
    source = read(data)
    assert seg.StudyInstanceUID == source.StudyInstanceUID and seg.SeriesInstanceUID != source.SeriesInstanceUID
    assert [sop for _, _, sop in seg.get_source_image_uids()] == [source.SOPInstanceUID]
    (labels,) = seg_labels(seg, source.SOPInstanceUID, numbers)
    expected = png_labels(post_segment(http, data, "png").content)
    np.testing.assert_array_equal(labels, expected)
    assert dice(labels > 0, phantom.labels > 0) >= 0.85


def test_output_seg_of_an_enhanced_multiframe_ct_equals_output_png(http: httpx.Client, numbers: dict[int, int]) -> None:
    rng = np.random.default_rng(611)
    stack = np.stack([make_ct_slice(rng, shape=(128, 128), spacing_mm=(3.0, 3.0)).hu for _ in range(3)])
    data = write_multiframe(stack, (3.0, 3.0), SLICE_MM)
    response = post_segment(http, data, "seg")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/dicom"
    seg = segmentation(response.content)
    source = read(data)
    assert [sop for _, _, sop in seg.get_source_image_uids()] == [source.SOPInstanceUID]
    labels = seg_labels(seg, source.SOPInstanceUID, numbers, frames=[1, 2, 3])
    tiled = png_labels(post_segment(http, data, "png").content)
    np.testing.assert_array_equal(labels, tiled.reshape(3, 128, 128))


def test_an_enhanced_multiframe_ct_stored_by_stow_gets_a_seg_equal_to_output_png(
    http: httpx.Client, numbers: dict[int, int]
) -> None:
    rng = np.random.default_rng(612)
    stack = np.stack([make_ct_slice(rng, shape=(128, 128), spacing_mm=(3.0, 3.0)).hu for _ in range(4)])
    data = write_multiframe(stack, (3.0, 3.0), SLICE_MM, transfer_syntax="rle")
    source = read(data)
    assert stow(http, [data]).status_code == 200
    (job,) = study_jobs_settled(http, str(source.StudyInstanceUID), 1)
    assert job["state"] == "done" and job["instance_count"] == 1, job["reason"]
    (result,) = job["results"]
    (seg_bytes,) = related_parts_of(http.get(result["url"]))
    seg = segmentation(seg_bytes)
    labels = seg_labels(seg, source.SOPInstanceUID, numbers, frames=[1, 2, 3, 4])
    tiled = png_labels(post_segment(http, data, "png").content)
    np.testing.assert_array_equal(labels, tiled.reshape(4, 128, 128))


def related_parts_of(response: httpx.Response) -> list[bytes]:
    from clients.http_client import related_parts

    assert response.status_code == 200, response.text
    return related_parts(response.headers["content-type"], response.content)


def test_output_seg_of_a_png_is_415(http: httpx.Client) -> None:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(buffer, format="PNG")
    assert_error(post_segment(http, buffer.getvalue(), "seg", "x.png", "image/png"), 415, "unsupported_media_type")


# --- 7. the job routes -----------------------------------------------------------------------------------------


def test_retry_runs_a_failed_job_again_and_it_fails_the_same_way(http: httpx.Client, mixed_size_job: dict[str, Any]) -> None:
    job = mixed_size_job
    assert job["state"] == "failed"
    response = http.post(f"/v1/jobs/{job['id']}/retry")
    assert response.status_code == 202, response.text
    requeued = response.json()
    assert requeued["state"] in ("queued", "running") and requeued["reason"] is None
    assert requeued["queued_at"] > job["finished_at"]

    def failed_again() -> dict[str, Any] | None:
        current = http.get(f"/v1/jobs/{job['id']}").json()
        ran_again = current["started_at"] is not None and current["started_at"] >= requeued["queued_at"]
        return current if current["state"] == "failed" and ran_again else None

    again = wait_for(failed_again, 30, "the retried job to run and fail again",
                     show=lambda: http.get(f"/v1/jobs/{job['id']}").json())
    assert again["reason"] == job["reason"]
    assert again["instance_count"] == job["instance_count"] and again["results"] == []
    assert again["run_attempts"] >= 1


def test_retry_of_a_done_job_changes_nothing(http: httpx.Client, processed: dict[str, Any]) -> None:
    job = processed["job"]
    response = http.post(f"/v1/jobs/{job['id']}/retry")
    assert response.status_code == 200, response.text
    assert response.json()["state"] == "done" and response.json()["run_attempts"] == 1


def test_job_route_errors(http: httpx.Client) -> None:
    assert_error(http.get("/v1/jobs/nonexistent"), 404, "not_found")
    assert_error(http.post("/v1/jobs/nonexistent/retry"), 404, "not_found")
    assert_error(http.get("/v1/jobs", params={"study": "garbage"}), 400, "bad_input")
    assert_error(http.get("/v1/jobs", params={"limit": "0"}), 400, "bad_input")
    assert http.get("/v1/jobs", params={"study": generate_uid()}).json() == {"jobs": []}


# --- 6. durability: SIGKILL and restart on the same data directory -----------------------------------------


def test_acknowledged_instances_survive_a_sigkill_before_the_job_runs(tmp_path: Path, numbers: dict[int, int]) -> None:
    env = {"MEDSEG_SERIES_QUIET_S": "3"}
    series = phantom_series(701, 6)
    with local_service(REPOSITORY, tmp_path, env=env) as first, client_for(first) as client:
        response = stow(client, series.files)
        kill_tree(first.process)  # at once: the job is still waiting
    assert response.status_code == 200, response.text
    acknowledged = [i["sop"] for i in referenced(response.json())]
    assert sorted(acknowledged) == sorted(series.sops)
    assert (tmp_path / "data" / "jobs.sqlite3").exists()

    with local_service(REPOSITORY, tmp_path, env=env) as second, client_for(second) as client:
        (job,) = jobs_of(client, series.study)
        assert job["instance_count"] == len(acknowledged)
        done = wait_job(client, job["id"], timeout_s=60)
        assert done["state"] == "done", done
        assert done["instance_count"] == len(acknowledged) and done["run_attempts"] == 1
        seg = seg_of_job(client, done)
        assert sorted(sop for _, _, sop in seg.get_source_image_uids()) == sorted(acknowledged)
        assert_no_identifiers(second.log_text(), "the restarted service's log")


def test_a_job_killed_while_running_runs_again_after_a_restart(tmp_path: Path) -> None:
    env = {"MEDSEG_SERIES_QUIET_S": "1"}
    series = phantom_series(711, 40, shape=(256, 256))
    with local_service(REPOSITORY, tmp_path, env=env) as first, client_for(first) as client:
        response = stow(client, series.files)
        assert response.status_code == 200, response.text
        (job,) = jobs_of(client, series.study)
        running = wait_for(lambda: (j := client.get(f"/v1/jobs/{job['id']}").json())["state"] != "waiting"
                           and j["state"] != "queued" and j, 30, "the job to start", poll_s=0.05)
        assert running["state"] == "running", running
        kill_tree(first.process)

    with local_service(REPOSITORY, tmp_path, env=env) as second, client_for(second) as client:
        done = wait_job(client, job["id"], timeout_s=120)
        assert done["state"] == "done", done
        assert done["run_attempts"] >= 2 and done["instance_count"] == 40
        assert len(done["results"]) == 1
        seg = seg_of_job(client, done)
        assert sorted(sop for _, _, sop in seg.get_source_image_uids()) == sorted(series.sops)
        (listed,) = client.get(f"/dicom-web/studies/{series.study}/series").json()  # no SEG of the killed run
        assert listed["00201209"]["Value"] == [1]
        assert "interrupted by a stop run again" in second.log_text()


# --- last: the shared service's log -----------------------------------------------------------------------------


def test_the_service_log_has_no_patient_identifier_and_no_traceback(pacs: LocalService) -> None:
    log = pacs.log_text()
    assert_no_identifiers(log, "the service log")
    assert "Traceback" not in log
