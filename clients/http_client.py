"""MedsegClient: a thin, typed httpx client of the service's routes."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from clients.stream_client import StreamReport, stream_frames
from services.dicomweb.multipart import PartData, PartEnd, RelatedParts, dicom_parts_body, related_content_type

FINAL_JOB_STATES = frozenset({"done", "failed", "delivered", "delivery_failed"})


@dataclass
class StowSummary:
    """What a STOW of files stored: SOP instance UIDs by study, and the refused ones' reasons."""

    stored: dict[str, list[str]] = field(default_factory=dict)  # study UID → SOP instance UIDs
    failed: list[dict[str, Any]] = field(default_factory=list)  # FailedSOPSequence items (DICOM JSON)


def _study_of(retrieve_url: str) -> str:
    """The study UID in a RetrieveURL (``.../studies/{study}/series/...``)."""
    parts = retrieve_url.split("/")
    return parts[parts.index("studies") + 1] if "studies" in parts else ""


def related_parts(content_type: str, body: bytes) -> list[bytes]:
    """The parts of a multipart/related answer (WADO-RS)."""
    parser = RelatedParts(related_content_type(content_type).boundary)
    parts, current = [], bytearray()
    for event in parser.feed(body):
        if isinstance(event, PartData):
            current += event.data
        elif isinstance(event, PartEnd):
            parts.append(bytes(current))
            current = bytearray()
    parser.finish()
    return parts


class MedsegHTTPError(RuntimeError):
    """A non-2xx answer: ``status``, the service's error ``code`` and its ``message``."""

    def __init__(self, status: int, code: str, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message, self.retry_after_s = status, code, message, retry_after_s


def _raise_for_error(response: httpx.Response) -> None:
    if response.is_success:
        return
    try:
        body = response.json()
        code, message = body.get("error", "http_error"), body.get("message", response.text)
    except ValueError:
        code, message = "http_error", response.text[:500]
    retry = response.headers.get("retry-after")
    raise MedsegHTTPError(response.status_code, code, message, float(retry) if retry else None)


class MedsegClient:
    """``with MedsegClient("http://127.0.0.1:3000") as c: c.segment(Path("ct.dcm"), "swtr_unet")``."""

    def __init__(self, url: str, timeout_s: float = 120.0) -> None:
        self._http = httpx.Client(base_url=url, timeout=timeout_s)

    def __enter__(self) -> MedsegClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def models(self) -> list[dict[str, Any]]:
        """GET /v1/models."""
        response = self._http.get("/v1/models")
        _raise_for_error(response)
        return response.json()["models"]

    def segment_bytes(
        self,
        data: bytes,
        model: str,
        output: str = "png",
        filename: str = "upload",
        reference: bytes | None = None,
        threshold: float | None = None,
        classes: list[int | str] | None = None,
    ) -> httpx.Response:
        """POST /v1/segment with raw file bytes (frame-pair models: optional ``reference`` frame
        bytes; class-prompted models: optional ``classes``, ids or names; both: sigmoid
        ``threshold``); raises MedsegHTTPError on an error answer."""
        files = {"file": (filename, data, "application/octet-stream")}
        if reference is not None:
            files["reference"] = ("reference", reference, "application/octet-stream")
        fields = {"model": model, "output": output}
        if threshold is not None:
            fields["threshold"] = str(threshold)
        if classes is not None:
            fields["classes"] = ",".join(str(c) for c in classes)
        response = self._http.post("/v1/segment", files=files, data=fields)
        _raise_for_error(response)
        return response

    def segment(
        self,
        path: Path,
        model: str,
        output: str = "png",
        reference: Path | None = None,
        threshold: float | None = None,
        classes: list[int | str] | None = None,
    ) -> bytes | dict[str, Any]:
        """Segment a DICOM / PNG / JPEG file: PNG bytes for png/overlay, a dict for json."""
        reference_data = reference.read_bytes() if reference is not None else None
        response = self.segment_bytes(path.read_bytes(), model, output, path.name, reference_data, threshold, classes)
        return response.json() if output == "json" else response.content

    def stow(self, paths: Sequence[Path], batch: int = 100) -> StowSummary:
        """STOW-RS the DICOM files to POST /dicom-web/studies, ``batch`` files per request
        (each body streamed, never built in memory); 200 and 202 answers are summed up, a
        400 / 409 / 415 raises MedsegHTTPError (with the failures in its message)."""
        summary = StowSummary()
        for start in range(0, len(paths), batch):
            boundary = uuid.uuid4().hex
            response = self._http.post(
                "/dicom-web/studies",
                content=dicom_parts_body(paths[start:start + batch], boundary),
                headers={
                    "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                    "Accept": "application/dicom+json",
                },
            )
            if response.status_code in (400, 409) and response.headers.get("content-type", "").startswith("application/dicom+json"):
                raise MedsegHTTPError(response.status_code, "stow_refused", str(response.json().get("00081198")))
            _raise_for_error(response)
            body = response.json()
            for item in (body.get("00081199") or {}).get("Value", []):
                url = item.get("00081190", {}).get("Value", [""])[0]
                summary.stored.setdefault(_study_of(url), []).append(item["00081155"]["Value"][0])
            summary.failed += (body.get("00081198") or {}).get("Value", [])
        return summary

    def jobs(self, study: str | None = None) -> list[dict[str, Any]]:
        """GET /v1/jobs (of one study), newest first."""
        response = self._http.get("/v1/jobs", params={"study": study} if study else None)
        _raise_for_error(response)
        return response.json()["jobs"]

    def wait_for_jobs(self, study: str, timeout_s: float = 600.0, poll_s: float = 1.0) -> list[dict[str, Any]]:
        """The study's jobs once there is at least one and every one has ended (done, failed,
        delivered, delivery_failed); TimeoutError with the last states otherwise."""
        deadline = time.monotonic() + timeout_s
        while True:
            jobs = self.jobs(study)
            if jobs and all(job["state"] in FINAL_JOB_STATES for job in jobs):
                return jobs
            if time.monotonic() > deadline:
                raise TimeoutError(f"jobs not finished after {timeout_s:g} s: {[job['state'] for job in jobs]}")
            time.sleep(poll_s)

    def retrieve(self, url: str) -> list[bytes]:
        """WADO-RS GET of a series or instance URL: the DICOM files."""
        response = self._http.get(url, headers={"Accept": 'multipart/related; type="application/dicom"'})
        _raise_for_error(response)
        return related_parts(response.headers["content-type"], response.content)

    async def stream(self, frames: Iterable[bytes] | AsyncIterable[bytes], model: str, **options: Any) -> StreamReport:
        """Stream encoded frames (PNG / JPEG bytes) over WS /v1/stream; ``options`` as
        :func:`clients.stream_client.stream_frames` (output, classes, threshold, reference, fps...)."""
        return await stream_frames(str(self._http.base_url), frames, model, **options)

    def segment_volume(self, channels: dict[str, Path], model: str, output: str = "nifti") -> bytes | dict[str, Any]:
        """POST /v1/segment/volume: NIfTI files by channel name (``t1``... or one 4-D ``file``):
        gzip NIfTI label-map bytes for nifti, a dict for json."""
        files = {name: (path.name, path.read_bytes(), "application/octet-stream") for name, path in channels.items()}
        response = self._http.post("/v1/segment/volume", files=files, data={"model": model, "output": output})
        _raise_for_error(response)
        return response.json() if output == "json" else response.content
