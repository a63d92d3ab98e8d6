"""Helpers of the DICOMweb integration tests (tests/integration/test_dicomweb.py): phantom series,
hand-built multipart/related bodies, the Store Instances Response read as JSON, job polling, SEG
read-back with highdicom and the memory of a service's process tree."""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import highdicom as hd
import httpx
import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from export.phantoms.ct_liver import CtPhantom, make_ct_slice
from export.phantoms.dicom_writer import PATIENT_BIRTH_DATE, PATIENT_ID, PATIENT_NAME, can_write, write_series

REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"
PATIENT_IDENTIFIERS = (PATIENT_NAME, PATIENT_ID, PATIENT_BIRTH_DATE)
SPACING_MM = (1.5, 1.5)  # 256 pixels cover the phantom's whole abdomen (384 mm)
SLICE_MM = 2.5
TERMINAL = frozenset({"done", "failed", "delivered", "delivery_failed"})

# FailureReason (0008,1197) values of PS3.18 Table 10.5.3-3
DOES_NOT_MATCH, CANNOT_UNDERSTAND = 0xA900, 0xC000


# --- DICOM files ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Series:
    """One written series: the phantoms (truth), the files in slice order and their UIDs."""

    phantoms: list[CtPhantom]
    files: list[bytes]
    study: str
    series: str

    @property
    def sops(self) -> list[str]:
        return [sop_uid(data) for data in self.files]


def phantom_series(
    seed: int,
    count: int,
    *,
    shape: tuple[int, int] = (64, 64),
    study: str | None = None,
    series: str | None = None,
    frame_of_reference: str | None = None,
    syntaxes: Sequence[str] | None = None,
    rescales: Sequence[tuple[float, float]] | None = None,
    description: str = "phantom abdomen",
) -> Series:
    """``count`` CT phantom slices as one single-frame series (z = 0, 2.5, ... mm). A transfer
    syntax without an installed encoder is replaced by explicit VR little endian."""
    rng = np.random.default_rng(seed)
    phantoms = [make_ct_slice(rng, shape=shape, spacing_mm=SPACING_MM) for _ in range(count)]
    study = study or generate_uid()
    series = series or generate_uid()
    usable = [s if can_write(s) else "explicit_le" for s in (syntaxes or ["explicit_le"] * count)]
    files = write_series(
        np.stack([p.hu for p in phantoms]), SPACING_MM, SLICE_MM, transfer_syntaxes=usable,  # type: ignore[arg-type]
        study_uid=study, series_uid=series, frame_of_reference_uid=frame_of_reference,
        series_description=description, rescale=list(rescales or [(1.0, -1024.0)] * count),
    )
    return Series(phantoms, files, study, series)


def read(data: bytes, pixels: bool = False) -> Dataset:
    return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=not pixels)


def sop_uid(data: bytes) -> str:
    return str(read(data).SOPInstanceUID)


def to_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def rehome(source: bytes | str | Path | Dataset, study: str, series: str | None = None, **attributes: Any) -> bytes:
    """A copy of a DICOM file (bytes, path or dataset) moved into ``study`` (and ``series``, else a
    new one), with a new SOP instance UID and ``attributes`` set."""
    if isinstance(source, Dataset):
        ds = source
    else:
        ds = pydicom.dcmread(io.BytesIO(source) if isinstance(source, bytes) else source)
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series or generate_uid()
    ds.SOPInstanceUID = generate_uid()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    return to_bytes(ds)


# --- STOW-RS requests and answers --------------------------------------------------------------------


def related_body(parts: Iterable[bytes], boundary: str, *, lengths: bool | Sequence[bool] = True,
                 preamble: bytes = b"", epilogue: bytes = b"") -> bytes:
    """A multipart/related body, one application/dicom part per file; ``lengths`` says which
    parts carry their own Content-Length."""
    parts = list(parts)
    flags = [lengths] * len(parts) if isinstance(lengths, bool) else list(lengths)
    out = [preamble]
    for data, with_length in zip(parts, flags, strict=True):
        header = "Content-Type: application/dicom\r\n"
        if with_length:
            header += f"Content-Length: {len(data)}\r\n"
        out += [f"--{boundary}\r\n{header}\r\n".encode(), data, b"\r\n"]
    out.append(f"--{boundary}--\r\n".encode() + epilogue)
    return b"".join(out)


def related_type(boundary: str, quoted: bool = True) -> str:
    if quoted:
        return f'multipart/related; type="application/dicom"; boundary="{boundary}"'
    return f"multipart/related; type=application/dicom; boundary={boundary}"


