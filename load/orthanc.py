"""Start a real Orthanc PACS (Debian's ``/usr/sbin/Orthanc`` 1.10.1 with the DICOMweb 1.7 and
python 4.0 plugins) on a free port, optionally auto-forwarding stable CT/MR series to the
service's STOW-RS route with ``load/orthanc_forwarder.py``.

Used by ``make pacs`` (``python -m load.orthanc --forward-url URL``), the PACS integration tests
and the benchmark.

Network exposure: Orthanc 1.10.1 has **no bind-address option**; its HTTP port listens on all
interfaces. ``RemoteAccessAllowed: false`` makes it refuse every non-loopback HTTP client (it
answers 401, authentication being off), which is what keeps this PACS local. The DICOM
(C-STORE) port is switched off entirely (``DicomServerEnabled: false``).

Forwarding: Orthanc raises ``STABLE_SERIES`` once a series got no new instance for ``StableAge``
seconds, measured with a 1-second clock (boost ``second_clock``): in practice after StableAge - 1
to StableAge + 1 s of quiet, so a sender pausing longer than StableAge - 1 s between instances
can have its series sent in parts (keep StableAge >= 2; Orthanc's own default is 60). The
forwarder then sends the whole series with one chunked STOW-RS POST to
``{forward_url}/studies``. A series that gets new instances afterwards becomes stable again and
is sent again, whole. Series go one at a time.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx

from load.local_service import free_port, stop_process_group, wait_until_answering

ORTHANC_BINARY = "Orthanc"
PLUGIN_DIRECTORY = Path("/usr/share/orthanc/plugins")
PLUGINS = ("libOrthancDicomWeb.so", "libOrthancPython.so")
FORWARDER_SCRIPT = Path(__file__).resolve().with_name("orthanc_forwarder.py")
FORWARD_SERVER = "medseg"  # the DicomWeb.Servers entry the forwarder posts to
FORWARD_MODALITIES = ("CT", "MR")
SYSTEM_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"

T = TypeVar("T")


def orthanc_binary() -> str:
    """The ``Orthanc`` executable (``/usr/sbin`` is not always on PATH); raises with the install hint."""
    found = shutil.which(ORTHANC_BINARY) or shutil.which(ORTHANC_BINARY, path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise RuntimeError("Orthanc is not installed: apt-get install orthanc orthanc-dicomweb orthanc-python")
    missing = [name for name in PLUGINS if not (PLUGIN_DIRECTORY / name).is_file()]
    if missing:
        raise RuntimeError(f"Orthanc plugins missing from {PLUGIN_DIRECTORY}: {', '.join(missing)} "
                           "(apt-get install orthanc-dicomweb orthanc-python)")
    return found


def wait_for(predicate: Callable[[], T], timeout_s: float, interval_s: float = 0.2) -> T:
    """Poll ``predicate`` until it returns something truthy (returned); TimeoutError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"condition not met after {timeout_s:.1f}s")
        time.sleep(interval_s)


