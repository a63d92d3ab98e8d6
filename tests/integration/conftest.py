"""A real `bentoml serve` of the service, started once per test session, called with httpx."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
REPOSITORY = ROOT / "model_repository"
UPLOAD_LIMIT_MB = 4
READY_TIMEOUT_S = 180


@dataclass
class RunningService:
    url: str
    log_path: Path
    process: subprocess.Popen

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, process: subprocess.Popen, log_path: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"bentoml serve exited with {process.returncode}:\n{log_path.read_text()[-4000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"service not ready after {timeout_s}s:\n{log_path.read_text()[-4000:]}")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


@pytest.fixture(scope="session")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningService]:
    """The embedded service on a free loopback port, with a 4 MiB upload limit."""
    workdir = tmp_path_factory.mktemp("bentoml")
    log_path = workdir / "serve.log"
    port = free_port()
    env = {
        **os.environ,
        "MEDSEG_BACKEND": "embedded",
        "MEDSEG_MODEL_REPOSITORY": str(REPOSITORY),
        "MEDSEG_MAX_UPLOAD_MB": str(UPLOAD_LIMIT_MB),
        "BENTOML_HOME": str(workdir / "home"),
        "PYTHONUNBUFFERED": "1",
    }
    bentoml = Path(sys.executable).with_name("bentoml")
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(bentoml), "serve", "services.service:Segmenter", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process, log_path, READY_TIMEOUT_S)
        yield RunningService(url, log_path, process)
    finally:
        stop(process)


@pytest.fixture()
def client(service: RunningService) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=service.url, timeout=120) as http:
        yield http
