"""Calls to the inference worker survive a reset keep-alive connection, and fail as a 503 (429 when overloaded)."""

from __future__ import annotations

import asyncio
from http import HTTPStatus

import aiohttp
import pytest
from bentoml.exceptions import BentoMLException

from services.errors import BackendUnavailable, Overloaded
from services.http.worker_calls import call_worker


class Flaky:
    """Fails with ``error`` for the first ``failures`` calls, then answers "ok"."""

    def __init__(self, failures: int, error: Exception) -> None:
        self.failures, self.error, self.calls = failures, error, 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return "ok"


def test_a_reset_connection_is_retried_once_and_answers() -> None:
    flaky = Flaky(1, aiohttp.ClientOSError(None, "Can not write request body"))
    assert asyncio.run(call_worker(flaky)) == "ok" and flaky.calls == 2


def test_a_worker_that_stays_unreachable_is_backend_unavailable() -> None:
    flaky = Flaky(10, aiohttp.ServerDisconnectedError())
    with pytest.raises(BackendUnavailable) as raised:
        asyncio.run(call_worker(flaky, attempts=3))
    assert flaky.calls == 3 and raised.value.status == 503


def test_an_answer_cut_short_by_a_dying_worker_is_retried() -> None:
    """Found by ``python -m load faults --kill worker --backend triton``: the worker SIGKILLed
    while sending a 786 kB answer; the API got a 500 instead of the retry's 200."""
    cut = aiohttp.ClientPayloadError("Response payload is not completed: <ContentLengthError: 400, message='Not "
                                     "enough data to satisfy content length header (received 219463 of 262343 bytes).'>")
    flaky = Flaky(1, cut)
    assert asyncio.run(call_worker(flaky)) == "ok" and flaky.calls == 2


def test_answers_cut_short_every_time_are_backend_unavailable() -> None:
    flaky = Flaky(10, aiohttp.ClientPayloadError("Response payload is not completed"))
    with pytest.raises(BackendUnavailable) as raised:
        asyncio.run(call_worker(flaky, attempts=3))
    assert flaky.calls == 3 and raised.value.status == 503


def test_other_errors_are_not_retried() -> None:
    flaky = Flaky(1, ValueError("a bug"))
    with pytest.raises(ValueError):
        asyncio.run(call_worker(flaky))
    assert flaky.calls == 1


def test_a_worker_refusing_for_load_is_overloaded_and_not_retried() -> None:
    flaky = Flaky(5, BentoMLException("queued too long", error_code=HTTPStatus.TOO_MANY_REQUESTS))
    with pytest.raises(Overloaded) as raised:
        asyncio.run(call_worker(flaky))
    assert flaky.calls == 1 and raised.value.status == 429 and "overloaded" in raised.value.message


def test_a_worker_whose_back_end_is_down_is_backend_unavailable_and_not_retried() -> None:
    """BentoML's client raises its own class for a 503 (ServiceUnavailable), with the status."""
    from bentoml.exceptions import ServiceUnavailable

    flaky = Flaky(5, ServiceUnavailable("no Triton server could run swtr_unet", error_code=HTTPStatus.SERVICE_UNAVAILABLE))
    with pytest.raises(BackendUnavailable) as raised:
        asyncio.run(call_worker(flaky))
    assert flaky.calls == 1 and raised.value.status == 503 and "Triton" not in raised.value.message
