"""The error contract kept at the outermost layer the service controls: an ASGI middleware.

``FrameworkErrors`` is the first middleware added to the service. BentoML places user middleware
inside its own metrics, tracing, access-log, timeout and concurrency middleware, and outside the
routes (its own, ours and mounted apps') and Starlette's exception handling, so every answer a
route or Starlette gives passes through it; only BentoML's concurrency limit (429) and timeout
answer from outside. It does three things:

- **Rewrites framework error bodies.** Errors raised before our handler runs (form validation: a
  missing ``file``, a ``threshold`` that is not a number; a refused content type) come back from
  BentoML as ``{"error": "1 validation error for Input", "detail": [...]}`` or as a one-element
  list; Starlette answers an ``HTTPException`` (BentoML's ``/readyz`` while not ready) or a crash
  in a mounted app in plain text. Callers rely on one shape, ``{"error": code, "message": ...}``
  (services.errors): JSON errors and every 5xx are rebuilt into it. Validation details are
  rebuilt from field names and pydantic's messages only: submitted values never reach the
  response, and ClientErrorLogScrubber keeps them out of BentoML's error log too.
- **Answers whatever escapes a route.** BentoML's ``/readyz`` asks the inference worker's and
  lets a failure to ask escape (a timeout while the worker restarts, a lost connection): that is
  "not ready", the contract's 503, not a 500. An exception that is not an ``Exception`` (pyo3's
  ``PanicException``, any ``BaseException``) passes every handler of BentoML and Starlette; the
  client then waited for BentoML's request timeout and got uvicorn's plain ``Internal Server
  Error``. Here it is logged (type and stack, not its message, which may quote the upload) and
  answered at once with the contract's 500, and the worker keeps serving. ``KeyboardInterrupt``
  and ``SystemExit`` are answered too, then re-raised: they ask the process to stop, and it does,
  as it did before (BentoML's supervisor respawns it, outside a container). A handler that returns without answering gets the
  contract's 500 as well.
- **Enforces the request deadline** (MEDSEG_REQUEST_TIMEOUT_S, to the first byte of the answer,
  as BentoML's timeout does): past it the client gets the contract's 504 at once and the handler
  is cancelled. BentoML's own timeout answers from outside this middleware with a body of its
  own, so the service gives BentoML ``bentoml_timeout_s(deadline)``, a margin later, as a
  backstop that never fires first.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import traceback
from typing import Any

from bentoml.exceptions import BentoMLException
from pydantic import ValidationError

from services.errors import (
    BackendUnavailable,
    BadInput,
    InternalError,
    MedsegError,
    Overloaded,
    PROCESS_EXITS,
    PayloadTooLarge,
    RequestTimeout,
    UnsupportedMediaType,
)
from services.http.responses import error_response
from services.http.upload_limit import Message, Receive, Scope, Send

log = logging.getLogger("medseg.api")

_BY_STATUS: dict[int, type[MedsegError]] = {
    400: BadInput,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
    429: Overloaded,
    500: InternalError,
    503: BackendUnavailable,
    504: RequestTimeout,
}
_SERVER_SIDE_MESSAGES = {
    500: InternalError().message,
    503: "the service is not ready; retry later",
    504: "the request did not complete in time",
}

# Seconds between our deadline and BentoML's traffic timeout. Our 504 is sent by a timer of the
# same event loop as BentoML's, so it is late only while the loop is blocked, and then both are.
BENTOML_TIMEOUT_MARGIN_S = 5.0

SLOW_STOP_S = 1.0  # a cancelled route that takes longer to stop is logged
READINESS_PATH = "/readyz"  # BentoML's readiness route, which probes the inference worker

def validation_message(details: list[dict[str, Any]]) -> str:
    """pydantic error dicts (``loc``, ``msg``) → "invalid request: 'file': Field required; ..."."""
    parts = []
    for detail in details:
        field = ".".join(str(part) for part in detail.get("loc", ()))
        parts.append(f"'{field}': {detail.get('msg', 'invalid')}" if field else str(detail.get("msg", "invalid")))
    return "invalid request: " + "; ".join(parts)


def contract_error(status: int, body: Any) -> MedsegError | None:
    """The typed error for a framework error response, or None when ``body`` already follows the
    contract or the status is a 4xx without a contract code. ``body`` is the parsed JSON, or None
    for a body that is not JSON (Starlette's plain-text errors). Every 5xx gets one: a generic
    message (BentoML's says to read the server log, which callers cannot), and a status without
    a code of its own becomes 500 ``internal_error``."""
    if isinstance(body, list) and len(body) == 1:
        body = body[0]  # BentoML wraps 4xx exceptions in a one-element list
    if isinstance(body, dict) and "message" in body:
        return None
    if status >= 500:
        kind = _BY_STATUS.get(status, InternalError)
        return kind(_SERVER_SIDE_MESSAGES.get(kind.status, InternalError().message))
    kind = _BY_STATUS.get(status)
    if kind is None or not isinstance(body, dict):
        return None
    if isinstance(body.get("detail"), list):
        return kind(validation_message(body["detail"]))
    return kind(str(body.get("error") or "bad request"))


def _held(message: Message) -> bool:
    """Whether a response start is an error to check against the contract: every 5xx, JSON 4xx."""
    if message["status"] >= 500:
        return True
    headers = dict(message.get("headers") or [])
    return message["status"] >= 400 and headers.get(b"content-type", b"").startswith(b"application/json")


class _Exchange:
    """One request's answer as it goes to the client: error responses held and rewritten, and
    ``answer`` for the middleware's own (sent only while nothing has gone out; afterwards the
    route's late messages are dropped)."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self._start: Message | None = None
        self._chunks: list[bytes] = []
        self.forwarded = False  # something went out to the client
        self.answered = False  # the middleware answered itself: the route's messages are dropped
        self.started: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def send(self, message: Message) -> None:
        """The ``send`` the route gets."""
        if self.answered:
            return
        if message["type"] == "http.response.start":
            if not self.started.done():
                self.started.set_result(None)
            if _held(message):
                self._start = message  # hold it until the body is complete
                return
        if self._start is None or message["type"] != "http.response.body":
            await self._forward(message)
            return
        self._chunks.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        start, body = self._start, b"".join(self._chunks)
        self._start, self._chunks = None, []
        await self._send_rewritten(start, body)

    async def answer(self, error: MedsegError) -> bool:
        """Send ``error`` as the response unless part of another one went out; True if sent."""
        if self.forwarded or self.answered:
            return False
        self.answered = True
        response = error_response(error)
        await self._send({"type": "http.response.start", "status": response.status_code, "headers": response.raw_headers})
        await self._send({"type": "http.response.body", "body": bytes(response.body)})
        return True

    async def _forward(self, message: Message) -> None:
        self.forwarded = True
        await self._send(message)

    async def _send_rewritten(self, start: Message, body: bytes) -> None:
        """Send a held error response: as the contract's error_response when it is the
        framework's (keeping the framework's other headers), else unchanged."""
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        error = contract_error(start["status"], parsed)
        headers = list(start.get("headers") or [])
        if error is not None:
            response = error_response(error)
            replaced = {name for name, _ in response.raw_headers}
            headers = [(k, v) for k, v in headers if k.lower() not in replaced] + response.raw_headers
            start, body = {**start, "status": response.status_code}, bytes(response.body)
        await self._forward({**start, "headers": headers})
        await self._forward({"type": "http.response.body", "body": body})


def _is_process_exit(error: BaseException) -> bool:
    if isinstance(error, BaseExceptionGroup):
        return error.subgroup(PROCESS_EXITS) is not None
    return isinstance(error, PROCESS_EXITS)


def _where(scope: Scope) -> str:
    return f"{scope.get('method', '?')} {str(scope.get('path', ''))[:80]}"


def _stack(error: BaseException) -> str:
    """Type and stack of ``error`` without its message (third-party messages can quote the upload)."""
    return "".join(traceback.format_tb(error.__traceback__)) + type(error).__qualname__


class FrameworkErrors:
    """The outermost user middleware: framework errors rewritten into the contract, a contract
    500 for anything a route lets escape, a contract 504 at ``deadline_s`` (None: no deadline)."""

    def __init__(self, app: Any, deadline_s: float | None = None) -> None:
        self.app = app
        self.deadline_s = deadline_s

    @staticmethod
    def bentoml_timeout_s(deadline_s: float) -> float:
        """BentoML's ``traffic["timeout"]`` for a service whose deadline this middleware keeps."""
        return deadline_s + BENTOML_TIMEOUT_MARGIN_S

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        exchange = _Exchange(send)
        # The route runs in a task of its own so that the 504 goes out at the deadline even when
        # the route cannot stop at once (a thread finishing its work holds its cancellation).
        task = asyncio.ensure_future(self._guarded(scope, receive, exchange))
        try:
            if self.deadline_s is not None:
                await asyncio.wait({task, exchange.started}, timeout=self.deadline_s, return_when=asyncio.FIRST_COMPLETED)
                if not task.done() and not exchange.started.done():
                    await self._time_out(scope, task, exchange)
            await asyncio.wait({task})
        except asyncio.CancelledError:  # BentoML's timeout (it answers) or the server's shutdown
            exchange.answered = True
            task.cancel()
            raise
        error = None if task.cancelled() else task.exception()
        if error is not None:
            raise error  # a process exit (the only kind _guarded lets out), already answered

    async def _guarded(self, scope: Scope, receive: Receive, exchange: _Exchange) -> None:
        """The route, with whatever escapes it (or a missing response) answered as a 500."""
        try:
            await self.app(scope, receive, exchange.send)
        except BaseException as error:  # noqa: BLE001 - the last line of defence of the worker
            current = asyncio.current_task()
            if isinstance(error, GeneratorExit) or (
                isinstance(error, asyncio.CancelledError) and current is not None and current.cancelling()
            ):
                raise  # cancelled by the deadline or from outside: the answer is not ours to give
            if scope.get("path") == READINESS_PATH and isinstance(error, Exception):
                log.warning("%s: the inference worker did not answer its probe (%s): not ready", _where(scope),
                            type(error).__name__)
                await exchange.answer(BackendUnavailable(_SERVER_SIDE_MESSAGES[503]))
                return
            log.error("unhandled %s escaped %s:\n%s", type(error).__name__, _where(scope), _stack(error))
            await exchange.answer(InternalError())  # unless an answer already went out
            if _is_process_exit(error):
                raise
            return
        if not exchange.forwarded and not exchange.answered:
            log.error("%s returned without a complete response", _where(scope))
            await exchange.answer(InternalError())

    async def _time_out(self, scope: Scope, task: asyncio.Task[None], exchange: _Exchange) -> None:
        """Cancel the route, answer the contract's 504 and wait until the route has stopped (the
        cancellation reaches it at its next await; from then on its messages are dropped)."""
        cancelled_at = time.monotonic()
        task.cancel()
        log.warning(
            "%s: no response within the %g s deadline; answering 504, route cancelled", _where(scope), self.deadline_s
        )
        await exchange.answer(RequestTimeout(f"the request did not complete within {self.deadline_s:g} s"))
        await asyncio.wait({task})
        stopping_s = time.monotonic() - cancelled_at
        if stopping_s > SLOW_STOP_S:  # e.g. a thread that had to finish its work first
            log.warning("%s: the cancelled route took %.1f s to stop", _where(scope), stopping_s)


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
