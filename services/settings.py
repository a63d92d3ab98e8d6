"""Service settings, read once from the environment (``MEDSEG_*`` variables)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

_DEFAULT_REPOSITORY = Path(__file__).resolve().parent.parent / "model_repository"
IN_PROCESS_BACKENDS = ("embedded", "openvino")
BACKENDS = (*IN_PROCESS_BACKENDS, "triton")
OV_PRECISIONS = ("auto", "bf16", "f32")


@dataclass(frozen=True)
class Settings:
    repository: Path  # MEDSEG_MODEL_REPOSITORY: the Triton model repository written by export
    backend: str  # MEDSEG_BACKEND: "embedded" (ONNX Runtime in-process) | "openvino" (OpenVINO in-process) | "triton"
    max_upload_bytes: int  # MEDSEG_MAX_UPLOAD_MB: larger request bodies get 413
    max_volume_bytes: int  # MEDSEG_MAX_VOLUME_MB: a NIfTI file larger than this once decompressed gets 413
    ort_threads: int  # MEDSEG_ORT_THREADS: intra-op threads per ONNX Runtime session (0 = all cores)
    max_queue_ms: int  # MEDSEG_MAX_QUEUE_MS: a graph call queued longer than this is refused (429)
    request_timeout_s: float  # MEDSEG_REQUEST_TIMEOUT_S: request deadline, kept by FrameworkErrors (504 'timeout')
    max_concurrency: int = 64  # MEDSEG_MAX_CONCURRENCY: requests in flight; one more gets 429 at once
    decode_workers: int = 2  # MEDSEG_DECODE_WORKERS: processes that decode uploads (DecoderPool)
    decode_budget_s: float = 10.0  # MEDSEG_DECODE_BUDGET_S: one decode stopped past this (422)
    decode_memory_bytes: int = 4 << 30  # MEDSEG_DECODE_MEMORY_MB: address space of one decoder process
    triton_urls: tuple[str, ...] = ()  # TRITON_URLS: comma-separated host:grpc_port of the Triton servers
    triton_timeout_s: float = 60.0  # MEDSEG_TRITON_TIMEOUT_S: per inference call, end to end
    data_dir: Path = Path("data")  # MEDSEG_DATA_DIR: the DICOMweb spool, results and the SQLite job store
    max_study_bytes: int = 4 << 30  # MEDSEG_MAX_STUDY_MB: a larger STOW-RS body gets 413
    series_quiet_s: float = 10.0  # MEDSEG_SERIES_QUIET_S: a series becomes a job this long after its last instance
    routes_path: Path | None = None  # MEDSEG_ROUTES: the routing file (None: services/jobs/default_routes.json)
    pacs_url: str | None = None  # MEDSEG_PACS_URL: DICOMweb root the SEGs are stored to (None: pull only)
    delivery_attempts: int = 8  # MEDSEG_DELIVERY_ATTEMPTS: STOW tries before a job is delivery_failed
    max_streams: int = 16  # MEDSEG_MAX_STREAMS: open WebSocket video streams; one more is closed with 1013
    stream_max_pixels: int = 3840 * 2160  # MEDSEG_STREAM_MAX_PIXELS: a larger stream frame gets a per-frame 422
    stream_idle_s: float = 60.0  # MEDSEG_STREAM_IDLE_S: a stream with no message for this long is closed (1001)
    stream_graphs: str = "api"  # MEDSEG_STREAM_GRAPHS: "api" runs streams' graphs in the API process (embedded back end), "worker" in the inference worker
    delivery_backoff_s: float = 2.0  # MEDSEG_DELIVERY_BACKOFF_S: first retry delay, doubled per try (cap 5 min)
    ov_precision: str = "auto"  # MEDSEG_OV_PRECISION: auto (bf16 where the CPU has it) | bf16 | f32 (openvino back end)
    ov_threads: int = 0  # MEDSEG_OV_THREADS: inference threads per compiled graph (0 = OpenVINO picks)
    ov_cache_dir: Path | None = None  # MEDSEG_OV_CACHE_DIR: compiled-model cache (default <MEDSEG_DATA_DIR>/openvino-cache)

    @property
    def in_process(self) -> bool:
        """Whether the graphs run in this service's processes (not on Triton servers)."""
        return self.backend in IN_PROCESS_BACKENDS


