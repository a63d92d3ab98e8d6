"""MedsegClient: a thin, typed httpx client of the service's routes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx


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

    def segment_volume(self, channels: dict[str, Path], model: str, output: str = "nifti") -> bytes | dict[str, Any]:
        """POST /v1/segment/volume: NIfTI files by channel name (``t1``... or one 4-D ``file``):
        gzip NIfTI label-map bytes for nifti, a dict for json."""
        files = {name: (path.name, path.read_bytes(), "application/octet-stream") for name, path in channels.items()}
        response = self._http.post("/v1/segment/volume", files=files, data={"model": model, "output": output})
        _raise_for_error(response)
        return response.json() if output == "json" else response.content