@dataclass
class OrthancServer:
    """A running Orthanc: REST base ``url``, DICOMweb base ``dicomweb_url`` (STOW-RS at
    ``{dicomweb_url}/studies``), the process (its own process group), ``workdir`` and log file."""

    url: str
    dicomweb_url: str
    process: subprocess.Popen
    workdir: Path
    log_path: Path

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, path: str, **params: Any) -> Any:
        """``GET {url}{path}`` as JSON (raises on an HTTP error)."""
        response = httpx.get(self.url + path, params=params or None, timeout=60)
        response.raise_for_status()
        return response.json()

    def upload(self, files: Iterable[bytes]) -> list[str]:
        """Store each DICOM file with ``POST /instances``; returns their Orthanc instance ids
        (re-storing an instance is fine: Orthanc answers ``AlreadyStored`` with the same id)."""
        ids = []
        with httpx.Client(base_url=self.url, timeout=60) as client:
            for data in files:
                response = client.post("/instances", content=data, headers={"Content-Type": "application/dicom"})
                response.raise_for_status()
                ids.append(response.json()["ID"])
        return ids

    def find_study(self, study_uid: str) -> str | None:
        """The Orthanc id of the study with StudyInstanceUID ``study_uid`` (None when absent)."""
        response = httpx.post(self.url + "/tools/lookup", content=study_uid, timeout=60)
        response.raise_for_status()
        return next((item["ID"] for item in response.json() if item.get("Type") == "Study"), None)

    def series_of_study(self, study_uid: str) -> list[dict[str, Any]]:
        """Orthanc's series of a study (by StudyInstanceUID; [] when absent): each with ``ID``,
        ``Instances`` (Orthanc ids) and ``MainDicomTags`` (Modality, SeriesInstanceUID,
        Manufacturer, SeriesNumber...)."""
        study_id = self.find_study(study_uid)
        return [] if study_id is None else self.get(f"/studies/{study_id}/series")

    def instance_tags(self, orthanc_id: str) -> dict[str, Any]:
        """``GET /instances/{id}/simplified-tags``: keyword → value."""
        return self.get(f"/instances/{orthanc_id}/simplified-tags")

    def instance_file(self, orthanc_id: str) -> bytes:
        """The stored DICOM file of an instance (``GET /instances/{id}/file``)."""
        response = httpx.get(f"{self.url}/instances/{orthanc_id}/file", timeout=60)
        response.raise_for_status()
        return response.content

    def jobs(self) -> list[dict[str, Any]]:
        """Orthanc's jobs with their details (the forwarder's STOW jobs among them)."""
        return self.get("/jobs", expand="")


def write_config(
    workdir: Path,
    port: int,
    *,
    forward_url: str | None = None,
    stable_age_s: int = 2,
    forward_timeout_s: int = 60,
    forward_retries: int = 5,
    retry_delay_s: float = 2.0,
    name: str = "medseg-pacs",
) -> Path:
    """``workdir/config.json`` for an Orthanc on HTTP ``port`` with storage under ``workdir``;
    with ``forward_url`` (the service's DICOMweb base; STOW goes to ``{forward_url}/studies``) a
    DICOMweb server ``medseg`` and the forwarder's ``MedsegForward`` section."""
    storage = workdir / "storage"
    storage.mkdir(parents=True, exist_ok=True)
    dicomweb: dict[str, Any] = {"Enable": True, "Root": "/dicom-web/"}
    config: dict[str, Any] = {
        "Name": name,
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "HttpPort": port,
        "DicomServerEnabled": False,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "SaveJobs": False,
        "StableAge": int(stable_age_s),
        "Plugins": [str(PLUGIN_DIRECTORY / plugin) for plugin in PLUGINS],
        "PythonScript": str(FORWARDER_SCRIPT),
        "DicomWeb": dicomweb,
    }
    if Path(SYSTEM_CA_BUNDLE).is_file():  # for an https forward_url (Orthanc's default is no bundle)
        config["HttpsCACertificates"] = SYSTEM_CA_BUNDLE
    if forward_url is not None:
        dicomweb["Servers"] = {
            FORWARD_SERVER: {
                "Url": forward_url.rstrip("/") + "/",
                "ChunkedTransfers": True,
                "Timeout": int(forward_timeout_s),
            }
        }
        config["MedsegForward"] = {
            "Server": FORWARD_SERVER,
            "Modalities": list(FORWARD_MODALITIES),
            "Retries": int(forward_retries),
            "RetryDelaySeconds": float(retry_delay_s),
        }
    path = workdir / "config.json"
    path.write_text(json.dumps(config, indent=2))
    return path


