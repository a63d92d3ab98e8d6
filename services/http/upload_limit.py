"""ASGI middleware: refuse request bodies over the configured size with 413, before BentoML reads them."""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any, Awaitable, Callable

from bentoml.exceptions import BentoMLException

from services.errors import PayloadTooLarge

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class _TooLarge(PayloadTooLarge, BentoMLException):
    """Raised into the route by ``receive`` once a streamed body passes the limit, after the 413
    has been sent. Typed for both kinds of route, so that neither answers or logs it as a crash:
    a PayloadTooLarge for ours (services.responses.typed_errors), a 413 BentoMLException for
    BentoML's (its answer would be a 500 otherwise; the 413 already went out and the route's
    answer is dropped either way)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.error_code = HTTPStatus.REQUEST_ENTITY_TOO_LARGE  # not a class attribute: BentoML maps those


class UploadLimit:
    """Checks Content-Length up front and counts streamed (chunked) bodies as they arrive. A
    streamed body is refused the moment it passes the limit, whatever the route then does with
    the error raised into it."""

    def __init__(
        self, app: Callable[..., Awaitable[None]], max_bytes: int, path_limits: dict[str, int] | None = None
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.path_limits = dict(path_limits or {})  # path prefix → its own limit (STOW-RS studies)

    def limit_for(self, path: str) -> int:
        return next((limit for prefix, limit in self.path_limits.items() if path.startswith(prefix)), self.max_bytes)

    @staticmethod
    def _error(limit: int) -> PayloadTooLarge:
        return PayloadTooLarge(f"request body exceeds the limit of {limit // (1024 * 1024)} MiB")

    async def _reject(self, send: Send, limit: int) -> None:
        body = json.dumps(self._error(limit).to_body()).encode()
        await send(
            {
                "type": "http.response.start",
                "status": PayloadTooLarge.status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(str(scope.get("path", "")))
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._reject(send, limit)
            return
        received = 0
        started = False
        rejected = False

        async def counting_receive() -> Message:
            nonlocal received, rejected
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    if not started and not rejected:
                        rejected = True
                        await self._reject(send, limit)
                    raise _TooLarge(self._error(limit).message)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if rejected:
                return  # the route's answer to the error raised into it: the 413 went out
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _TooLarge:
            pass  # answered with 413 when it was raised (or the route had already answered)
