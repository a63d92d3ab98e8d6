"""Start a real ``tritonserver`` (the binary shipped in the nvidia-pytriton wheel, Triton 2.51 with
the python backend) on free loopback ports, serving a model repository built with ``--target cpu``.

Used by ``make serve-triton``, the Triton tests and the benchmark. The wheel's python backend needs
a backend directory assembled from its files, ``LD_LIBRARY_PATH`` pointing at the wheel's bundled
libraries, and this venv's ``bin`` first on ``PATH`` (the stub finds its Python, with numpy and
onnxruntime, there).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from load.local_service import free_port, stop_process_group


def pytriton_root() -> Path:
    """The installed ``pytriton/tritonserver`` folder (raises with the install hint when absent)."""
    try:
        import pytriton  # noqa: F401 - only its location is needed
    except ImportError as error:
        raise RuntimeError("tritonserver comes with nvidia-pytriton: pip install -e '.[triton]'") from error
    return Path(pytriton.__file__).resolve().parent / "tritonserver"


def backend_directory(target: Path) -> Path:
    """Assemble ``<target>/python/`` from the wheel: backend library, utils and the 3.11 stub."""
    root = pytriton_root()
    python = target / "python"
    python.mkdir(parents=True, exist_ok=True)
    for source in (
        root / "backends" / "python" / "libtriton_python.so",
        root / "backends" / "python" / "triton_python_backend_utils.py",
        root / "python_backend_stubs" / f"{sys.version_info.major}.{sys.version_info.minor}" / "triton_python_backend_stub",
    ):
        destination = python / source.name
        if not destination.exists():
            shutil.copy2(source, destination)
    return target


@dataclass
class TritonServer:
    """A running server: HTTP and gRPC addresses, metrics port, log file and process."""

    http_url: str
    grpc_url: str
    metrics_url: str
    log_path: Path
    process: subprocess.Popen

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def is_ready(self) -> bool:
        try:
            return httpx.get(f"{self.http_url}/v2/health/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False


def server_environment() -> dict[str, str]:
    """This environment plus the wheel's libraries and this venv's ``bin`` first on PATH."""
    libs = pytriton_root().parent.parent / "nvidia_pytriton.libs"
    venv_bin = str(Path(sys.executable).parent)
    return {
        **os.environ,
        "LD_LIBRARY_PATH": os.pathsep.join(filter(None, [str(libs), os.environ.get("LD_LIBRARY_PATH", "")])),
        "PATH": os.pathsep.join([venv_bin, os.environ.get("PATH", "")]),
    }


def start_triton(repository: Path, workdir: Path, ports: tuple[int, int, int] | None = None) -> TritonServer:
    """Start ``tritonserver`` on 127.0.0.1 (HTTP, gRPC, metrics on ``ports`` or free ones); returns at once."""
    workdir.mkdir(parents=True, exist_ok=True)
    http_port, grpc_port, metrics_port = ports or (free_port(), free_port(), free_port())
    backends = backend_directory(workdir / "backends")
    log_path = workdir / "tritonserver.log"
    binary = pytriton_root() / "bin" / "tritonserver"
    command = [
        str(binary),
        f"--model-repository={repository}",
        f"--backend-directory={backends}",
        "--http-address=127.0.0.1",
        f"--http-port={http_port}",
        "--grpc-address=127.0.0.1",
        f"--grpc-port={grpc_port}",
        "--metrics-address=127.0.0.1",
        f"--metrics-port={metrics_port}",
        "--allow-gpu-metrics=false",
        "--exit-on-error=true",
        "--log-verbose=0",
    ]
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command, env=server_environment(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    return TritonServer(
        f"http://127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{metrics_port}", log_path, process
    )


def wait_ready(server: TritonServer, timeout_s: float = 300) -> None:
    """Block until ``/v2/health/ready`` answers 200 (every model loaded); raise with the log tail."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"tritonserver exited with {server.process.returncode}:\n{server.log_text()[-4000:]}")
        if server.is_ready():
            return
        time.sleep(0.5)
    raise RuntimeError(f"tritonserver not ready after {timeout_s:.0f}s:\n{server.log_text()[-4000:]}")


def stop_triton(server: TritonServer, kill: bool = False) -> None:
    """SIGTERM (graceful) or SIGKILL the server's process group (server and python-backend stubs)."""
    stop_process_group(server.process, kill=kill, grace_s=30)


@contextmanager
def triton_server(repository: Path, workdir: Path, ready_timeout_s: float = 300) -> Iterator[TritonServer]:
    """A ready ``tritonserver`` of ``repository`` until the block exits."""
    server = start_triton(repository, workdir)
    try:
        wait_ready(server, ready_timeout_s)
        yield server
    finally:
        stop_triton(server)


class SupervisedTriton:
    """A ``tritonserver`` kept running as a process supervisor (systemd, Kubernetes) would: when it
    exits without ``stop`` it is started again on the same ports after ``restart_delay_s``, so a
    service in front of it recovers by itself. ``server`` is the current process; ``restarts``
    lists (seconds since start when its exit was seen, seconds when it was ready again or None)."""

    def __init__(self, repository: Path, workdir: Path, ports: tuple[int, int, int] | None = None,
                 restart_delay_s: float = 1.0, ready_timeout_s: float = 300) -> None:
        self.repository, self.workdir = repository, workdir
        self.restart_delay_s, self.ready_timeout_s = restart_delay_s, ready_timeout_s
        self.server = start_triton(repository, workdir, ports)
        self.ports = tuple(int(url.rsplit(":", 1)[1]) for url in (self.server.http_url, self.server.grpc_url,
                                                                  self.server.metrics_url))
        self.restarts: list[list[float | None]] = []
        self.started = time.monotonic()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def wait_ready(self) -> None:
        """Block until the first server is ready, then watch it."""
        wait_ready(self.server, self.ready_timeout_s)
        self._thread = threading.Thread(target=self._watch, name="triton-supervisor", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stopping.is_set():
            if self.server.process.poll() is None:
                self._stopping.wait(0.2)
                continue
            event: list[float | None] = [time.monotonic() - self.started, None]
            self.restarts.append(event)
            if self._stopping.wait(self.restart_delay_s):
                return
            self.server = start_triton(self.repository, self.workdir, self.ports)
            try:
                wait_ready(self.server, self.ready_timeout_s)
            except RuntimeError:
                continue  # it exited or never got ready: the next pass starts another
            event[1] = time.monotonic() - self.started

    def stop(self) -> None:
        self._stopping.set()
        stop_triton(self.server)  # a restart waiting for readiness sees it exit
        if self._thread is not None:
            self._thread.join()
        stop_triton(self.server)  # the one a restart may have started meanwhile


@contextmanager
def supervised_triton(repository: Path, workdir: Path, ports: tuple[int, int, int] | None = None,
                      ready_timeout_s: float = 300) -> Iterator[SupervisedTriton]:
    """A ready ``tritonserver`` of ``repository``, restarted whenever it dies, until the block exits."""
    supervisor = SupervisedTriton(repository, workdir, ports, ready_timeout_s=ready_timeout_s)
    try:
        supervisor.wait_ready()
        yield supervisor
    finally:
        supervisor.stop()
