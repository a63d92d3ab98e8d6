"""BentoML's error bodies rewritten into the service's contract, through a real ASGI app."""

from __future__ import annotations

import asyncio
import json
import logging
from http import HTTPStatus

import httpx
import pydantic
import pytest
from bentoml.exceptions import BentoMLException
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from services.framework_errors import (
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
    ],
)
def test_framework_bodies_get_the_contract_code(status: int, body: object, code: str) -> None:
    response = answer(status, body)
    assert response.status_code == status
    assert response.json()["error"] == code and response.json()["message"]
    assert "server log" not in response.json()["message"]
    assert ("retry-after" in response.headers) == (status in (429, 503))


def test_contract_bodies_and_successes_pass_through_untouched() -> None:
    for status, body in ((422, OURS), (200, {"labels": [1, 2]}), (409, {"error": "conflict"}), (504, {"error": "late"})):
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
