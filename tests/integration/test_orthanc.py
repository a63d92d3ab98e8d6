"""A real Orthanc PACS (Debian's 1.10.1 with its DICOMweb and python plugins) started by
``load.orthanc`` and auto-forwarding with ``load/orthanc_forwarder.py`` to a small STOW-RS
receiver run by the test (a stand-in for the service's STOW route).

- A CT series uploaded through Orthanc's REST API is sent once, whole, in one chunked STOW
  request, after StableAge.
- SEG and SR series, a series made by the service (Manufacturer "medseg-serve") and a source
  series holding one service-made instance are never sent (the loop guard).
- A failed STOW (503) is retried until it succeeds.
- STOW-RS into Orthanc (dicomweb-client) stores the instance, which is then forwarded as well.
- Non-local HTTP clients are refused (Orthanc 1.10.1 has no bind address: it listens everywhere).
- Leaving the context leaves no Orthanc process and frees its port.
"""

from __future__ import annotations

import io
import json
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from dicomweb_client import DICOMwebClient
from pydicom.uid import generate_uid

from export.phantoms.dicom_writer import write_ct_slice
from load.local_service import free_port
from load.orthanc import OrthancServer, orthanc_server, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

# Orthanc measures a series' age with a 1-second clock (boost second_clock): "stable" means
# StableAge - 1 to StableAge + 1 s without a new instance. 2 s keeps a 0.6 s pause safe.
STABLE_AGE_S = 2


# --- a minimal STOW-RS receiver ---------------------------------------------------------------


@dataclass
class Received:
    """One STOW request as the receiver saw it."""

    headers: dict[str, str]
    instances: list[pydicom.Dataset]

    @property
    def sop_uids(self) -> list[str]:
        return [ds.SOPInstanceUID for ds in self.instances]

    @property
    def series_uids(self) -> set[str]:
        return {ds.SeriesInstanceUID for ds in self.instances}


@dataclass
class StowReceiver:
    """Records every STOW request; answers 503 while ``failures[series_uid]`` > 0."""

    url: str
    requests: list[Received] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=dict)
    refused: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def for_series(self, series_uid: str) -> list[Received]:
        with self.lock:
            return [request for request in self.requests if series_uid in request.series_uids]


def read_body(handler: BaseHTTPRequestHandler) -> bytes:
    """The whole request body, ``Content-Length`` or ``Transfer-Encoding: chunked``."""
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int(handler.rfile.readline().split(b";")[0].strip(), 16)
            if size == 0:
                while handler.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                    pass
                return b"".join(chunks)
            chunks.append(handler.rfile.read(size))
            handler.rfile.readline()  # the CRLF after each chunk
    return handler.rfile.read(int(handler.headers.get("Content-Length", 0)))


def split_multipart(content_type: str, body: bytes) -> list[bytes]:
    """The parts' contents of a multipart/related body (boundary quoted or not)."""
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    assert match, content_type
    delimiter = b"--" + match.group(1).encode()
    parts = []
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):  # the close delimiter
            break
        headers, _, content = chunk.partition(b"\r\n\r\n")
        parts.append(content[:-2] if content.endswith(b"\r\n") else content)
    return parts


def store_response(instances: list[pydicom.Dataset], base_url: str) -> dict:
    """A Store Instances Response (PS3.18 §10.5.3) with one ReferencedSOPSequence item each."""
    return {
        "00081190": {"vr": "UR", "Value": [f"{base_url}/studies/{instances[0].StudyInstanceUID}"]},
        "00081199": {
            "vr": "SQ",
            "Value": [
                {
                    "00081150": {"vr": "UI", "Value": [ds.SOPClassUID]},
                    "00081155": {"vr": "UI", "Value": [ds.SOPInstanceUID]},
                }
                for ds in instances
            ],
        },
    }


