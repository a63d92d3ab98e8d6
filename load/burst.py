"""Mixed bursts of real DICOM files, valid and corrupt, from many clients at once.

The traffic a hospital sends: pydicom's test files (bundled ones and the ``pydicom-data``
package: 1955x1841 radiographs, a 120-frame colour ultrasound, every transfer syntax), a share
of them with random bytes changed, to every model and output kind. Each burst reports the
statuses, the latency percentiles, the longest stretch without a completed request, and the
resident memory of the service's processes once the burst is over.

    python -m load.burst --url http://127.0.0.1:3000 --requests 400 --concurrency 16 --bursts 5
    python -m load.burst --start --bursts 5          # starts its own `bentoml serve` on loopback
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import psutil
import pydicom

MODELS = ("swtr_unet", "mast", "surgical_sam", "hnf_net")
OUTPUTS = ("png", "json", "overlay")
CORRUPT_BYTES = 20  # random bytes changed in a corrupted file
_NOT_DICOM = {".txt", ".json", ".dump", ".icc", ".gz", ".py", ".pyc"}


@dataclass(frozen=True)
class Upload:
    name: str  # the corpus file's name, with "~seed" when corrupted
    data: bytes
    model: str
    output: str


@dataclass
class Outcome:
    status: int  # 0: no answer (connection error or client timeout)
    code: str  # the contract's error code, "ok", or what the body was when it broke the contract
    seconds: float
    finished_s: float  # since the burst started
    name: str


@dataclass
class BurstReport:
    requests: int
    wall_s: float
    statuses: dict[str, int]
    codes: dict[str, int]
    p50_s: float
    p95_s: float
    max_s: float
    longest_stall_s: float  # longest time without a completion while requests were waiting
    off_contract: list[str] = field(default_factory=list)  # 5xx / non-JSON errors: "name: status body"
    rss_mb: dict[str, float] = field(default_factory=dict)  # after the burst, by process role


def corpus_dirs() -> list[Path]:
    """pydicom's bundled test files, and the pydicom-data package's when it is installed."""
    dirs = [Path(pydicom.__file__).parent / "data" / "test_files"]
    try:
        import data_store  # the pydicom-data package

        dirs.append(Path(data_store.__file__).parent / "data")
    except ImportError:
        pass
    return dirs


def corpus_files(dirs: Iterable[Path] | None = None) -> list[Path]:
    """Every file of the corpus that can be DICOM (no READMEs, JSON or dumps), sorted."""
    paths = [p for d in (dirs or corpus_dirs()) for p in d.rglob("*") if p.is_file()]
    return sorted((p for p in paths if p.suffix.lower() not in _NOT_DICOM), key=lambda p: (p.name, str(p)))


def corrupt(data: bytes, seed: int, count: int = CORRUPT_BYTES) -> bytes:
    """``data`` with ``count`` bytes at random offsets set to random values (``random.Random(seed)``)."""
    rng = random.Random(seed)
    changed = bytearray(data)
    for _ in range(count):
        changed[rng.randrange(len(changed))] = rng.randrange(256)
    return bytes(changed)


def burst_uploads(files: list[Path], count: int, seed: int, corrupt_share: float = 1 / 3) -> list[Upload]:
    """``count`` uploads drawn from ``files`` (seeded), ``corrupt_share`` of them corrupted, over
    every model and output kind."""
    rng = random.Random(seed)
    contents = {path: path.read_bytes() for path in files}
    uploads = []
    for index in range(count):
        path = rng.choice(files)
        data, name = contents[path], path.name
        if rng.random() < corrupt_share:
            corrupt_seed = rng.randrange(2**31)
            data, name = corrupt(data, corrupt_seed), f"{name}~{corrupt_seed}"
        uploads.append(Upload(name, data, MODELS[index % len(MODELS)], rng.choice(OUTPUTS)))
    return uploads


def classify(response: httpx.Response) -> tuple[str, bool]:
    """(code, follows the contract): "ok" for 2xx, else the JSON ``error`` code; 5xx other than
    the contract's 503/429-style answers are reported too."""
    if response.is_success:
        return "ok", True
    try:
        body = response.json()
    except ValueError:
        return f"non-json {response.text[:60]!r}", False
    if not isinstance(body, dict) or not isinstance(body.get("error"), str) or "message" not in body:
        return f"off-contract {str(body)[:60]}", False
    return body["error"], True


async def post_all(url: str, uploads: list[Upload], concurrency: int, timeout_s: float) -> tuple[list[Outcome], float]:
    """POST every upload to /v1/segment with at most ``concurrency`` in flight; (outcomes, wall s)."""
    queue: asyncio.Queue[Upload] = asyncio.Queue()
    for upload in uploads:
        queue.put_nowait(upload)
    outcomes: list[Outcome] = []
    start = time.monotonic()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=timeout_s, limits=limits) as client:

        async def one_client() -> None:
            while not queue.empty():
                upload = queue.get_nowait()
                began = time.monotonic()
                try:
                    response = await client.post(
                        "/v1/segment",
                        files={"file": (upload.name, upload.data, "application/octet-stream")},
                        data={"model": upload.model, "output": upload.output},
                    )
                    code, _ = classify(response)
                    status = response.status_code
                except httpx.HTTPError as error:
                    status, code = 0, type(error).__name__
                now = time.monotonic()
                outcomes.append(Outcome(status, code, now - began, now - start, upload.name))

        await asyncio.gather(*(one_client() for _ in range(concurrency)))
    return outcomes, time.monotonic() - start


