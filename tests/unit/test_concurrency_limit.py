"""ConcurrencyLimit: one request past the limit gets the contract's 429 with Retry-After at once;
probes are never refused; a finished or failed request frees its place."""

from __future__ import annotations

import asyncio
import json

import pytest

from services.http.concurrency_limit import ConcurrencyLimit


class HeldApp:
    """Answers 200 once ``release`` is set; counts the requests that got in."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.entered = 0

    async def __call__(self, scope, receive, send) -> None:  # noqa: ANN001 - ASGI
        self.entered += 1
        await self.release.wait()
        if scope["path"] == "/boom":
            raise RuntimeError("a route failure")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


async def request(app, path: str = "/v1/segment") -> tuple[int, dict[bytes, bytes], bytes]:  # noqa: ANN001
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    await app({"type": "http", "method": "POST", "path": path, "headers": []}, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), body


def test_one_past_the_limit_is_the_contract_429_with_retry_after_and_probes_pass() -> None:
    async def scenario() -> None:
        inner = HeldApp()
        app = ConcurrencyLimit(inner, max_in_flight=2)
        held = [asyncio.ensure_future(request(app)) for _ in range(2)]
        await asyncio.sleep(0.01)
        status, headers, body = await asyncio.wait_for(request(app), timeout=1)  # refused at once
        assert status == 429 and headers[b"retry-after"] == b"5"
        assert json.loads(body)["error"] == "overloaded" and "2 requests in flight" in json.loads(body)["message"]
        probe = asyncio.ensure_future(request(app, "/readyz"))
        await asyncio.sleep(0.01)
        assert inner.entered == 3  # the two held requests and the probe, not the refused one
        inner.release.set()
        assert [s for s, _, _ in await asyncio.gather(*held, probe)] == [200, 200, 200]
        assert (await request(app))[0] == 200 and app.in_flight == 0

    asyncio.run(scenario())


def test_a_failing_request_frees_its_place() -> None:
    async def scenario() -> None:
        inner = HeldApp()
        inner.release.set()
        app = ConcurrencyLimit(inner, max_in_flight=1)
        with pytest.raises(RuntimeError):
            await request(app, "/boom")
        assert app.in_flight == 0 and (await request(app))[0] == 200

    asyncio.run(scenario())
