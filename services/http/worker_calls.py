"""Calls from the API service to the inference worker over BentoML's HTTP transport.

BentoML's client reuses keep-alive connections; one the worker is closing at that moment fails
with a connection reset before the request is read. Inference is idempotent, so the call is
retried on a fresh connection; a worker that stays unreachable, or that reports its backend
down (503 from the worker), is a 503 with Retry-After; a worker whose queue is too long (429
from the worker) is a 429 with Retry-After.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from http import HTTPStatus

import aiohttp
from bentoml.exceptions import BentoMLException, ServiceUnavailable

from services.errors import BackendUnavailable, Overloaded

log = logging.getLogger("medseg.api")
T = TypeVar("T")

ATTEMPTS = 3


async def call_worker(call: Callable[[], Awaitable[T]], attempts: int = ATTEMPTS) -> T:
    """Await ``call()``, retrying connection-level failures up to ``attempts`` times in all."""
    for attempt in range(1, attempts + 1):
        try:
            return await call()
        except aiohttp.ClientConnectionError as error:
            log.warning("inference worker connection failed (%s), attempt %d of %d", type(error).__name__, attempt, attempts)
        except ServiceUnavailable:  # the worker's backend (Triton) is down; it already retried
            raise BackendUnavailable("the inference servers are unavailable; retry shortly") from None
        except BentoMLException as error:
            if error.error_code == HTTPStatus.TOO_MANY_REQUESTS:
                raise Overloaded("the service is overloaded; retry shortly") from None
            raise
    raise BackendUnavailable("the inference worker could not be reached; retry shortly")
