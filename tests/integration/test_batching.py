"""Batching in the inference worker: concurrent requests are merged into backend runs of more than one call."""

from __future__ import annotations

import asyncio
import io
import re

import httpx
import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.integration

BUCKET = re.compile(r'^medseg_inference_batch_calls_bucket\{(?P<labels>[^}]*)\}\s+(?P<value>[0-9.e+]+)$')


def batch_histogram(metrics_text: str) -> dict[float, float]:
    """Cumulative bucket counts (le → count) of swtr_unet's calls-per-run histogram."""
    buckets: dict[float, float] = {}
    for line in metrics_text.splitlines():
        match = BUCKET.match(line)
        if match and 'graph="swtr_unet"' in match["labels"]:
            le = re.search(r'le="([^"]+)"', match["labels"])[1]
            bound = float("inf") if le == "+Inf" else float(le)
            buckets[bound] = buckets.get(bound, 0.0) + float(match["value"])
    return buckets


def merged_batches(metrics_text: str) -> float:
    """How many backend runs merged more than one call."""
    buckets = batch_histogram(metrics_text)
    return buckets.get(float("inf"), 0.0) - buckets.get(1.0, 0.0)


async def post_concurrently(url: str, payload: bytes, count: int) -> list[int]:
    async with httpx.AsyncClient(base_url=url, timeout=120) as http:
        responses = await asyncio.gather(
            *(
                http.post("/v1/segment", files={"file": ("x.png", payload)}, data={"model": "swtr_unet"})
                for _ in range(count)
            )
        )
    return [r.status_code for r in responses]


def test_concurrent_requests_form_batches_larger_than_one(client, service) -> None:
    image = (np.random.default_rng(3).random((256, 256)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    before = merged_batches(client.get("/metrics").text)

    statuses = asyncio.run(post_concurrently(service.url, buffer.getvalue(), 24))

    assert statuses == [200] * 24
    after = merged_batches(client.get("/metrics").text)
    assert after > before, "no inference batch merged two or more requests"
