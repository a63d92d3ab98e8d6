"""The error contract at the service's outermost middleware, through real ASGI apps: BentoML's and
Starlette's error bodies rewritten, whatever escapes a route answered as a 500, the request
deadline answered as a 504 (inside BentoML's own TimeoutMiddleware, as served), and streamed
bodies over the upload limit refused as 413."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from http import HTTPStatus

import httpx
import pydantic
import pytest
from bentoml._internal.server.http.traffic import TimeoutMiddleware
from bentoml.exceptions import BentoMLException
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Mount, Route, Router
from starlette.types import ASGIApp

from services.errors import InternalError
from services.http.upload_limit import UploadLimit

from services.http.framework_errors import (
    BENTOML_HTTP_LOGGER,
    FrameworkErrors,
    ClientErrorLogScrubber,
    contract_error,
    scrub_client_error_logs,
    validation_message,
)

# What BentoML 1.4 sends (its api_endpoint_wrapper): pydantic errors without input values, a
# 4xx BentoMLException wrapped in a one-element list, a generic body for anything else.
VALIDATION = {
    "error": "2 validation errors for Input",
    "detail": [
        {"type": "missing", "loc": ["file"], "msg": "Field required"},
        {"type": "float_parsing", "loc": ["threshold"], "msg": "Input should be a valid number"},
    ],
}
PICKLE_REFUSED = [{"error": "application/vnd.bentoml+pickle is not allowed in main server"}]
CRASH = {"error": "An unexpected error has occurred, please check the server log."}
OURS = {"error": "not_an_image", "message": "RT Plan storage has no pixels"}


def request(routes: list[Route], path: str) -> httpx.Response:
    """One GET of ``path`` on a Starlette app of ``routes`` behind the middleware."""

    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=FrameworkErrors(Starlette(routes=routes)))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get(path)

    return asyncio.run(call())


def answer(status: int, body: object) -> httpx.Response:
    async def endpoint(request: Request) -> Response:
        return JSONResponse(body, status_code=status, headers={"X-Kept": "yes"})

    return request([Route("/x", endpoint)], "/x")


def test_validation_errors_become_bad_input_naming_each_field() -> None:
    response = answer(400, VALIDATION)
    assert response.status_code == 400
    assert response.json() == {
        "error": "bad_input",
        "message": "invalid request: 'file': Field required; 'threshold': Input should be a valid number",
    }
    assert int(response.headers["content-length"]) == len(response.content)
    assert response.headers["x-kept"] == "yes"  # the framework's other headers survive


@pytest.mark.parametrize(
    ("status", "body", "code"),
    [
        (415, PICKLE_REFUSED, "unsupported_media_type"),
        (413, {"error": "too big"}, "payload_too_large"),
        (429, {"error": "Too many requests"}, "overloaded"),
        (500, CRASH, "internal_error"),
        (503, CRASH, "backend_unavailable"),
        (504, {"error": "Not able to process the request in 120 seconds"}, "timeout"),
        (502, {"error": "bad gateway"}, "internal_error"),
    ],
)
def test_framework_bodies_get_the_contract_code(status: int, body: object, code: str) -> None:
    response = answer(status, body)
    assert response.status_code == (500 if status == 502 else status)  # a 5xx without a code is a 500
    assert response.json()["error"] == code and response.json()["message"]
    assert "server log" not in response.json()["message"]
    assert ("retry-after" in response.headers) == (status in (429, 503))


def test_contract_bodies_and_successes_pass_through_untouched() -> None:
    late = {"error": "timeout", "message": "the request did not complete within 2 s"}
    for status, body in ((422, OURS), (200, {"labels": [1, 2]}), (409, {"error": "conflict"}), (504, late)):
        response = answer(status, body)
        assert (response.status_code, response.json()) == (status, body)


def test_non_json_and_streamed_bodies_are_forwarded_whole() -> None:
    async def text(request: Request) -> Response:
        return PlainTextResponse("Not Found", status_code=404)

    async def streamed(request: Request) -> Response:
        async def chunks():
            for part in (b'{"error": "2 validation errors for Input", ', b'"detail": [{"loc": ["file"], "msg": "Field required"}]}'):
                yield part

        return StreamingResponse(chunks(), status_code=400, media_type="application/json")

    routes = [Route("/text", text), Route("/streamed", streamed)]
    plain = request(routes, "/text")
    assert (plain.status_code, plain.text) == (404, "Not Found")
    response = request(routes, "/streamed")
    assert response.json() == {"error": "bad_input", "message": "invalid request: 'file': Field required"}


def test_validation_message_never_carries_submitted_values() -> None:
    detail = [{"loc": ["classes"], "msg": "Input should be a valid integer", "input": "DOE^JANE", "ctx": {"x": "DOE"}}]
    assert "DOE" not in validation_message(detail)
    assert contract_error(400, {"error": "x", "detail": detail}).message == (
        "invalid request: 'classes': Input should be a valid integer"
    )


def test_json_body_that_is_not_an_object_is_left_alone() -> None:
    assert contract_error(400, json.loads("[1, 2]")) is None


def test_bentoml_validation_log_keeps_field_names_but_not_values(caplog: pytest.LogCaptureFixture) -> None:
    """The scrubber on BentoML's request-exception logger, fed the record BentoML writes."""

    class Form(pydantic.BaseModel):
        threshold: float

    try:
        Form(threshold="DOE^JANE")
    except pydantic.ValidationError:
        scrub_client_error_logs()
        scrub_client_error_logs()  # idempotent
        with caplog.at_level(logging.ERROR, logger=BENTOML_HTTP_LOGGER):
            logging.getLogger(BENTOML_HTTP_LOGGER).error("Exception on %s [%s]", "/v1/segment", "POST", exc_info=True)
    (record,) = caplog.records
    assert "DOE" not in caplog.text
    assert record.getMessage() == "Exception on /v1/segment [POST]: invalid request: 'threshold': Input should be a valid number, unable to parse string as a number"
    logger = logging.getLogger(BENTOML_HTTP_LOGGER)
    assert sum(isinstance(f, ClientErrorLogScrubber) for f in logger.filters) == 1


