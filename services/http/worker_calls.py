"""Calls from the API service to the inference worker over BentoML's HTTP transport.

BentoML's client reuses keep-alive connections; one the worker is closing at that moment fails
with a connection reset before the request is read, and a worker that dies (killed, OOM) while
sending its answer leaves the body cut short (``ClientPayloadError``, not a connection error).
Inference is idempotent, so the call is retried on a fresh connection (BentoML's supervisor
starts another worker on the same socket); a worker that stays unreachable is a 503 with
Retry-After.

The worker sends a typed error (``services.errors``) by its status; BentoML's client raises it
here as a BentoMLException carrying that status, and ``FROM_WORKER`` makes it the typed error
again, with a message for the caller (the worker's names servers and queue times): 503 when the
worker's back end is down (it already retried), 429 when its queue is too long.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import TypeVar

import aiohttp
from bentoml.exceptions import BentoMLException

from services.errors import BackendUnavailable, MedsegError, Overloaded

log = logging.getLogger("medseg.api")
T = TypeVar("T")

ATTEMPTS = 3
# The worker went away during the call: refused, reset, closed, or its answer cut short.
LOST_WORKER = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError)
FROM_WORKER: dict[int, tuple[type[MedsegError], str]] = {
    HTTPStatus.SERVICE_UNAVAILABLE: (BackendUnavailable, "the inference servers are unavailable; retry shortly"),
    HTTPStatus.TOO_MANY_REQUESTS: (Overloaded, "the service is overloaded; retry shortly"),
}


async def call_worker(call: Callable[[], Awaitable[T]], attempts: int = ATTEMPTS) -> T:
    """Await ``call()``, retrying a lost worker (``LOST_WORKER``) up to ``attempts`` times in all."""
    for attempt in range(1, attempts + 1):
        try:
            return await call()
        except LOST_WORKER as error:
            log.warning("inference worker connection failed (%s), attempt %d of %d", type(error).__name__, attempt, attempts)
        except BentoMLException as error:
            typed = FROM_WORKER.get(int(error.error_code))
            if typed is None:
                raise
            kind, message = typed
            raise kind(message) from None
    raise BackendUnavailable("the inference worker could not be reached; retry shortly")
