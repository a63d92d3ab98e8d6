"""A real `bentoml serve` of the service, started once per test session, called with httpx."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from load.local_service import LocalService, local_service

REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"
UPLOAD_LIMIT_MB = 4


@pytest.fixture(scope="session")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalService]:
    """The embedded service on a free loopback port, with a 4 MiB upload limit."""
    with local_service(
        REPOSITORY, tmp_path_factory.mktemp("bentoml"), env={"MEDSEG_MAX_UPLOAD_MB": str(UPLOAD_LIMIT_MB)}
    ) as running:
        yield running


@pytest.fixture()
def client(service: LocalService) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=service.url, timeout=120) as http:
        yield http