def load_settings(env: dict[str, str] | None = None) -> Settings:
    env = dict(os.environ if env is None else env)
    backend = env.get("MEDSEG_BACKEND", "embedded")
    if backend not in BACKENDS:
        raise ValueError(f"MEDSEG_BACKEND must be one of {', '.join(BACKENDS)}, not {backend!r}")
    ov_precision = env.get("MEDSEG_OV_PRECISION", "auto")
    if ov_precision not in OV_PRECISIONS:
        raise ValueError(f"MEDSEG_OV_PRECISION must be one of {', '.join(OV_PRECISIONS)}, not {ov_precision!r}")
    data_dir = Path(env.get("MEDSEG_DATA_DIR", "data"))
    pacs_url = env.get("MEDSEG_PACS_URL") or None
    if pacs_url is not None and not re.match(r"^https?://[^/\s:]+(:[0-9]{1,5})?(/\S*)?$", pacs_url):
        raise ValueError("MEDSEG_PACS_URL must be an http(s) URL of a DICOMweb root, e.g. http://pacs:8042/dicom-web")
    stream_graphs = env.get("MEDSEG_STREAM_GRAPHS", "api")
    if stream_graphs not in ("api", "worker"):
        raise ValueError(f"MEDSEG_STREAM_GRAPHS must be 'api' or 'worker', not {stream_graphs!r}")
    return Settings(
        repository=Path(env.get("MEDSEG_MODEL_REPOSITORY", str(_DEFAULT_REPOSITORY))),
        backend=backend,
        max_upload_bytes=int(float(env.get("MEDSEG_MAX_UPLOAD_MB", "256")) * 1024 * 1024),
        max_volume_bytes=int(float(env.get("MEDSEG_MAX_VOLUME_MB", "1024")) * 1024 * 1024),
        ort_threads=int(env.get("MEDSEG_ORT_THREADS", "0")),
        max_queue_ms=int(env.get("MEDSEG_MAX_QUEUE_MS", "20000")),
        request_timeout_s=float(env.get("MEDSEG_REQUEST_TIMEOUT_S", "120")),
        max_concurrency=int(env.get("MEDSEG_MAX_CONCURRENCY", "64")),
        decode_workers=int(env.get("MEDSEG_DECODE_WORKERS", str(min(4, os.cpu_count() or 1)))),
        decode_budget_s=float(env.get("MEDSEG_DECODE_BUDGET_S", "10")),
        decode_memory_bytes=int(float(env.get("MEDSEG_DECODE_MEMORY_MB", "4096")) * 1024 * 1024),
        triton_urls=tuple(u.strip() for u in env.get("TRITON_URLS", "127.0.0.1:8001").split(",") if u.strip()),
        triton_timeout_s=float(env.get("MEDSEG_TRITON_TIMEOUT_S", "60")),
        data_dir=data_dir,
        max_study_bytes=int(float(env.get("MEDSEG_MAX_STUDY_MB", "4096")) * 1024 * 1024),
        series_quiet_s=float(env.get("MEDSEG_SERIES_QUIET_S", "10")),
        routes_path=Path(env["MEDSEG_ROUTES"]) if env.get("MEDSEG_ROUTES") else None,
        pacs_url=pacs_url,
        delivery_attempts=int(env.get("MEDSEG_DELIVERY_ATTEMPTS", "8")),
        delivery_backoff_s=float(env.get("MEDSEG_DELIVERY_BACKOFF_S", "2")),
        max_streams=int(env.get("MEDSEG_MAX_STREAMS", "16")),
        stream_graphs=stream_graphs,
        stream_max_pixels=int(env.get("MEDSEG_STREAM_MAX_PIXELS", str(3840 * 2160))),
        stream_idle_s=float(env.get("MEDSEG_STREAM_IDLE_S", "60")),
        ov_precision=ov_precision,
        ov_threads=int(env.get("MEDSEG_OV_THREADS", "0")),
        ov_cache_dir=Path(env.get("MEDSEG_OV_CACHE_DIR") or data_dir / "openvino-cache"),
    )