def test_bentoml_client_exceptions_are_logged_without_traceback_and_server_errors_with(
    caplog: pytest.LogCaptureFixture,
) -> None:
    scrub_client_error_logs()
    logger = logging.getLogger(BENTOML_HTTP_LOGGER)
    for error in (BentoMLException("DOE^JANE is not allowed", error_code=HTTPStatus.UNSUPPORTED_MEDIA_TYPE), BentoMLException("boom")):
        try:
            raise error
        except BentoMLException:
            with caplog.at_level(logging.ERROR, logger=BENTOML_HTTP_LOGGER):
                logger.error("Exception on %s [%s]", "/v1/segment", "POST", exc_info=True)
    client, server = caplog.records
    assert client.getMessage() == "Exception on /v1/segment [POST]: BentoMLException (415)" and client.exc_info is None
    assert server.exc_info is not None  # a 500 keeps its traceback for the operator
    assert "DOE" not in caplog.text


# --------------------------------------------------------------------------------------------
# The last line of defence and the request deadline, with the middleware where BentoML puts it:
# inside BentoML's TimeoutMiddleware, outside Starlette's exception handling and the routes.


class PanicException(BaseException):
    """What pyo3 raises for a Rust panic: a BaseException, so every ``except Exception`` misses it."""


DEADLINE_S = 0.3


def bentoml_stack(app: ASGIApp, deadline_s: float = DEADLINE_S) -> ASGIApp:
    """``app`` behind FrameworkErrors behind BentoML's own TimeoutMiddleware, set as service.py sets it."""
    return TimeoutMiddleware(
        FrameworkErrors(app, deadline_s=deadline_s), timeout=FrameworkErrors.bentoml_timeout_s(deadline_s)
    )