@pytest.fixture(scope="module")
def receiver() -> Iterator[StowReceiver]:
    port = free_port()
    state = StowReceiver(f"http://127.0.0.1:{port}/dicom-web")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = read_body(self)
            if self.path.rstrip("/") != "/dicom-web/studies":
                return self._answer(404, b"{}")
            content_type = self.headers.get("Content-Type", "")
            instances = [pydicom.dcmread(io.BytesIO(part)) for part in split_multipart(content_type, body)]
            received = Received(dict(self.headers), instances)
            with state.lock:
                failing = [uid for uid in received.series_uids if state.failures.get(uid, 0) > 0]
                for uid in failing:
                    state.failures[uid] -= 1
                (state.refused if failing else state.requests).append(received)
            if failing:
                return self._answer(503, b'{"error": "busy"}', "application/json")
            self._answer(200, json.dumps(store_response(instances, state.url)).encode(), "application/dicom+json")

        def _answer(self, status: int, body: bytes, content_type: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="stow-receiver", daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.fixture(scope="module")
def pacs(receiver: StowReceiver, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    with orthanc_server(
        tmp_path_factory.mktemp("orthanc"),
        forward_url=receiver.url,
        stable_age_s=STABLE_AGE_S,
        forward_timeout_s=20,
        retry_delay_s=0.5,
    ) as server:
        yield server


# --- DICOM files ------------------------------------------------------------------------------


def ct_series(
    count: int,
    study_uid: str | None = None,
    *,
    modality: str = "CT",
    manufacturer: str | None = None,
) -> list[bytes]:
    """``count`` slices of one series (shared study / series / frame of reference, z = 0, 2.5, ...)."""
    study_uid = study_uid or generate_uid()
    series_uid, frame_uid = generate_uid(), generate_uid()
    rng = np.random.default_rng(count)
    files = []
    for index in range(count):
        hu = rng.integers(-1000, 400, (16, 16)).astype(float)
        ds = pydicom.dcmread(io.BytesIO(write_ct_slice(hu, (0.8, 0.8), modality=modality)))
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.InstanceNumber = index + 1
        ds.ImagePositionPatient = ["0", "0", str(2.5 * index)]
        if manufacturer is not None:
            ds.Manufacturer = manufacturer
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        files.append(buffer.getvalue())
    return files


def uids(files: list[bytes], keyword: str) -> list[str]:
    return [str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)[keyword].value) for data in files]


def series_id(pacs: OrthancServer, study_uid: str, series_uid: str) -> str:
    series = pacs.series_of_study(study_uid)
    return next(s["ID"] for s in series if s["MainDicomTags"]["SeriesInstanceUID"] == series_uid)


def forward_log_lines(pacs: OrthancServer, orthanc_id: str) -> list[str]:
    return [line for line in pacs.log_text().splitlines() if "medseg-forward" in line and orthanc_id in line]


# --- tests ------------------------------------------------------------------------------------


def test_stable_ct_series_is_forwarded_once_whole_after_stable_age(pacs: OrthancServer, receiver: StowReceiver) -> None:
    files = ct_series(5)
    series_uid = uids(files, "SeriesInstanceUID")[0]
    ids = pacs.upload(files[:3])
    time.sleep(0.6)  # a pause shorter than StableAge - 1 s: still one series in the making
    ids += pacs.upload(files[3:])
    uploaded = time.monotonic()
    assert len(set(ids)) == 5

    requests = wait_for(lambda: receiver.for_series(series_uid), timeout_s=20, interval_s=0.05)
    arrived = time.monotonic() - uploaded
    assert arrived >= STABLE_AGE_S - 1, f"sent {arrived:.2f}s after the last instance, before StableAge"
    (request,) = requests
    assert sorted(request.sop_uids) == sorted(uids(files, "SOPInstanceUID"))  # the whole series, one POST
    assert request.headers.get("Transfer-Encoding", "").lower() == "chunked"
    assert request.headers["Content-Type"].startswith("multipart/related")
    assert 'type="application/dicom"' in request.headers["Content-Type"]
    assert "application/dicom+json" in request.headers.get("Accept", "")
    assert all(ds.PatientID and ds.pixel_array.shape == (16, 16) for ds in request.instances)  # full files

    time.sleep(1.5)  # a forwarded series is not sent again
    assert len(receiver.for_series(series_uid)) == 1
    orthanc_id = series_id(pacs, request.instances[0].StudyInstanceUID, series_uid)
    assert any("forwarded" in line and "CT, 5 instances" in line for line in forward_log_lines(pacs, orthanc_id))


def test_derived_objects_and_service_outputs_are_never_forwarded(pacs: OrthancServer, receiver: StowReceiver) -> None:
    study_uid = generate_uid()
    source = ct_series(3, study_uid)
    seg = ct_series(2, study_uid, modality="SEG")
    sr = ct_series(1, study_uid, modality="SR")
    service_made = ct_series(2, study_uid, manufacturer="medseg-serve")  # CT modality, made by the service
    mixed = ct_series(3, study_uid)  # a source series with one service-made instance among others
    mixed_ds = pydicom.dcmread(io.BytesIO(mixed[2]))
    mixed_ds.Manufacturer = "medseg-serve"
    buffer = io.BytesIO()
    mixed_ds.save_as(buffer, enforce_file_format=True)
    mixed[2] = buffer.getvalue()
    pacs.upload([*mixed, *seg, *sr, *service_made, *source])

    source_uid = uids(source, "SeriesInstanceUID")[0]
    wait_for(lambda: receiver.for_series(source_uid), timeout_s=20)
    skipped = {uids(files, "SeriesInstanceUID")[0]: files for files in (seg, sr, service_made, mixed)}
    orthanc_ids = {uid: series_id(pacs, study_uid, uid) for uid in skipped}
    # every skipped series has had its STABLE_SERIES handled (the forwarder logs why it is not sent)
    def all_handled() -> bool:
        return all(any("not forwarded" in line for line in forward_log_lines(pacs, oid)) for oid in orthanc_ids.values())

    wait_for(all_handled, timeout_s=10)
    for uid in skipped:
        assert receiver.for_series(uid) == [], f"series {uid} was forwarded"
    with receiver.lock:
        sent = {ds.SOPInstanceUID for request in receiver.requests for ds in request.instances}
    assert sent.isdisjoint(uid for files in skipped.values() for uid in uids(files, "SOPInstanceUID"))
    reasons = {uid: forward_log_lines(pacs, oid) for uid, oid in orthanc_ids.items()}
    assert "derived modality SEG" in "".join(reasons[uids(seg, "SeriesInstanceUID")[0]])
    assert "derived modality SR" in "".join(reasons[uids(sr, "SeriesInstanceUID")[0]])
    assert "made by medseg-serve" in "".join(reasons[uids(service_made, "SeriesInstanceUID")[0]])
    assert "made by medseg-serve" in "".join(reasons[uids(mixed, "SeriesInstanceUID")[0]])
    # the logs name Orthanc ids, counts and modalities only
    assert "Phantom" not in pacs.log_text() and "PHANTOM-001" not in pacs.log_text()


