"""``python -m load faults``: kill the inference worker or tritonserver in the middle of a locust run.

    python -m load faults --kill worker                       # embedded back end, kill at 20 s of 60 s
    python -m load faults --kill worker --backend triton
    python -m load faults --kill tritonserver --time 90s --at 30 --users 8

(also ``python -m load.faults ...``). The run starts its own service on a free loopback port
(``bentoml serve``; with ``--backend triton`` in front of a tritonserver that ``SupervisedTriton``
restarts when it dies) with the request deadline ``--deadline-s`` (MEDSEG_REQUEST_TIMEOUT_S,
default 30 s), runs locust (``--scenarios``, ``--users``, ``--time``) with the request log
(load/scenarios/request_log.py: one row per request), and ``--at`` seconds after the first
request starts SIGKILLs every ``worker`` process (BentoML's supervisor starts a new one) or
tritonserver's whole process group (started again after 1 s).

The verdict, from the request log and /readyz's answers (``analyse_fault``), with K the moment
of the kill:

- **allowed answers**: 200, and during the outage 503 with Retry-After (a video frame refused
  with ``backend_unavailable``). Anything else anywhere in the run is a violation: 500, 502,
  504, 429, no answer (connection error), a 503 without Retry-After, a 200 whose body is wrong.
- **hang**: an HTTP request longer than ``--hang-s`` (default: the deadline plus 5 s; events
  such as a video stream's end or PACS time-to-SEG span many requests and are not timed).
  Locust waits for requests in flight at the end of the run (``--stop-timeout`` past the
  client's own timeout), so a hung request is logged, not lost.
- **recovery**: ``recovered_after_s`` = from K to the end of the first successful request sent
  after K that ended after the last failure (the first success after which everything
  succeeds). It must exist and be at most ``--recovery-limit-s`` (30). ``first_success_after_s``: to
  the end of the first successful request sent after K; a request sent after that moment that
  fails is a violation (the service came back, then failed again).
- a failure that ended before K is a violation (the fault did not cause it).
- ``/readyz``, polled from K on, answers 200 or 503 (not ready); another status, or no answer
  within 10 s, is a violation.
- ``outage``: the answers that ended between K and the recovery, counted by outcome;
  ``in_flight_at_kill``: the requests started before K and ended after it.

Also recorded: when the back end was back (``backend.back_after_s``: a new worker process seen,
its models perhaps still loading; or tritonserver restarted and ready, ``SupervisedTriton``) and
``/readyz``'s status changes after K (``backend.readyz``: [s after K, status]).

Run folder ``<out>/<YYYYmmdd-HHMMSS>/``: locust's files as ``make load`` writes them,
``requests.csv``, ``faults.png`` (answers per second by outcome with the kill and recovery
marked, and every request's latency), ``service/`` (logs) and ``summary.json`` (``fault`` and
the scenarios' figures). Exit status: 0 no violation; 1 a violation (printed); 2 bad arguments;
3 the service did not start, locust did not run to the end, or nothing was killed.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from load.load_run import (
    BACKENDS,
    DEFAULT_LOCUSTFILE,
    DEFAULT_REPOSITORY,
    EXIT_LOCUST,
    EXIT_OK,
    EXIT_SLO,
    EXIT_USAGE,
    Target,
    UsageError,
    is_dropped,
    locust_command,
    parse_timespan,
    print_summary,
    run_folder,
    run_locust,
    scenario_classes,
    service_at,
    summarize_folder,
)
from load.local_service import ROOT, free_port
from load.process_memory import role_pids
from load.scenarios.request_log import ENV as REQUEST_LOG_ENV
from load.triton_server import stop_triton

KILLABLE = ("worker", "tritonserver")
DEFAULT_OUT = ROOT / "build" / "faults"
REQUEST_LOG_PLUGIN = ROOT / "load" / "scenarios" / "request_log.py"
DEFAULT_DEADLINE_S = 30.0
HANG_MARGIN_S = 5.0
DEFAULT_RECOVERY_LIMIT_S = 30.0
READYZ_TIMEOUT_S = 10.0  # BentoML's /readyz waits up to 5 s for the inference worker's
CLIENT_TIMEOUT_S = 130.0  # SegmentUser.network_timeout: the longest a locust request waits for an answer
OK_OUTCOMES = frozenset({"200", "event ok"})
OUTAGE_OUTCOMES = frozenset({"503", "event backend_unavailable"})


# ----------------------------------------------------------------------------------------------
# The request log and its verdict (pure)


@dataclass(frozen=True)
class Request:
    """One row of the request log: start (epoch s), name, response time (ms), HTTP status (0: no
    answer; None: not an HTTP request), Retry-After present, the JSON error code, the failure."""

    start_s: float
    name: str
    response_ms: float
    status: int | None
    retry_after: bool = False
    error: str = ""
    exception: str = ""

    @property
    def end_s(self) -> float:
        return self.start_s + self.response_ms / 1000


def read_requests(path: Path) -> list[Request]:
    """The request log's rows (load/scenarios/request_log.py), without ``<scenario>: dropped``
    events (counts, not requests); a row cut short by a kill is skipped."""
    requests = []
    with Path(path).open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            try:
                request = Request(float(row["start_s"]), row["name"], float(row["response_ms"]),
                                  int(row["status"]) if row["status"] else None, row["retry_after"] == "1",
                                  row["error"] or "", row["exception"] or "")
            except (KeyError, TypeError, ValueError):
                continue
            if not is_dropped(request.name):
                requests.append(request)
    return requests


def outcome(request: Request) -> str:
    """What a request got, as counted in a report: "200", "503", "500"..., "503 without
    Retry-After", "no answer" (status 0: connection refused, reset, client timeout), "200 bad
    answer" (a 200 whose body the scenario refused); events that are not HTTP requests (video
    frames, time-to-SEG): "event ok", "event backend_unavailable" (a stream frame refused with
    that code) or "event failed"."""
    if request.status is None:
        if not request.exception:
            return "event ok"
        return "event backend_unavailable" if request.exception == "backend_unavailable" else "event failed"
    if request.status == 0:
        return "no answer"
    if request.status == 200:
        return "200 bad answer" if request.exception else "200"
    if request.status == 503 and not request.retry_after:
        return "503 without Retry-After"
    return str(request.status)


def is_ok(request: Request) -> bool:
    return outcome(request) in OK_OUTCOMES


@dataclass(frozen=True)
class Recovery:
    """Seconds from the kill to the end of the first success sent after it (``first_success``)
    and to the first success after which everything succeeded (``recovered``); None: none."""

    first_success: float | None
    recovered: float | None


def find_recovery(requests: Sequence[Request], kill_s: float) -> Recovery:
    """``recovered``: the earliest end among successful requests started at or after ``kill_s``
    that ended after every failed request that ended after ``kill_s``."""
    sent_after = [r for r in requests if r.start_s >= kill_s and is_ok(r)]
    last_failure = max((r.end_s for r in requests if r.end_s > kill_s and not is_ok(r)), default=kill_s)
    first = min((r.end_s for r in sent_after), default=None)
    recovered = min((r.end_s for r in sent_after if r.end_s > last_failure), default=None)
    return Recovery(None if first is None else first - kill_s, None if recovered is None else recovered - kill_s)


def _violation(kind: str, message: str, requests: Sequence[Request] = (), kill_s: float = 0.0, **figures: object) -> dict:
    entry: dict[str, object] = {"kind": kind, "message": message, **figures}
    if requests:
        first = min(requests, key=lambda r: r.end_s)
        entry.update(count=len(requests), first_at_s=round(first.end_s - kill_s, 2), example=first.name,
                     detail=first.exception[:120])
    return entry


def fault_violations(requests: Sequence[Request], kill_s: float, recovery: Recovery, hang_s: float,
                     recovery_limit_s: float, end_s: float) -> list[dict]:
    """What breaks the contract of a fault run (times in ``first_at_s``: s after the kill)."""
    violations = []
    bad = [r for r in requests if not is_ok(r) and outcome(r) not in OUTAGE_OUTCOMES]
    for kind in sorted({outcome(r) for r in bad}):
        of_kind = [r for r in bad if outcome(r) == kind]
        violations.append(_violation("status", f"{len(of_kind)} answered {kind} (only 200, or 503 with Retry-After "
                                               "during the outage, are allowed)", of_kind, kill_s, outcome=kind))
    before = [r for r in requests if not is_ok(r) and r.end_s <= kill_s]
    if before:
        violations.append(_violation("failed_before_kill", f"{len(before)} failed before the kill", before, kill_s))
    if recovery.first_success is not None:
        back = kill_s + recovery.first_success
        flapped = [r for r in requests if not is_ok(r) and r.start_s >= back]
        if flapped:
            violations.append(_violation(
                "failed_after_recovery", f"{len(flapped)} sent after the first success following the kill "
                f"(+{recovery.first_success:.1f} s) failed", flapped, kill_s))
    hung = [r for r in requests if r.status is not None and r.response_ms > hang_s * 1000]
    if hung:
        longest = max(r.response_ms for r in hung)
        violations.append(_violation("hang", f"{len(hung)} took longer than {hang_s:g} s (longest {longest / 1000:.1f} s)",
                                     hung, kill_s, limit_ms=hang_s * 1000, longest_ms=round(longest, 1)))
    if recovery.recovered is None:
        violations.append(_violation("not_recovered", f"no recovery: the run went on {end_s - kill_s:.1f} s after the "
                                     "kill without a success after the last failure", limit_s=recovery_limit_s))
    elif recovery.recovered > recovery_limit_s:
        violations.append(_violation("slow_recovery", f"recovered after {recovery.recovered:.1f} s, more than "
                                     f"{recovery_limit_s:g} s", limit_s=recovery_limit_s,
                                     value_s=round(recovery.recovered, 2)))
    return violations


def readyz_violations(readyz: Sequence[tuple[float, int | None]]) -> list[dict]:
    """/readyz after the kill, as (s after the kill, status) changes: only 200 or 503 (not ready)
    are answers; None is none within ``READYZ_TIMEOUT_S``."""
    violations = []
    for at_s, status in readyz:
        if status not in (200, 503):
            said = f"answered {status}" if status is not None else f"did not answer within {READYZ_TIMEOUT_S:g} s"
            violations.append(_violation("readyz", f"/readyz {said} at +{at_s:g} s (only 200 or 503 are allowed)",
                                         status=status, at_s=at_s))
    return violations


def analyse_fault(requests: Sequence[Request], kill_s: float, hang_s: float, recovery_limit_s: float,
                  end_s: float | None = None, readyz: Sequence[tuple[float, int | None]] = ()) -> dict[str, object]:
    """The fault verdict of a run's requests around a kill at ``kill_s`` (epoch s): recovery,
    outage and in-flight outcomes, longest request, violations (see the module's docstring), with
    those of /readyz's status changes after the kill (``readyz_violations``). ``end_s``: when the
    run ended (default: the last request's end)."""
    end_s = end_s if end_s is not None else max((r.end_s for r in requests), default=kill_s)
    recovery = find_recovery(requests, kill_s)
    recovered_at = math.inf if recovery.recovered is None else kill_s + recovery.recovered
    violations = fault_violations(requests, kill_s, recovery, hang_s, recovery_limit_s, end_s) + readyz_violations(readyz)
    return {
        "recovered_after_s": _round(recovery.recovered),
        "first_success_after_s": _round(recovery.first_success),
        "outage": dict(Counter(outcome(r) for r in requests if kill_s < r.end_s < recovered_at)),
        "in_flight_at_kill": dict(Counter(outcome(r) for r in requests if r.start_s < kill_s < r.end_s)),
        "requests": {"before_kill": sum(r.end_s <= kill_s for r in requests),
                     "after_recovery": sum(r.end_s >= recovered_at for r in requests)},
        "longest_request_ms": round(max((r.response_ms for r in requests if r.status is not None), default=0.0), 1),
        "hang_s": hang_s,
        "recovery_limit_s": recovery_limit_s,
        "violations": violations,
        "passed": not violations,
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


# ----------------------------------------------------------------------------------------------
# The kill, and watching the back end come back


def kill_worker(target: Target) -> list[int]:
    """SIGKILL every process of role ``worker`` (BentoML's inference worker) of the service."""
    pids = role_pids(target.roots()).get("worker", [])
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return pids


def kill_tritonserver(target: Target) -> list[int]:
    """SIGKILL tritonserver's whole process group (server and python-backend stubs)."""
    if target.triton is None:
        raise UsageError("no tritonserver to kill: the service runs on the embedded back end")
    server = target.triton.server
    pids = [p.pid for p in (psutil.Process(server.process.pid), *psutil.Process(server.process.pid).children(recursive=True))]
    stop_triton(server, kill=True)
    return pids


def backend_back(target: Target, killed: str, pids: Sequence[int], kill_mono: float) -> float | None:
    """Seconds from the kill until the back end is back, None not yet: a worker pid that was not
    killed exists; tritonserver restarted and ready (``SupervisedTriton.restarts``)."""
    if killed == "worker":
        fresh = set(role_pids(target.roots()).get("worker", [])) - set(pids)
        return time.monotonic() - kill_mono if fresh else None
    assert target.triton is not None
    offset = kill_mono - target.triton.started
    ready = [r[1] for r in list(target.triton.restarts) if r[1] is not None and r[1] > offset]
    return min(ready) - offset if ready else None


@dataclass
class Kill:
    """What the killer did: which processes, when (epoch s; seconds after the first request), and
    what it saw after: the back end back (s after the kill), /readyz's (s after the kill, status)
    changes."""

    killed: str
    pids: list[int] = field(default_factory=list)
    at_epoch_s: float | None = None
    at_s: float | None = None
    backend_back_after_s: float | None = None
    readyz: list[tuple[float, int | None]] = field(default_factory=list)
    triton_restarts: list[list[float | None]] | None = None
    error: str | None = None


def first_request_start(log_path: Path, stop: threading.Event, poll_s: float = 0.2) -> float | None:
    """The start (epoch s) of the first request logged, waiting for it; None once ``stop`` is set."""
    while not stop.is_set():
        if log_path.exists():
            requests = read_requests(log_path)
            if requests:
                return min(r.start_s for r in requests)
        stop.wait(poll_s)
    return None


def readyz_status(url: str) -> int | None:
    """The status of ``GET /readyz``; None when no answer came within ``READYZ_TIMEOUT_S``."""
    try:
        return httpx.get(f"{url}/readyz", timeout=READYZ_TIMEOUT_S, trust_env=False).status_code
    except httpx.HTTPError:
        return None


def watch_readyz(url: str, kill_mono: float, changes: list[tuple[float, int | None]], stop: threading.Event,
                 poll_s: float = 0.25) -> None:
    """Append /readyz's (s after the kill when it answered, status) whenever its status changes,
    until ``stop`` (while the worker restarts an answer can take seconds: BentoML asks it)."""
    last: object = object()
    while not stop.is_set():
        status = readyz_status(url)
        if status != last:
            changes.append((round(time.monotonic() - kill_mono, 2), status))
            last = status
        stop.wait(poll_s)


def kill_and_watch(target: Target, kill: Kill, at_s: float, log_path: Path, stop: threading.Event,
                   poll_s: float = 0.25) -> None:
    """Wait for the first request, kill ``at_s`` s after its start, then watch the back end and
    /readyz until ``stop``."""
    first = first_request_start(log_path, stop)
    if first is None or stop.wait(max(0.0, first + at_s - time.time())):
        return
    kill_mono = time.monotonic()
    kill.at_epoch_s = time.time()
    try:
        kill.pids = kill_worker(target) if kill.killed == "worker" else kill_tritonserver(target)
    except (UsageError, psutil.Error, RuntimeError) as error:
        kill.error = f"{type(error).__name__}: {error}"
        return
    kill.at_s = round(kill.at_epoch_s - first, 2)
    if not kill.pids:
        kill.error = f"no {kill.killed} process found"
        return
    readyz = threading.Thread(target=watch_readyz, args=(target.url, kill_mono, kill.readyz, stop), daemon=True)
    readyz.start()
    while not stop.wait(poll_s):
        if kill.backend_back_after_s is None:
            back = backend_back(target, kill.killed, kill.pids, kill_mono)
            kill.backend_back_after_s = None if back is None else round(back, 2)
    readyz.join()
    if target.triton is not None:  # (exit seen, ready again) of every restart, s after the kill
        offset = kill_mono - target.triton.started
        kill.triton_restarts = [[None if t is None else round(t - offset, 2) for t in restart]
                                for restart in list(target.triton.restarts)]


# ----------------------------------------------------------------------------------------------
# The figure


def plot_faults(requests: Sequence[Request], kill_s: float | None, recovered_after_s: float | None,
                backend_back_after_s: float | None, path: Path, title: str = "") -> None:
    """Answers per second by outcome (200, 503, other; by the second they ended in) and every
    request's response time, against seconds since the first request; the kill, the back end
    back and the recovery marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    origin = min((r.start_s for r in requests), default=kill_s or 0.0)
    groups = {"200": ("tab:green", OK_OUTCOMES), "503": ("tab:orange", OUTAGE_OUTCOMES), "other": ("tab:red", None)}

    def group(request: Request) -> str:
        kind = outcome(request)
        return next((g for g, (_, members) in groups.items() if members and kind in members), "other")

    seconds = int(max((r.end_s - origin for r in requests), default=0.0)) + 1
    counts = {g: [0] * seconds for g in groups}
    for request in requests:
        counts[group(request)][int(request.end_s - origin)] += 1
    fig, (rate, latency) = plt.subplots(2, 1, figsize=(12, 7), sharex=True)
    bottom = [0] * seconds
    for name, (colour, _) in groups.items():
        rate.bar(range(seconds), counts[name], width=1.0, align="edge", bottom=bottom, color=colour, label=name)
        bottom = [b + c for b, c in zip(bottom, counts[name])]
    rate.set_ylabel("answers per second")
    for name, (colour, _) in groups.items():
        chosen = [r for r in requests if group(r) == name]
        latency.scatter([r.end_s - origin for r in chosen], [r.response_ms for r in chosen], s=8, color=colour, label=name)
    latency.set_ylabel("response time (ms), at its end")
    latency.set_xlabel("seconds since the first request")
    if requests and max(r.response_ms for r in requests) > 0:
        latency.set_yscale("log")
        latency.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))  # not mathtext's 10^n
    marks = []
    if kill_s is not None:
        marks.append((kill_s - origin, "kill", "black", "--"))
        for offset, label, style in ((backend_back_after_s, "back end back", ":"), (recovered_after_s, "recovered", "-.")):
            if offset is not None:
                marks.append((kill_s - origin + offset, label, "tab:blue", style))
    for ax in (rate, latency):
        for x, label, colour, style in marks:
            ax.axvline(x, color=colour, linestyle=style, label=label)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------
# The run


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kill", required=True, choices=KILLABLE,
                        help="worker: every BentoML inference worker process; tritonserver: its process group")
    parser.add_argument("--backend", choices=BACKENDS, default=None,
                        help="default: triton for --kill tritonserver, else embedded")
    parser.add_argument("--at", type=float, default=20.0, help="seconds after the first request to kill (20)")
    parser.add_argument("--time", default="60s", help="locust run time (60s, 2m)")
    parser.add_argument("--users", type=int, default=4)
    parser.add_argument("--scenarios", default="segment", help="comma list of load/locustfile.py's SCENARIOS")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--deadline-s", type=float, default=DEFAULT_DEADLINE_S,
                        help="the service's request deadline, MEDSEG_REQUEST_TIMEOUT_S (30)")
    parser.add_argument("--hang-s", type=float, default=None,
                        help=f"a request longer than this is a hang (default: the deadline + {HANG_MARGIN_S:g} s)")
    parser.add_argument("--recovery-limit-s", type=float, default=DEFAULT_RECOVERY_LIMIT_S,
                        help=f"the longest allowed recovery ({DEFAULT_RECOVERY_LIMIT_S:g})")
    parser.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)


def check_arguments(args: argparse.Namespace) -> argparse.Namespace:
    """Fill in the defaults that depend on others; UsageError for a bad combination."""
    if args.kill == "tritonserver" and args.backend not in (None, "triton"):
        raise UsageError("--kill tritonserver needs --backend triton")
    args.backend = args.backend or ("triton" if args.kill == "tritonserver" else "embedded")
    args.run_s = parse_timespan(args.time)
    if not 0 < args.at < args.run_s:
        raise UsageError(f"--at {args.at:g} must fall inside the run ({args.run_s} s)")
    if args.users < 1 or args.deadline_s <= 0 or args.recovery_limit_s <= 0:
        raise UsageError("--users, --deadline-s and --recovery-limit-s must be positive")
    args.hang_s = args.hang_s if args.hang_s is not None else args.deadline_s + HANG_MARGIN_S
    args.scenarios = [s.strip() for s in str(args.scenarios).split(",") if s.strip()]
    if not args.scenarios:
        raise UsageError("no scenario named")
    args.out, args.repository = Path(args.out).resolve(), Path(args.repository).resolve()
    return args


@contextmanager
def environment(**variables: str) -> Iterator[None]:
    """``os.environ`` with ``variables`` set for the block (locust inherits this process's)."""
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def run_under_fault(args: argparse.Namespace, classes: Sequence[str], folder: Path) -> tuple[int, Kill, float, str]:
    """Start the service, run locust with the request log while killing, stop the service:
    (locust's exit status, what was killed, the run's end (epoch s), the service's URL)."""
    log_path = folder / "requests.csv"
    locustfile = f"{DEFAULT_LOCUSTFILE},{REQUEST_LOG_PLUGIN}"
    stop_timeout = max(args.hang_s, CLIENT_TIMEOUT_S) + 10  # every request in flight at the end gets logged
    host = f"http://127.0.0.1:{free_port()}"
    env = {"MEDSEG_REQUEST_TIMEOUT_S": f"{args.deadline_s:g}"}
    kill, stop = Kill(args.kill), threading.Event()
    with service_at(host, folder / "service", args.repository, backend=args.backend, env=env) as target:
        print(f"faults: {', '.join(args.scenarios)}: {args.users} users for {args.time} against {target.url} "
              f"({args.backend}); SIGKILL of the {args.kill} {args.at:g} s after the first request", flush=True)
        killer = threading.Thread(target=kill_and_watch, args=(target, kill, args.at, log_path, stop),
                                  name="faults-killer", daemon=True)
        killer.start()
        command = [*locust_command(Path(locustfile), classes, target.url, args.users, float(args.users), args.time, folder),
                   "--stop-timeout", f"{stop_timeout:g}"]
        try:
            with environment(**{REQUEST_LOG_ENV: str(log_path)}):
                code = run_locust(command, folder / "locust.log", timeout_s=args.run_s + stop_timeout + 300)
        finally:
            end_s = time.time()
            stop.set()
            killer.join()
    return code, kill, end_s, target.url


def fault_summary(args: argparse.Namespace, kill: Kill, requests: Sequence[Request], end_s: float) -> dict[str, object]:
    """The ``fault`` entry of summary.json."""
    assert kill.at_epoch_s is not None
    return {
        "killed": kill.killed,
        "pids": kill.pids,
        "at_s": kill.at_s,
        "backend": {"back_after_s": kill.backend_back_after_s, "readyz": [list(change) for change in kill.readyz],
                    "triton_restarts": kill.triton_restarts},
        "deadline_s": args.deadline_s,
        **analyse_fault(requests, kill.at_epoch_s, args.hang_s, args.recovery_limit_s, end_s, kill.readyz),
    }


def print_fault(fault: Mapping) -> None:
    print(f"faults: killed the {fault['killed']} (pids {', '.join(map(str, fault['pids']))}) at {fault['at_s']} s")
    back = fault["backend"]["back_after_s"]
    print(f"  back end back after {back if back is not None else '-'} s; /readyz after the kill (s, status): "
          f"{', '.join(f'{t:g} {s}' for t, s in fault['backend']['readyz']) or '-'}")
    print(f"  recovered after {fault['recovered_after_s'] if fault['recovered_after_s'] is not None else '-'} s "
          f"(first success after {fault['first_success_after_s'] if fault['first_success_after_s'] is not None else '-'} s); "
          f"longest request {fault['longest_request_ms'] / 1000:.1f} s")
    print(f"  outage: {json.dumps(fault['outage'])}; in flight at the kill: {json.dumps(fault['in_flight_at_kill'])}")
    if fault["passed"]:
        print("faults: passed (only 200 and 503 with Retry-After, no hang, recovered by itself)")
        return
    print("faults: FAILED:")
    for violation in fault["violations"]:
        print(f"  {violation['kind']}: {violation['message']}"
              + (f"; first +{violation['first_at_s']} s, {violation['example']}: {violation['detail']}"
                 if "example" in violation else ""))


def run(args: argparse.Namespace) -> int:
    """``python -m load faults``: see the module's docstring. Returns the exit status."""
    try:
        args = check_arguments(args)
        classes = scenario_classes(DEFAULT_LOCUSTFILE, args.scenarios)
    except UsageError as error:
        print(f"faults: {error}", file=sys.stderr)
        return EXIT_USAGE
    folder = run_folder(args.out)
    try:
        code, kill, end_s, url = run_under_fault(args, classes, folder)
    except (RuntimeError, UsageError) as error:  # the service or tritonserver did not start
        print(f"faults: {error}", file=sys.stderr)
        return EXIT_LOCUST
    except KeyboardInterrupt:
        print(f"faults: interrupted; what was written is in {folder}", file=sys.stderr)
        return 130
    log_path = folder / "requests.csv"
    requests = read_requests(log_path) if log_path.exists() else []
    scenarios = summarize_folder(folder, args.scenarios) if code == 0 else None
    if scenarios is None or kill.at_epoch_s is None or kill.error:
        problem = kill.error or ("nothing was killed" if scenarios is not None else f"locust exited with {code}")
        print(f"faults: {problem}; see {folder / 'locust.log'}", file=sys.stderr)
        return EXIT_LOCUST
    fault = fault_summary(args, kill, requests, end_s)
    summary = {
        "host": url, "backend": args.backend, "duration_s": args.run_s, "users": args.users,
        "user_classes": dict(zip(args.scenarios, classes)), "scenarios": scenarios, "fault": fault,
    }
    (folder / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot_faults(requests, kill.at_epoch_s, fault["recovered_after_s"], kill.backend_back_after_s, folder / "faults.png",
                title=f"SIGKILL of the {args.kill} ({args.backend}), {args.users} users, {args.time}")
    print_summary(summary, folder)
    print_fault(fault)
    return EXIT_OK if fault["passed"] else EXIT_SLO


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m load.faults", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