def routes_app(*routes: Route) -> ASGIApp:
    """Routes as BentoML serves its own: the router behind Starlette's ExceptionMiddleware only."""
    return ExceptionMiddleware(Router(routes=list(routes)))


async def call(
    app: ASGIApp, path: str = "/x", body: tuple[bytes, ...] = (b"",), sent: list | None = None
) -> list[tuple[float, dict]]:
    """One request through ``app`` as a server makes it; every message sent, with its time."""
    sent = [] if sent is None else sent
    chunks = list(body)
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "", "headers": [],
        "client": ("127.0.0.1", 40000), "server": ("testserver", 80),
    }
    started = time.monotonic()

    async def receive() -> dict:
        if chunks:
            chunk = chunks.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}
        await asyncio.Event().wait()  # no disconnect until the server goes
        raise AssertionError("unreachable")

    async def send(message: dict) -> None:
        sent.append((time.monotonic() - started, message))

    await app(scope, receive, send)
    return sent


def run(app: ASGIApp, path: str = "/x", body: tuple[bytes, ...] = (b"",), limit_s: float = 5) -> list[tuple[float, dict]]:
    return asyncio.run(asyncio.wait_for(call(app, path, body), limit_s))


def response_of(sent: list[tuple[float, dict]]) -> tuple[int, dict[bytes, bytes], bytes, float]:
    """(status, headers, body, seconds to the first byte) of exactly one response."""
    starts = [message for _, message in sent if message["type"] == "http.response.start"]
    assert len(starts) == 1, sent
    body = b"".join(message.get("body", b"") for _, message in sent if message["type"] == "http.response.body")
    return starts[0]["status"], dict(starts[0]["headers"]), body, sent[0][0]


@pytest.mark.parametrize(
    "escaping",
    [
        PanicException("DOE^JANE: index out of bounds"),
        BaseExceptionGroup("task group", [PanicException("DOE^JANE")]),  # from an anyio task group
        RuntimeError("DOE^JANE"),  # a route BentoML does not wrap (a mounted app's, a system route)
    ],
    ids=["panic", "base-exception-group", "exception"],
)
def test_whatever_escapes_a_route_is_the_contract_500_at_once_and_the_worker_keeps_serving(
    escaping: BaseException, caplog: pytest.LogCaptureFixture
) -> None:
    async def crash(request: Request) -> Response:
        raise escaping

    async def fine(request: Request) -> Response:
        return JSONResponse({"ok": True})

    # A deadline far off: before the fix, the client waited for BentoML's timeout past it.
    app = bentoml_stack(routes_app(Route("/crash", crash, methods=["POST"]), Route("/ok", fine, methods=["POST"])), 30)
    with caplog.at_level(logging.ERROR, logger="medseg.api"):
        status, headers, body, first_byte_s = response_of(run(app, "/crash"))
    assert first_byte_s < 1
    assert status == 500 and headers[b"content-type"] == b"application/json"
    assert json.loads(body) == {"error": "internal_error", "message": InternalError().message}
    assert b"Traceback" not in body and b"DOE" not in body
    assert type(escaping).__name__ in caplog.text and "/crash" in caplog.text
    assert "DOE" not in caplog.text  # a native decoder's message can quote the upload
    assert response_of(run(app, "/ok"))[0] == 200


