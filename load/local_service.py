"""Start a real ``bentoml serve`` of the service on a free loopback port (tests, benchmarks, load runs)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
SERVICE = "services.service:Segmenter"


@dataclass
class LocalService:
    url: str
    log_path: Path
    process: subprocess.Popen

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_answering(
    name: str, process: subprocess.Popen, url: str, log_text: Callable[[], str], timeout_s: float, poll_s: float = 0.5
) -> None:
    """Return once ``url`` answers 200; RuntimeError with the log's tail when ``process`` exits
    first or after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}:\n{log_text()[-4000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(poll_s)
    raise RuntimeError(f"{name} not ready after {timeout_s:.0f}s:\n{log_text()[-4000:]}")


def stop_process_group(process: subprocess.Popen, kill: bool = False, grace_s: float = 20) -> None:
    """SIGTERM a process started with ``start_new_session`` and its whole group (BentoML's
    supervisor, which stops its workers; tritonserver and its stubs); with ``kill``, or after
    ``grace_s``, SIGKILL of its whole process tree (``kill_tree``)."""
    if process.poll() is not None:
        return
    if kill:
        kill_tree(process)
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        kill_tree(process)


def kill_tree(process: subprocess.Popen) -> None:
    """SIGKILL a service and every process under it at once, as a crash or an OOM kill would.

    ``os.killpg`` of the service's group is not enough: BentoML's supervisor (circus) starts each
    worker in a session of its own (``os.setsid``), so the workers would live on as orphans, still
    serving their jobs from the same data directory. Everything is stopped (SIGSTOP) first so that
    no worker notices its parent dying, then killed; returns once every one of them is gone."""
    root = psutil.Process(process.pid)
    members = [root, *root.children(recursive=True)]
    for member in members:
        try:
            member.send_signal(signal.SIGSTOP)
        except psutil.NoSuchProcess:
            pass
    groups = set()
    for member in members:
        try:
            groups.add(os.getpgid(member.pid))
        except ProcessLookupError:
            pass
    for group in groups:
        try:
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for member in members:
        try:
            member.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    process.wait(timeout=10)
    _, alive = psutil.wait_procs(members, timeout=10)
    if alive:
        raise RuntimeError(f"still running after SIGKILL: {[p.pid for p in alive]}")


@contextmanager
def local_service(
    repository: Path,
    workdir: Path,
    env: dict[str, str] | None = None,
    ready_timeout_s: float = 300,
    target: str = SERVICE,
    ready_path: str = "/readyz",
    cwd: Path = ROOT,
    port: int | None = None,
) -> Iterator[LocalService]:
    """``bentoml serve target`` of ``repository`` (embedded backend) until the block exits, once
    ``ready_path`` answers 200; logs in ``workdir``. ``cwd``: the checkout whose code is served;
    ``port``: a fixed port (None: a free one)."""
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "serve.log"
    port = port or free_port()
    full_env = {
        **os.environ,
        "MEDSEG_BACKEND": "embedded",
        "MEDSEG_MODEL_REPOSITORY": str(repository),
        "BENTOML_HOME": str(workdir / "bentoml-home"),
        "MEDSEG_DATA_DIR": str(workdir / "data"),  # the DICOMweb spool and job store
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
    }
    bentoml = Path(sys.executable).with_name("bentoml")
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(bentoml), "serve", target, "--host", "127.0.0.1", "--port", str(port)],
            cwd=cwd,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    service = LocalService(f"http://127.0.0.1:{port}", log_path, process)
    try:
        wait_until_answering("bentoml serve", process, f"{service.url}{ready_path}", service.log_text, ready_timeout_s)
        yield service
    finally:
        stop_process_group(process)
