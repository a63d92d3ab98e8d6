"""Typed errors as HTTP responses, and the guard that keeps every handler from leaking internals."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import ParamSpec

from starlette.responses import JSONResponse, Response

from services.errors import InternalError, MedsegError

log = logging.getLogger("medseg.api")
P = ParamSpec("P")

RETRY_AFTER_S = 5


def error_response(error: MedsegError) -> JSONResponse:
    """``{"error": code, "message": ...}`` with the error's status (and Retry-After on 503/429)."""
    headers = {"Retry-After": str(RETRY_AFTER_S)} if error.status in (429, 503) else None
    return JSONResponse(error.to_body(), status_code=error.status, headers=headers)


def typed_errors(handler: Callable[P, Awaitable[Response]]) -> Callable[P, Awaitable[Response]]:
    """Map MedsegError to its status; anything else to a generic 500 (details only in the log).

    Logged details are exception types and tracebacks: request content and DICOM attributes are
    never logged.
    """

    @functools.wraps(handler)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> Response:
        try:
            return await handler(*args, **kwargs)
        except MedsegError as error:
            if error.status >= 500:
                log.warning("%s: %s", error.code, type(error).__name__)
            return error_response(error)
        except Exception:  # noqa: BLE001 - the last line of defence of a worker
            log.exception("unexpected failure in %s", handler.__name__)
            return error_response(InternalError())

    return wrapper
