"""The PACS benchmark: a CT series of ``slices`` 512² instances (uncompressed, as a modality sends).

1. STOW-RS receive throughput (MB/s of body) of the service next to Orthanc's own STOW server,
   the same body to each, alternating, ``rounds`` times (fresh UIDs per round; each service job
   is left to finish before the next send, so no inference competes with a measurement).
2. The round trip through a real PACS: the series uploaded to Orthanc instance by instance,
   Orthanc forwarding it once stable, the SEG back in Orthanc. Time from the last instance stored
   in Orthanc to the SEG visible there, split into Orthanc's stable wait and forward, the service's
   quiet wait, queue, assembly, inference, SEG build and delivery (the job's own timings).

    python -m load bench-pacs --slices 200
"""

from __future__ import annotations

import statistics
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import numpy as np

from export.phantoms.ct_liver import make_ct_slice
from export.phantoms.dicom_writer import write_series
from load.local_service import ROOT
from load.orthanc import orthanc_server, wait_for
from load.pacs import pacs_pair


def phantom_volume(slices: int, seed: int = 11) -> np.ndarray:
    """(slices, 512, 512) HU: one phantom slice per position (each its own random anatomy)."""
    rng = np.random.default_rng(seed)
    return np.stack([make_ct_slice(rng, shape=(512, 512), spacing_mm=(0.78, 0.78)).hu for _ in range(slices)])


def stow_body(files: list[bytes]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + f + b"\r\n" for f in files)
    return body + f"--{boundary}--\r\n".encode(), f"multipart/related; type=\"application/dicom\"; boundary={boundary}"


def timed_stow(dicomweb_url: str, body: bytes, content_type: str) -> float:
    """Seconds for one STOW-RS of ``body`` (answer read); raises unless every instance was stored."""
    started = time.perf_counter()
    response = httpx.post(f"{dicomweb_url}/studies", content=body, timeout=600,
                          headers={"Content-Type": content_type, "Accept": "application/dicom+json"})
    elapsed = time.perf_counter() - started
    if response.status_code != 200:
        raise RuntimeError(f"STOW to {dicomweb_url} answered {response.status_code}: {response.text[:200]}")
    return elapsed


def finished_job(service_url: str, study: str, states: tuple[str, ...], timeout_s: float = 900) -> dict:
    def job() -> dict | None:
        jobs = httpx.get(f"{service_url}/v1/jobs", params={"study": study}, timeout=30).json()["jobs"]
        return jobs[0] if jobs and jobs[0]["state"] in states else None

    return wait_for(job, timeout_s=timeout_s, interval_s=0.2)


def run_pacs_benchmark(slices: int, rounds: int, quiet_s: float, stable_age_s: int) -> None:
    print(f"phantom CT series: {slices} x 512x512, explicit VR little endian", flush=True)
    volume = phantom_volume(slices)
    with tempfile.TemporaryDirectory(prefix="medseg-bench-pacs-") as scratch:
        work = Path(scratch)
        with orthanc_server(work / "orthanc-alone") as alone, pacs_pair(
            work / "pair", ROOT / "model_repository", env={"MEDSEG_SERIES_QUIET_S": str(quiet_s)},
            stable_age_s=stable_age_s,
        ) as (service, orthanc):
            service_s, orthanc_s = [], []
            size = 0
            for round_index in range(rounds):
                files = write_series(volume, (0.78, 0.78), 1.0)
                body, content_type = stow_body(files)
                size = len(body)
                study = _study_of(files[0])
                if round_index % 2:
                    orthanc_s.append(timed_stow(alone.dicomweb_url, body, content_type))
                    service_s.append(timed_stow(f"{service.url}/dicom-web", body, content_type))
                else:
                    service_s.append(timed_stow(f"{service.url}/dicom-web", body, content_type))
                    orthanc_s.append(timed_stow(alone.dicomweb_url, body, content_type))
                finished_job(service.url, study, ("delivered", "delivery_failed", "failed"))
            mb = size / 1e6
            service_p50, orthanc_p50 = statistics.median(service_s), statistics.median(orthanc_s)
            print(f"\nSTOW-RS receive, {mb:.1f} MB body ({slices} instances), median of {rounds} (s, MB/s):")
            print(f"  medseg-serve  {service_p50:6.2f} s  {mb / service_p50:7.1f} MB/s   (each: {', '.join(f'{t:.2f}' for t in service_s)})")
            print(f"  Orthanc       {orthanc_p50:6.2f} s  {mb / orthanc_p50:7.1f} MB/s   (each: {', '.join(f'{t:.2f}' for t in orthanc_s)})")
            print(f"  ratio service/Orthanc throughput x{orthanc_p50 / service_p50:.2f}", flush=True)

            files = write_series(volume, (0.78, 0.78), 1.0)
            study = _study_of(files[0])
            orthanc.upload(files)
            last_stored = time.time()

            def seg_in_orthanc() -> bool:
                return any(s["MainDicomTags"].get("Modality") == "SEG" for s in orthanc.series_of_study(study))

            wait_for(seg_in_orthanc, timeout_s=900, interval_s=0.1)
            seg_visible = time.time()
            job = finished_job(service.url, study, ("delivered",))
            timings = job["timings_s"]
            stages = {
                "Orthanc stable wait + forward": job["last_instance_at"] - last_stored,
                **{name: timings.get(key, 0.0) for name, key in (
                    ("service quiet wait", "quiet_wait"), ("queue", "queue"), ("assembly", "assembly"),
                    ("inference", "inference"), ("SEG build + write", "seg"), ("delivery (STOW to Orthanc)", "delivery"),
                )},
            }
            print(f"\nround trip, last instance stored in Orthanc -> SEG visible in Orthanc: {seg_visible - last_stored:.2f} s"
                  f" (Orthanc StableAge {stable_age_s} s, MEDSEG_SERIES_QUIET_S {quiet_s:g} s)")
            for name, seconds in stages.items():
                print(f"  {name:32s} {seconds:7.2f} s")
            print(f"  {'(bookkeeping, polling)':32s} {seg_visible - last_stored - sum(stages.values()):7.2f} s")


def _study_of(data: bytes) -> str:
    import io

    import pydicom

    return str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).StudyInstanceUID)
