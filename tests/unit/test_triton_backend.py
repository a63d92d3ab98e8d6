"""Server pool rotation and the Triton back end's behaviour with no server to answer."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest

from load.local_service import free_port
from services.runtime.server_pool import ServerPool
from services.runtime.triton_backend import TritonBackend, TritonUnavailable
from services.settings import load_settings

REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"


def test_pool_rotates_over_healthy_servers_and_keeps_the_others_last() -> None:
    pool = ServerPool(["a:1", "b:1", "c:1", "a:1"])
    assert pool.urls == ["a:1", "b:1", "c:1"] and pool.healthy() == []
    assert pool.order() == ["a:1", "b:1", "c:1"]  # nobody known healthy: try all
    for url in ("a:1", "b:1", "c:1"):
        pool.mark_up(url)
    firsts = [pool.order()[0] for _ in range(6)]
    assert firsts == ["a:1", "b:1", "c:1", "a:1", "b:1", "c:1"]
    pool.mark_down("b:1")
    orders = [pool.order() for _ in range(4)]
    assert all(order[-1] == "b:1" for order in orders) and {o[0] for o in orders} == {"a:1", "c:1"}
    pool.mark_up("b:1")
    assert set(pool.healthy()) == {"a:1", "b:1", "c:1"}


def test_pool_needs_a_server() -> None:
    with pytest.raises(ValueError, match="at least one"):
        ServerPool([])


def test_triton_urls_setting_takes_several_servers() -> None:
    settings = load_settings({"MEDSEG_BACKEND": "triton", "TRITON_URLS": "gpu1:8001, gpu2:8001,"})
    assert settings.triton_urls == ("gpu1:8001", "gpu2:8001")
    assert load_settings({}).triton_urls == ("127.0.0.1:8001",)


def test_no_server_answering_is_a_prompt_unavailable_error() -> None:
    """Closed ports: every try fails at once; the call gives up after its back-off, not a timeout."""
    urls = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    backend = TritonBackend(REPOSITORY, urls, timeout_s=30, attempts=3, backoff_s=0.05)

    async def call() -> None:
        try:
            assert not backend.is_ready()
            await backend.infer("swtr_unet", {"image": np.zeros((1, 1, 256, 256), np.float32)})
        finally:
            await backend.close()

    started = time.monotonic()
    with pytest.raises(TritonUnavailable, match="no Triton server could run swtr_unet after 6 tries"):
        asyncio.run(call())
    assert time.monotonic() - started < 10
    assert backend.pool.healthy() == [] and not backend.is_ready()
