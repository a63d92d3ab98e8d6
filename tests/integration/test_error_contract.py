"""Every 5xx a client can meet, from any layer, follows the error contract: real `bentoml serve`.

- whatever escapes a route (a Rust panic is a ``BaseException``) is the contract's 500 at once,
  and the worker keeps serving: a probe service wired like the Segmenter, since the service's own
  routes no longer let such a thing escape;
- ``/readyz`` while the back end is unreachable, and the API then, are the contract's 503;
- past MEDSEG_REQUEST_TIMEOUT_S the client gets the contract's 504 at the deadline (not BentoML's
  body a margin later), and the request's inference stops;
- a streamed (chunked) body over the upload limit is a 413, not the 500 of the route reading it;
- past MEDSEG_MAX_CONCURRENCY requests in flight, the contract's 429 with Retry-After.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import ContextManager

import bentoml
import httpx
import numpy as np
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from load.local_service import ROOT, LocalService, free_port, local_service
from services.codecs.render import png_bytes
from services.errors import InternalError
from services.http.framework_errors import BENTOML_TIMEOUT_MARGIN_S, FrameworkErrors
from export.phantoms.dicom_writer import write_multiframe

pytestmark = pytest.mark.integration

REPOSITORY = ROOT / "model_repository"
PROBE_DEADLINE_S = 30.0  # far off: before the fix, a panic's client waited for the timeout past it
DEADLINE_S = 2
UPLOAD_LIMIT_MB = 16
INTERNAL = {"error": "internal_error", "message": InternalError().message}
PATIENT = "^".join(("DOE", "JANE"))  # built here, so that no source line in a logged stack shows it


# ------------------------------------------------------------------------------ probe service


class PanicException(BaseException):
    """What pyo3 raises for a Rust panic: a BaseException, so every ``except Exception`` misses it."""


async def mounted_panic(request: Request) -> Response:
    raise PanicException(f"{PATIENT}: index out of bounds")


async def mounted_crash(request: Request) -> Response:
    raise RuntimeError(PATIENT)


@bentoml.asgi_app(
    Starlette(routes=[Route("/panic", mounted_panic, methods=["POST"]), Route("/crash", mounted_crash, methods=["POST"])]),
    path="/mounted",
)
@bentoml.service(
    name="error-contract-probe",
    workers=1,
    traffic={"timeout": FrameworkErrors.bentoml_timeout_s(PROBE_DEADLINE_S)},
)
class ErrorProbe:
    """Routes that let things escape, behind the middleware wired as services/service.py wires it."""

    @bentoml.api(route="/panic")
    async def panic(self, n: int = 0) -> str:
        raise PanicException(f"{PATIENT}: index out of bounds")

    @bentoml.api(route="/ok")
    async def ok(self, n: int = 0) -> str:
        return "ok"


ErrorProbe.add_asgi_middleware(FrameworkErrors, deadline_s=PROBE_DEADLINE_S)


def serve(target: str, workdir: Path, env: dict[str, str], ready_path: str) -> ContextManager[LocalService]:
    """``bentoml serve target`` until the block exits, started once ``ready_path`` answers 200."""
    return local_service(REPOSITORY, workdir, env=env, target=target, ready_path=ready_path)


def segment(http: httpx.Client, data: bytes, name: str = "x.png") -> httpx.Response:
    return http.post("/v1/segment", files={"file": (name, data, "application/octet-stream")}, data={"model": "swtr_unet"})


# ------------------------------------------------------------------------------------ tests


def test_whatever_escapes_a_route_is_the_contract_500_at_once_and_the_worker_keeps_serving(tmp_path: Path) -> None:
    with serve(f"{__name__}:ErrorProbe", tmp_path, {}, "/readyz") as probe, httpx.Client(
        base_url=probe.url, timeout=10
    ) as http:
        for path in ("/panic", "/mounted/panic", "/mounted/crash"):
            started = time.monotonic()
            response = http.post(path, json={})
            assert time.monotonic() - started < 5, path
            assert (response.status_code, response.json()) == (500, INTERNAL), (path, response.text)
            assert "DOE" not in response.text
        assert (http.post("/ok", json={}).status_code, http.post("/ok", json={}).text) == (200, "ok")
        log = probe.log_text()
    assert log.count("unhandled PanicException") == 2 and "unhandled RuntimeError" in log
    assert "ASGI callable returned without starting response" not in log
    assert "Exception in ASGI application" not in log
    assert "DOE" not in log  # a native decoder's message can quote the upload


def test_not_ready_and_an_unreachable_backend_answer_the_contract_503(tmp_path: Path) -> None:
    nobody = f"127.0.0.1:{free_port()}"  # no Triton server there: the inference worker never gets ready
    env = {"MEDSEG_BACKEND": "triton", "TRITON_URLS": nobody}
    with serve("services.service:Segmenter", tmp_path, env, "/livez") as service, httpx.Client(
        base_url=service.url, timeout=30
    ) as http:
        ready = http.get("/readyz")  # BentoML's probe of its dependency: Starlette's plain text before
        refused = segment(http, png_bytes(np.zeros((32, 32), np.uint8)))
    for response in (ready, refused):
        assert response.status_code == 503, response.text
        assert response.json()["error"] == "backend_unavailable" and response.json()["message"]
        assert response.headers["retry-after"]


@pytest.fixture(scope="module")
def hurried(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalService]:
    """The embedded service with a 2 s request deadline."""
    env = {"MEDSEG_REQUEST_TIMEOUT_S": str(DEADLINE_S), "MEDSEG_MAX_UPLOAD_MB": str(UPLOAD_LIMIT_MB)}
    with local_service(REPOSITORY, tmp_path_factory.mktemp("hurried"), env=env) as running:
        yield running


ROWS = re.compile(r'^medseg_inference_batch_rows_sum\{[^}]*graph="swtr_unet"[^}]*\}\s+([0-9.e+]+)$', re.MULTILINE)


def rows_run(http: httpx.Client) -> float:
    """Slices the inference worker has run through swtr_unet so far (its batch histogram)."""
    return sum(float(value) for value in ROWS.findall(http.get("/metrics").text))


def test_past_the_deadline_the_contract_504_comes_at_the_deadline_and_the_inference_stops(hurried: LocalService) -> None:
    """A 720-frame CT stack: about 6 s of swtr_unet on this 2-core machine, 3× the deadline."""
    frames = 720
    stack = np.random.default_rng(0).normal(40, 60, (frames, 64, 64))
    dicom = write_multiframe(stack, (0.8, 0.8), 1.0)
    with httpx.Client(base_url=hurried.url, timeout=60) as http:
        before = rows_run(http)
        started = time.monotonic()
        response = segment(http, dicom, "stack.dcm")
        elapsed = time.monotonic() - started
        assert response.status_code == 504, response.text[:300]
        assert response.json() == {"error": "timeout", "message": f"the request did not complete within {DEADLINE_S} s"}
        assert "retry-after" not in response.headers
        assert DEADLINE_S <= elapsed < DEADLINE_S + BENTOML_TIMEOUT_MARGIN_S - 2  # ours, not BentoML's backstop
        # The request's graph calls stop: those queued in the worker are dropped (the worker's own
        # timeout cancels them), so the row count settles short of the whole stack.
        settled, last = None, rows_run(http)
        for _ in range(30):
            time.sleep(1)
            now = rows_run(http)
            if now == last:
                settled = now
                break
            last = now
        assert settled is not None, "the worker was still running the timed-out request's slices after 30 s"
        assert settled - before < frames
        assert segment(http, png_bytes(np.zeros((32, 32), np.uint8))).status_code == 200  # and serving on
    assert f"no response within the {DEADLINE_S:g} s deadline" in hurried.log_text()


def streamed_multipart(field: str, megabytes: int) -> Iterator[bytes]:
    """A multipart body sent chunked (no Content-Length): one file part of ``megabytes`` MiB."""
    yield (
        f'--B\r\nContent-Disposition: form-data; name="{field}"; filename="x.dcm"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    for _ in range(megabytes):
        yield bytes(1024 * 1024)
    yield b'\r\n--B\r\nContent-Disposition: form-data; name="model"\r\n\r\nswtr_unet\r\n--B--\r\n'


@pytest.mark.parametrize(("route", "field"), [("/v1/segment", "file"), ("/v1/segment/volume", "t1")])
def test_a_streamed_body_over_the_limit_is_413_not_500(hurried: LocalService, route: str, field: str) -> None:
    with httpx.Client(base_url=hurried.url, timeout=60) as http:
        response = http.post(
            route,
            content=streamed_multipart(field, UPLOAD_LIMIT_MB + 1),
            headers={"content-type": "multipart/form-data; boundary=B"},
        )
        assert response.status_code == 413, response.text
        assert response.json()["error"] == "payload_too_large"
        assert segment(http, png_bytes(np.zeros((32, 32), np.uint8))).status_code == 200


def test_past_the_concurrency_limit_the_contract_429_with_retry_after(tmp_path: Path) -> None:
    """MEDSEG_MAX_CONCURRENCY=1: while one slow request is in, the others are refused at once in
    the contract (BentoML's own limit answered {"error": "Too many requests"}, no Retry-After)."""
    stack = write_multiframe(np.random.default_rng(1).normal(40, 60, (240, 64, 64)), (0.8, 0.8), 1.0)
    env = {"MEDSEG_MAX_CONCURRENCY": "1"}
    with local_service(REPOSITORY, tmp_path, env=env) as service:

        def post(_: int) -> httpx.Response:
            with httpx.Client(base_url=service.url, timeout=120) as http:
                return segment(http, stack, "stack.dcm")

        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(post, range(4)))
        assert httpx.get(f"{service.url}/readyz").status_code == 200  # probes are never refused
    statuses = sorted(a.status_code for a in answers)
    assert statuses[0] == 200 and 429 in statuses, statuses
    for refused in (a for a in answers if a.status_code == 429):
        assert refused.json()["error"] == "overloaded" and refused.headers["retry-after"] == "5"