def test_failed_stow_is_retried_until_the_service_accepts(pacs: OrthancServer, receiver: StowReceiver) -> None:
    files = ct_series(2)
    series_uid = uids(files, "SeriesInstanceUID")[0]
    with receiver.lock:
        receiver.failures[series_uid] = 2  # "service unavailable" twice
    pacs.upload(files)
    (request,) = wait_for(lambda: receiver.for_series(series_uid), timeout_s=30)
    assert sorted(request.sop_uids) == sorted(uids(files, "SOPInstanceUID"))
    assert sum(series_uid in refused.series_uids for refused in receiver.refused) == 2
    orthanc_id = series_id(pacs, request.instances[0].StudyInstanceUID, series_uid)
    assert sum("retrying" in line for line in forward_log_lines(pacs, orthanc_id)) == 2


def test_stow_into_orthanc_stores_the_instance_and_forwards_it(pacs: OrthancServer, receiver: StowReceiver) -> None:
    files = ct_series(2)
    datasets = [pydicom.dcmread(io.BytesIO(data)) for data in files]
    answer = DICOMwebClient(pacs.dicomweb_url).store_instances(datasets)
    stored = [item.ReferencedSOPInstanceUID for item in answer.ReferencedSOPSequence]
    assert sorted(stored) == sorted(ds.SOPInstanceUID for ds in datasets)
    assert not answer.get("FailedSOPSequence")  # Orthanc sends it empty

    (series,) = pacs.series_of_study(datasets[0].StudyInstanceUID)
    assert series["MainDicomTags"]["SeriesInstanceUID"] == datasets[0].SeriesInstanceUID
    assert series["MainDicomTags"]["Modality"] == "CT"
    assert len(series["Instances"]) == 2
    read_back = pydicom.dcmread(io.BytesIO(pacs.instance_file(series["Instances"][0])))
    assert read_back.SOPInstanceUID in stored
    assert pacs.instance_tags(series["Instances"][0])["SOPInstanceUID"] == read_back.SOPInstanceUID
    (request,) = wait_for(lambda: receiver.for_series(datasets[0].SeriesInstanceUID), timeout_s=20)
    assert sorted(request.sop_uids) == sorted(stored)


def _non_loopback_ipv4() -> str | None:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect(("203.0.113.1", 9))  # UDP: nothing is sent, this only picks the outgoing address
            address = sock.getsockname()[0]
    except OSError:
        return None
    return None if address.startswith("127.") else address


def test_non_local_clients_are_refused(pacs: OrthancServer) -> None:
    """Orthanc 1.10.1 cannot bind to loopback only; RemoteAccessAllowed false refuses the rest."""
    address = _non_loopback_ipv4()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    port = pacs.url.rsplit(":", 1)[1]
    assert httpx.get(f"http://{address}:{port}/system", timeout=10).status_code == 401
    assert httpx.get(f"{pacs.url}/system", timeout=10).status_code == 200


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[2]) == pgid:  # fields after "(comm)": state ppid pgrp
                members.append(int(entry.name))
    return members


def test_process_group_is_gone_and_port_free_after_exit(tmp_path: Path) -> None:
    with orthanc_server(tmp_path, stable_age_s=STABLE_AGE_S) as server:
        pid = server.process.pid
        port = int(server.url.rsplit(":", 1)[1])
        assert server.get("/system")["Version"] == "1.10.1"
        config = json.loads((tmp_path / "config.json").read_text())
        assert config["RemoteAccessAllowed"] is False and config["DicomServerEnabled"] is False
        assert "Servers" not in config["DicomWeb"] and "MedsegForward" not in config
        assert "forwarding off" in server.log_text()
        assert _group_members(pid) == [pid]
    assert server.process.poll() is not None
    assert _group_members(pid) == []
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as any server would
        sock.bind(("127.0.0.1", port))  # the HTTP port is free again
        sock.listen()
    assert "Orthanc has stopped" in server.log_text()