def chunks(body: bytes, size: int = 7919) -> Iterator[bytes]:
    """The body in odd-sized pieces (delimiters fall across chunk edges)."""
    for start in range(0, len(body), size):
        yield body[start : start + size]


def referenced(answer: dict[str, Any]) -> list[dict[str, str]]:
    """ReferencedSOPSequence items as {class, sop, url}."""
    return [
        {
            "class": item["00081150"]["Value"][0],
            "sop": item["00081155"]["Value"][0],
            "url": item.get("00081190", {}).get("Value", [None])[0],
        }
        for item in answer.get("00081199", {}).get("Value", [])
    ]


def failed(answer: dict[str, Any]) -> list[dict[str, Any]]:
    """FailedSOPSequence items as {class, sop, reason} (None where absent)."""
    return [
        {
            "class": item.get("00081150", {}).get("Value", [None])[0],
            "sop": item.get("00081155", {}).get("Value", [None])[0],
            "reason": item["00081197"]["Value"][0],
        }
        for item in answer.get("00081198", {}).get("Value", [])
    ]


def stow(http: httpx.Client, files: Sequence[bytes], study: str | None = None, **kwargs: Any) -> httpx.Response:
    """POST /dicom-web/studies[/{study}] with a Content-Length body, quoted parameters."""
    boundary = "b-" + generate_uid().replace(".", "")[-20:]
    url = "/dicom-web/studies" + (f"/{study}" if study else "")
    return http.post(url, content=related_body(files, boundary), headers={
        "content-type": related_type(boundary), "accept": "application/dicom+json"}, **kwargs)


# --- jobs ------------------------------------------------------------------------------------------


def jobs_of(http: httpx.Client, study: str) -> list[dict[str, Any]]:
    response = http.get("/v1/jobs", params={"study": study})
    assert response.status_code == 200, response.text
    return response.json()["jobs"]


def wait_for(condition: Callable[[], Any], timeout_s: float, what: str, poll_s: float = 0.25,
             show: Callable[[], Any] | None = None) -> Any:
    """The first truthy value of ``condition()``; AssertionError after ``timeout_s`` (with
    ``show()``, what was seen last, in the message)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            seen = f"; last seen: {show()}" if show is not None else ""
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}{seen}")
        time.sleep(poll_s)


def wait_job(http: httpx.Client, job_id: str, states: Iterable[str] = TERMINAL, timeout_s: float = 60) -> dict[str, Any]:
    states = frozenset(states)

    def reached() -> dict[str, Any] | None:
        response = http.get(f"/v1/jobs/{job_id}")
        assert response.status_code == 200, response.text
        job = response.json()
        return job if job["state"] in states else None

    return wait_for(reached, timeout_s, f"job {job_id} in {sorted(states)}", show=lambda: http.get(f"/v1/jobs/{job_id}").json())


def study_jobs_settled(http: httpx.Client, study: str, count: int, timeout_s: float = 60) -> list[dict[str, Any]]:
    """The study's jobs once there are ``count`` of them, every one in a terminal state."""

    def settled() -> list[dict[str, Any]] | None:
        jobs = jobs_of(http, study)
        return jobs if len(jobs) == count and all(j["state"] in TERMINAL for j in jobs) else None

    return wait_for(settled, timeout_s, f"{count} settled job(s) of the study",
                    show=lambda: [(j["state"], j["reason"]) for j in jobs_of(http, study)])


# --- SEG and PNG read-back -----------------------------------------------------------------------------


def segmentation(data: bytes | Dataset) -> hd.seg.Segmentation:
    ds = data if isinstance(data, Dataset) else pydicom.dcmread(io.BytesIO(data))
    return hd.seg.Segmentation.from_dataset(ds)


def seg_labels(seg: hd.seg.Segmentation, sop: str, numbers: dict[int, int], frames: Sequence[int] | None = None) -> np.ndarray:
    """The label-id map (frames, rows, cols) of one source instance in a SEG; ``numbers`` is
    label id → segment number (services.codecs.seg.segment_numbers)."""
    if frames is None:
        combined = seg.get_pixels_by_source_instance([sop], combine_segments=True)
    else:
        combined = seg.get_pixels_by_source_frame(sop, source_frame_numbers=list(frames), combine_segments=True)
    lut = np.zeros(max(numbers.values()) + 1, dtype=np.uint8)
    for label_id, number in numbers.items():
        lut[number] = label_id
    return lut[np.asarray(combined)]


def png_labels(content: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(content)))


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    total = int(pred.sum() + truth.sum())
    return 1.0 if total == 0 else 2.0 * float(np.logical_and(pred, truth).sum()) / total