def test_a_readiness_probe_that_cannot_ask_the_worker_is_not_ready_503_not_500(caplog: pytest.LogCaptureFixture) -> None:
    """Found by ``python -m load faults --kill worker``: while BentoML's supervisor restarted the
    worker, BentoML's /readyz let the timeout of its probe of the worker escape: a 500."""

    async def readyz(request: Request) -> Response:
        raise asyncio.TimeoutError  # aiohttp's total timeout, which BentoML's is_ready does not catch

    app = bentoml_stack(routes_app(Route("/readyz", readyz, methods=["POST"]), Route("/other", readyz, methods=["POST"])), 30)
    with caplog.at_level(logging.WARNING, logger="medseg.api"):
        status, headers, body, _ = response_of(run(app, "/readyz"))
    assert status == 503 and headers[b"retry-after"]
    assert json.loads(body)["error"] == "backend_unavailable"
    assert "Traceback" not in caplog.text and "not ready" in caplog.text
    assert response_of(run(app, "/other"))[0] == 500  # elsewhere the same escape is still a bug


def test_a_crash_inside_a_mounted_app_is_the_contract_500_not_starlettes_text(caplog: pytest.LogCaptureFixture) -> None:
    async def crash(request: Request) -> Response:
        raise RuntimeError("boom")

    mounted = Starlette(routes=[Route("/crash", crash, methods=["POST"])])  # answers "Internal Server Error"
    with caplog.at_level(logging.ERROR, logger="medseg.api"):
        status, headers, body, _ = response_of(run(bentoml_stack(routes_app(Mount("/v1", mounted))), "/v1/crash"))
    assert (status, json.loads(body)) == (500, {"error": "internal_error", "message": InternalError().message})
    assert int(headers[b"content-length"]) == len(body)
    assert caplog.text.count("unhandled RuntimeError") == 1


@pytest.mark.parametrize(
    ("detail", "status", "code"),
    [
        ("Service is not ready because .__is_ready__() returns False.", 503, "backend_unavailable"),
        ("Runners are not ready.", 503, "backend_unavailable"),  # BentoML's /readyz while the worker loads
        (None, 500, "internal_error"),  # BentoML's base readyz before start-up completes
    ],
)
def test_starlettes_plain_text_5xx_follow_the_contract(detail: str | None, status: int, code: str) -> None:
    async def readyz(request: Request) -> Response:
        raise HTTPException(status_code=status, detail=detail)

    sent = run(bentoml_stack(routes_app(Route("/readyz", readyz, methods=["POST"]))), "/readyz")
    got_status, headers, body, _ = response_of(sent)
    assert got_status == status and json.loads(body)["error"] == code and json.loads(body)["message"]
    assert headers[b"content-type"] == b"application/json"
    assert (b"retry-after" in headers) == (status == 503)


def test_a_route_that_returns_without_a_complete_answer_gets_the_contract_500() -> None:
    async def silent(scope, receive, send) -> None:
        return

    async def half(scope, receive, send) -> None:  # an error start, then nothing
        await send({"type": "http.response.start", "status": 500, "headers": [(b"content-type", b"application/json")]})

    for app in (silent, half):
        status, _, body, _ = response_of(run(bentoml_stack(app)))
        assert (status, json.loads(body)["error"]) == (500, "internal_error")


def sleeper(cancelled: list[bool]):  # noqa: ANN201 - a Starlette endpoint
    """A route that sleeps 30 s and records in ``cancelled`` that it was cancelled."""

    async def slow(request: Request) -> Response:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise
        return JSONResponse({"late": True})

    return slow


