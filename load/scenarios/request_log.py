"""A locustfile with a listener only: one CSV row per request event, for fault runs (load/faults.py).

    LOAD_REQUEST_LOG=build/run/requests.csv locust -f load/locustfile.py,load/scenarios/request_log.py ...

Without ``LOAD_REQUEST_LOG`` it does nothing. With it, every locust ``request`` event (HTTP
requests and custom events such as video frames) appends a row to that file (``COLUMNS``):
``start_s`` (wall-clock start, epoch seconds), ``name``, ``response_ms``, ``status`` (the HTTP
status; 0 when no answer came, empty for an event that is not an HTTP request), ``retry_after``
(1 when the answer had a Retry-After header), ``error`` (the ``error`` code of a JSON error body)
and ``exception`` (the failure's text, shortened; error bodies of this service carry no patient
data). Each row is flushed at once, so a run killed midway keeps what it logged.

It defines no user class and no shape: locust takes those from the other locustfiles. locust
(and its gevent monkey-patching) is imported only when the log is on, so the unit tests import
the row functions as they are.
"""

from __future__ import annotations

import csv
import json
import os
import time
from typing import IO, Any

ENV = "LOAD_REQUEST_LOG"
COLUMNS = ("start_s", "name", "response_ms", "status", "retry_after", "error", "exception")
EXCEPTION_CHARS = 120
ERROR_BODY_BYTES = 4096  # a JSON error body larger than this is not parsed for its code


def error_code(status: int | None, content_type: str | None, body: bytes | None) -> str:
    """The ``error`` field of a small JSON error body ("" otherwise)."""
    if status is None or status < 400 or not body or len(body) > ERROR_BODY_BYTES:
        return ""
    if not (content_type or "").lower().startswith("application/json"):
        return ""
    try:
        parsed = json.loads(body)
    except ValueError:
        return ""
    code = parsed.get("error") if isinstance(parsed, dict) else None
    return code[:40] if isinstance(code, str) else ""


def request_row(name: str, response_time: float, response: Any, exception: BaseException | None,
                start_time: float | None) -> list[str]:
    """The CSV row of one locust request event (``COLUMNS``). ``response``: locust's response
    object of an HTTP request (``status_code``, ``headers``, ``content``), None for custom events."""
    started = start_time if start_time is not None else time.time() - response_time / 1000
    status = getattr(response, "status_code", None) if response is not None else None
    headers = getattr(response, "headers", None) or {}
    retry_after = bool(status) and headers.get("Retry-After") is not None
    body = getattr(response, "content", None) if status else None
    text = "" if exception is None else " ".join(str(exception).split())[:EXCEPTION_CHARS] or type(exception).__name__
    return [f"{started:.3f}", name, f"{response_time:.1f}", "" if status is None else str(int(status)),
            "1" if retry_after else "0", error_code(status, headers.get("Content-Type"), body), text]


class RequestLog:
    """Appends rows to a CSV file, header first when the file is new, flushing each one."""

    def __init__(self, path: str) -> None:
        self.handle: IO[str] = open(path, "a", newline="", encoding="utf-8")  # noqa: SIM115 - open for the run
        self.writer = csv.writer(self.handle)
        if self.handle.tell() == 0:
            self.write(list(COLUMNS))

    def write(self, row: list[str]) -> None:
        self.writer.writerow(row)
        self.handle.flush()

    def on_request(self, name: str, response_time: float, response: Any = None, exception: BaseException | None = None,
                   start_time: float | None = None, **_kwargs: Any) -> None:
        self.write(request_row(name, response_time, response, exception, start_time))


if os.environ.get(ENV, "").strip():
    from locust import events

    _LOG = RequestLog(os.environ[ENV].strip())
    events.request.add_listener(_LOG.on_request)
