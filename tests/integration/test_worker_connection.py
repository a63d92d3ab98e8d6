"""The API's connection to the inference worker under bursts: no call dropped or left hanging.

BentoML's client to a dependency replaced its connection pool every 100 calls and closed the old
one with calls in flight: those failed with ServerDisconnectedError and a few hung until the
120 s request timeout (504). SurgicalSAM makes two worker calls per frame, so three bursts of 32
frames at concurrency 16 cross that mark at least once mid-burst.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from export.sample_requests import requests_per_model

pytestmark = pytest.mark.integration


async def burst(url: str, concurrency: int, count: int) -> list[int]:
    route, files, fields = requests_per_model()["surgical_sam"]
    pending = iter(range(count))
    statuses: list[int] = []
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:

        async def worker() -> None:
            for _ in pending:
                response = await http.post(route, files=files, data={"model": "surgical_sam", **fields})
                statuses.append(response.status_code)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return statuses


def test_bursts_keep_every_worker_call(service) -> None:
    for _ in range(3):
        assert asyncio.run(burst(service.url, 16, 32)) == [200] * 32
    assert "ServerDisconnected" not in service.log_text()
