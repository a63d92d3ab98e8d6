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

    def segment_bytes(self, data: bytes, model: str, output: str = "png", filename: str = "upload") -> httpx.Response:
        """POST /v1/segment with raw file bytes; raises MedsegHTTPError on an error answer."""
        response = self._http.post(
            "/v1/segment",
            files={"file": (filename, data, "application/octet-stream")},
            data={"model": model, "output": output},
        )
        _raise_for_error(response)
        return response

    def segment(self, path: Path, model: str, output: str = "png") -> bytes | dict[str, Any]:
        """Segment a DICOM / PNG / JPEG file: PNG bytes for png/overlay, a dict for json."""
        response = self.segment_bytes(path.read_bytes(), model, output, filename=path.name)
        return response.json() if output == "json" else response.content