@contextmanager
def orthanc_server(
    workdir: Path,
    *,
    forward_url: str | None = None,
    stable_age_s: int = 2,
    forward_timeout_s: int = 60,
    log_path: Path | None = None,
    port: int | None = None,
    forward_retries: int = 5,
    retry_delay_s: float = 2.0,
    verbose: bool = False,
    ready_timeout_s: float = 60,
) -> Iterator[OrthancServer]:
    """A running Orthanc (storage, config and log in ``workdir``) until the block exits; stopped
    with its whole process group. ``forward_url``: the service's DICOMweb base URL (e.g.
    ``http://127.0.0.1:3000/dicom-web``): stable CT/MR series are STOWed there (chunked, one POST
    per series, ``forward_timeout_s`` per request; a failed POST is retried ``forward_retries``
    times, ``retry_delay_s`` doubling each time). ``port``: HTTP port (default a free one).
    Orthanc cannot bind to loopback only (no bind option in 1.10.1): ``RemoteAccessAllowed: false``
    is what refuses non-local clients."""
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    binary = orthanc_binary()
    port = port or free_port()
    config = write_config(
        workdir,
        port,
        forward_url=forward_url,
        stable_age_s=stable_age_s,
        forward_timeout_s=forward_timeout_s,
        forward_retries=forward_retries,
        retry_delay_s=retry_delay_s,
    )
    log_path = Path(log_path) if log_path is not None else workdir / "orthanc.log"
    command = [binary, *(["--verbose"] if verbose else []), str(config)]
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command, cwd=workdir, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    server = OrthancServer(url, url + "/dicom-web", process, workdir, log_path)
    try:
        wait_until_answering("Orthanc", server.process, f"{server.url}/system", server.log_text, ready_timeout_s, 0.2)
        yield server
    finally:
        stop_process_group(process, grace_s=20)


def main(argv: list[str] | None = None) -> int:
    """``python -m load.orthanc [--forward-url URL] [--port P] [--workdir DIR]``: run Orthanc
    (forwarding stable CT/MR series to URL) until Ctrl-C."""
    parser = argparse.ArgumentParser(prog="python -m load.orthanc", description=main.__doc__)
    parser.add_argument("--forward-url", help="the service's DICOMweb base, e.g. http://127.0.0.1:3000/dicom-web")
    parser.add_argument("--port", type=int, default=8042, help="HTTP port (default 8042; 0 for a free one)")
    parser.add_argument("--workdir", type=Path, help="storage, config and log (default: a temporary folder)")
    parser.add_argument(
        "--stable-age", type=int, default=2, help="seconds without new instances before a series is sent"
    )
    parser.add_argument("--forward-timeout", type=int, default=60, help="seconds Orthanc waits for one STOW answer")
    parser.add_argument("--verbose", action="store_true", help="Orthanc's --verbose log")
    args = parser.parse_args(argv)

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # Ctrl-C, and also SIGTERM or a SIGINT to a background job (where Python inherits it ignored)
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    with tempfile.TemporaryDirectory(prefix="medseg-orthanc-") as scratch:
        workdir = args.workdir or Path(scratch)
        try:
            with orthanc_server(
                workdir,
                forward_url=args.forward_url,
                stable_age_s=args.stable_age,
                forward_timeout_s=args.forward_timeout,
                port=args.port or None,
                verbose=args.verbose,
            ) as server:
                print(f"Orthanc REST     {server.url}/  (explorer: {server.url}/app/explorer.html)")
                print(f"Orthanc DICOMweb {server.dicomweb_url}/  (STOW-RS: POST {server.dicomweb_url}/studies)")
                if args.forward_url:
                    modalities = "/".join(FORWARD_MODALITIES)
                    print(f"forwarding       stable {modalities} series ({args.stable_age}s without new instances)"
                          f" to {args.forward_url.rstrip('/')}/studies")
                else:
                    print("forwarding       off (no --forward-url)")
                print(f"storage and log  {server.workdir}  ({server.log_path.name})")
                print("local clients only; Ctrl-C stops", flush=True)
                while server.process.poll() is None:
                    time.sleep(0.5)
                print(f"Orthanc exited with {server.process.returncode}:\n{server.log_text()[-4000:]}", file=sys.stderr)
                return 1
        except KeyboardInterrupt:
            return 0


if __name__ == "__main__":
    sys.exit(main())