def test_past_the_deadline_the_contract_504_goes_out_at_once_and_the_route_is_cancelled(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cancelled: list[bool] = []
    slow = sleeper(cancelled)

    with caplog.at_level(logging.WARNING, logger="medseg.api"):
        sent = run(bentoml_stack(routes_app(Route("/x", slow, methods=["POST"]))))
    status, headers, body, first_byte_s = response_of(sent)
    assert DEADLINE_S <= first_byte_s < FrameworkErrors.bentoml_timeout_s(DEADLINE_S) - 4  # ours, not BentoML's
    assert status == 504 and headers[b"content-type"] == b"application/json"
    assert json.loads(body) == {"error": "timeout", "message": f"the request did not complete within {DEADLINE_S:g} s"}
    assert b"retry-after" not in headers
    assert cancelled == [True]
    assert "deadline" in caplog.text


def test_a_route_slow_to_stop_gets_its_504_at_the_deadline_and_its_late_answer_is_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def stubborn(request: Request) -> Response:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            await asyncio.sleep(1.2)  # a clean-up that takes its time
            return JSONResponse({"late": True})  # and an answer all the same
        return JSONResponse({})

    with caplog.at_level(logging.WARNING, logger="medseg.api"):
        sent = run(bentoml_stack(routes_app(Route("/x", stubborn, methods=["POST"]))))
    status, _, body, first_byte_s = response_of(sent)  # exactly one response: the route's is dropped
    assert status == 504 and json.loads(body)["error"] == "timeout"
    assert first_byte_s < 0.9
    assert "the cancelled route took 1.2 s to stop" in caplog.text  # the call returned once it had stopped


def test_an_answer_that_started_before_the_deadline_is_not_cut() -> None:
    async def streamed(request: Request) -> Response:
        async def chunks():
            for _ in range(4):
                yield b"part "
                await asyncio.sleep(DEADLINE_S / 2)

        return StreamingResponse(chunks(), media_type="text/plain")

    status, _, body, _ = response_of(run(bentoml_stack(routes_app(Route("/x", streamed, methods=["POST"])))))
    assert (status, body) == (200, b"part " * 4)


@pytest.mark.parametrize("exit_kind", [SystemExit, KeyboardInterrupt])
def test_a_process_exit_is_answered_and_not_swallowed(exit_kind: type[BaseException]) -> None:
    """They ask the process to stop: the client gets its 500, then the process stops (asyncio
    re-raises them out of the event loop; BentoML's supervisor starts a new worker)."""

    async def leave(request: Request) -> Response:
        raise exit_kind()

    sent: list = []
    with pytest.raises(exit_kind):
        asyncio.run(call(FrameworkErrors(routes_app(Route("/x", leave, methods=["POST"])), deadline_s=30), sent=sent))
    status, _, body, _ = response_of(sent)
    assert (status, json.loads(body)["error"]) == (500, "internal_error")


def test_cancelled_from_outside_the_route_is_cancelled_and_nothing_is_answered() -> None:
    """BentoML's own timeout (the backstop) or a shutdown: the answer is theirs to give."""
    cancelled: list[bool] = []
    slow = sleeper(cancelled)

    async def scenario() -> list:
        sent: list = []
        request_task = asyncio.ensure_future(
            call(FrameworkErrors(routes_app(Route("/x", slow, methods=["POST"])), deadline_s=30), sent=sent)
        )
        await asyncio.sleep(0.1)
        request_task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request_task
        await asyncio.sleep(0)
        return sent

    assert asyncio.run(scenario()) == []
    assert cancelled == [True]


def test_bentomls_timeout_is_a_backstop_after_our_deadline() -> None:
    assert FrameworkErrors.bentoml_timeout_s(120) >= 120 + 1


def test_a_streamed_body_over_the_limit_is_413_whatever_the_route_does_with_the_error() -> None:
    """BentoML's endpoint wrapper answers any exception raised while reading the body with a 500."""

    async def bentoml_like(scope, receive, send) -> None:
        try:
            await Request(scope, receive).body()
            response: Response = JSONResponse({"ok": True})
        except Exception:  # noqa: BLE001 - as BentoML's api_endpoint_wrapper
            response = JSONResponse(CRASH, status_code=500)
        await response(scope, receive, send)

    app = FrameworkErrors(UploadLimit(bentoml_like, max_bytes=1024), deadline_s=30)
    status, _, body, _ = response_of(run(app, body=(bytes(512),) * 4))  # chunked: no Content-Length
    assert (status, json.loads(body)["error"]) == (413, "payload_too_large")
    assert response_of(run(app, body=(bytes(512),) * 2))[0] == 200
