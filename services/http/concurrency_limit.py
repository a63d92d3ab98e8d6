"""ASGI middleware: at most ``max_in_flight`` requests inside the service; one more is refused at
once with the contract's 429 ``overloaded`` and Retry-After.

BentoML's own limit (``traffic["max_concurrency"]``) answers from outside the service's
middleware with ``{"error": "Too many requests"}`` and no Retry-After; this one replaces it.
Probes and metrics are never refused (as BentoML's limit skips them).
"""

from __future__ import annotations

from typing import Any

from services.errors import Overloaded
from services.http.responses import error_response
from services.http.upload_limit import Receive, Scope, Send

PROBES = frozenset({"/livez", "/readyz", "/healthz", "/metrics"})


class ConcurrencyLimit:
    def __init__(self, app: Any, max_in_flight: int) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self.app = app
        self.max_in_flight = max_in_flight
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # WebSocket streams are bounded by MEDSEG_MAX_STREAMS (services.streams), not counted here.
        if scope["type"] != "http" or scope.get("path") in PROBES:
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.max_in_flight:
            refusal = error_response(
                Overloaded(f"the service is at its limit of {self.max_in_flight} requests in flight; retry shortly")
            )
            await refusal(scope, receive, send)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