def service_rss_mb(root_pid: int) -> dict[str, float]:
    """Resident memory (MB) of a ``bentoml serve`` process tree, by role: the supervisor, the API
    service ("medseg") and the inference worker ("medseg-inference"), plus their total."""
    roles: dict[str, float] = {}
    try:
        root = psutil.Process(root_pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return roles
    for process in processes:
        try:
            command = " ".join(process.cmdline())
            rss = process.memory_info().rss / 1e6
        except psutil.NoSuchProcess:
            continue
        role = "worker" if "InferenceWorker" in command or "medseg-inference" in command else (
            "api" if "Segmenter" in command and process.pid != root_pid else f"other:{process.name()}"
        )
        if process.pid == root_pid:
            role = "supervisor"
        roles[role] = roles.get(role, 0.0) + rss
    roles["total"] = sum(roles.values())
    return {k: round(v, 1) for k, v in roles.items()}


def summarise(outcomes: list[Outcome], wall_s: float) -> BurstReport:
    latencies = sorted(o.seconds for o in outcomes)
    return BurstReport(
        requests=len(outcomes),
        wall_s=round(wall_s, 2),
        statuses=dict(sorted(Counter(str(o.status) for o in outcomes).items())),
        codes=dict(sorted(Counter(o.code for o in outcomes).items())),
        p50_s=_quantile(latencies, 0.5),
        p95_s=_quantile(latencies, 0.95),
        max_s=round(latencies[-1], 3) if latencies else 0.0,
        longest_stall_s=round(longest_stall(outcomes), 3),
        off_contract=[
            f"{o.name}: {o.status} {o.code}"
            for o in outcomes
            if o.status == 0 or o.status >= 500 or o.code.startswith(("non-json", "off-contract"))
        ],
    )


def _quantile(ordered: list[float], q: float) -> float:
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3) if ordered else 0.0


def longest_stall(outcomes: list[Outcome]) -> float:
    """The longest time (s) between two consecutive completions while at least two requests were
    in flight all along: the service had work and answered nothing. (The tail of a burst, one slow
    request finishing alone, is not a stall.)"""
    finished = sorted([0.0] + [o.finished_s for o in outcomes])
    spans = [(o.finished_s - o.seconds, o.finished_s) for o in outcomes]
    stalls = [
        b - a for a, b in zip(finished, finished[1:])
        if sum(1 for start, end in spans if start <= a and end >= b) >= 2
    ]
    return max(stalls, default=0.0)


def run_bursts(
    url: str, bursts: int, count: int, concurrency: int, seed: int, timeout_s: float, service_pid: int | None,
    settle_s: float = 3.0, trace: Path | None = None,
) -> list[BurstReport]:
    """``bursts`` identical bursts (same uploads each time); memory sampled ``settle_s`` after each."""
    uploads = burst_uploads(corpus_files(), count, seed)
    if service_pid is not None:
        print(f"before the first burst: rss_mb {json.dumps(service_rss_mb(service_pid))}", file=sys.stderr, flush=True)
    reports = []
    for index in range(bursts):
        outcomes, wall_s = asyncio.run(post_all(url, uploads, concurrency, timeout_s))
        report = summarise(outcomes, wall_s)
        if trace is not None:
            with trace.open("a") as lines:
                lines.writelines(json.dumps({"burst": index + 1, **asdict(o)}) + "\n" for o in outcomes)
        if service_pid is not None:
            time.sleep(settle_s)
            report.rss_mb = service_rss_mb(service_pid)
        print(f"burst {index + 1}: {json.dumps(asdict(report))}", file=sys.stderr, flush=True)
        reports.append(report)
    return reports


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m load.burst", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:3000")
    parser.add_argument("--start", action="store_true", help="start a bentoml serve of model_repository on a free port")
    parser.add_argument("--pid", type=int, help="the bentoml serve process, for memory figures")
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--bursts", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=180.0, help="client timeout per request, seconds")
    parser.add_argument("--out", type=Path, help="write the reports as JSON here")
    parser.add_argument("--trace", type=Path, help="write every request's outcome as JSON lines here")
    args = parser.parse_args(argv)
    if args.start:
        import tempfile

        from load.local_service import ROOT, local_service

        with tempfile.TemporaryDirectory() as workdir, local_service(ROOT / "model_repository", Path(workdir)) as service:
            print(f"service on {service.url} (log {service.log_path})", file=sys.stderr)
            reports = run_bursts(service.url, args.bursts, args.requests, args.concurrency, args.seed, args.timeout, service.process.pid, trace=args.trace)
    else:
        reports = run_bursts(args.url, args.bursts, args.requests, args.concurrency, args.seed, args.timeout, args.pid, trace=args.trace)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps([asdict(r) for r in reports], indent=2))
    return 1 if any(r.off_contract for r in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
