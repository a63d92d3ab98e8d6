"""BentoML's own error responses rewritten into the service's error contract.

Errors raised before our handler runs (form validation: a missing ``file``, a ``threshold`` that
is not a number; a refused content type) come back from BentoML as ``{"error": "1 validation error
for Input", "detail": [...]}`` or as a one-element list. Callers of this service rely on one shape,
``{"error": code, "message": ...}`` (services.errors); this ASGI middleware gives them that.
Validation details are rebuilt from field names and pydantic's messages only: submitted values
never reach the response, and ClientErrorLogScrubber keeps them out of BentoML's error log too.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from bentoml.exceptions import BentoMLException
from pydantic import ValidationError

from services.errors import (
    BackendUnavailable,
    BadInput,
    InternalError,
    MedsegError,
    Overloaded,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from services.responses import error_response
from services.upload_limit import Message, Receive, Scope, Send

_BY_STATUS: dict[int, type[MedsegError]] = {
    400: BadInput,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
    429: Overloaded,
    500: InternalError,
    503: BackendUnavailable,
}
_SERVER_SIDE_MESSAGES = {500: InternalError().message, 503: "the service is not ready; retry later"}


def validation_message(details: list[dict[str, Any]]) -> str:
    """pydantic error dicts (``loc``, ``msg``) → "invalid request: 'file': Field required; ..."."""
    parts = []
    for detail in details:
        field = ".".join(str(part) for part in detail.get("loc", ()))
        parts.append(f"'{field}': {detail.get('msg', 'invalid')}" if field else str(detail.get("msg", "invalid")))
    return "invalid request: " + "; ".join(parts)


def contract_error(status: int, body: Any) -> MedsegError | None:
    """The typed error for a framework error response, or None when ``body`` already follows the
    contract or the status has no contract code. Server-side errors get a generic message
    (BentoML's says to read the server log, which callers cannot)."""
    if isinstance(body, list) and len(body) == 1:
        body = body[0]  # BentoML wraps 4xx exceptions in a one-element list
    kind = _BY_STATUS.get(status)
    if kind is None or not isinstance(body, dict) or "message" in body:
        return None
    if isinstance(body.get("detail"), list):
        return kind(validation_message(body["detail"]))
    return kind(_SERVER_SIDE_MESSAGES.get(status) or str(body.get("error") or "bad request"))


class FrameworkErrors:
    """Buffers JSON error responses (status >= 400) and rewrites the framework's into the contract."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start: Message | None = None
        chunks: list[bytes] = []

        async def rewriting_send(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                headers = dict(message.get("headers") or [])
                if message["status"] >= 400 and headers.get(b"content-type", b"").startswith(b"application/json"):
                    start = message  # hold it until the body is complete
                    return
            if start is None or message["type"] != "http.response.body":
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            await _send_rewritten(start, b"".join(chunks), send)

        await self.app(scope, receive, rewriting_send)


async def _send_rewritten(start: Message, body: bytes, send: Send) -> None:
    """Send a held error response: as the contract's error_response when it is the framework's
    (keeping the framework's other headers), else unchanged."""
    try:
        error = contract_error(start["status"], json.loads(body))
    except ValueError:
        error = None
    headers = list(start.get("headers") or [])
    if error is not None:
        response = error_response(error)
        replaced = {name for name, _ in response.raw_headers}
        headers = [(k, v) for k, v in headers if k.lower() not in replaced] + response.raw_headers
        start, body = {**start, "status": response.status_code}, bytes(response.body)
    await send({**start, "headers": headers})
    await send({"type": "http.response.body", "body": body})


BENTOML_HTTP_LOGGER = "bentoml._internal.server.http_app"  # where BentoML logs request exceptions


class ClientErrorLogScrubber(logging.Filter):
    """BentoML logs every request exception with its traceback. For client errors that is noise,
    and pydantic's validation text quotes the submitted values (``input_value='...'``): log the
    field names and messages of a validation error, the type and status of BentoML's other 4xx
    exceptions, and no traceback. Server-side errors keep theirs."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, ValidationError):
            summary = validation_message(error.errors(include_input=False, include_context=False, include_url=False))
        elif isinstance(error, BentoMLException) and error.error_code < 500:
            summary = f"{type(error).__name__} ({int(error.error_code)})"
        else:
            return True
        record.msg, record.args = f"{record.getMessage()}: {summary}", None
        record.exc_info, record.exc_text = None, None
        return True


def scrub_client_error_logs() -> None:
    """Install ClientErrorLogScrubber on BentoML's request-exception logger (once per process)."""
    logger = logging.getLogger(BENTOML_HTTP_LOGGER)
    if not any(isinstance(f, ClientErrorLogScrubber) for f in logger.filters):
        logger.addFilter(ClientErrorLogScrubber())
