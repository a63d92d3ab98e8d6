"""Resident memory of a service's process tree (API, workers, decoders...), for tests and load runs:
in all, at its peak, or per role sampled over a run."""

from __future__ import annotations

import csv
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants."""
    root = psutil.Process(pid)
    total = 0
    for process in (root, *root.children(recursive=True)):
        try:
            total += process.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


class PeakRss:
    """Samples a process tree's RSS in a thread while the block runs: ``baseline`` (at entry to
    the constructor), ``peak`` and ``growth_mb`` after the block."""

    def __init__(self, pid: int, every_s: float = 0.02) -> None:
        self.pid, self.every_s = pid, every_s
        self.baseline = tree_rss(pid)
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss(self.pid))
            time.sleep(self.every_s)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, tree_rss(self.pid))

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.baseline) / 2**20


# ----------------------------------------------------------------------------------------------
# Memory per role: which service process holds it, sampled over a run


ROLES = ("api", "worker", "decoders", "supervisor", "tritonserver", "triton stubs", "other")


def process_role(cmdline: Sequence[str]) -> str:
    """The role of one process of a service tree, from its command line: BentoML's ``api``
    (``--service-name medseg``), inference ``worker`` (``medseg-inference``) and ``supervisor``
    (``bentoml serve``); ``decoders`` (the decoder pool's forkserver, its children and
    multiprocessing's resource tracker); ``tritonserver`` and its python-backend ``triton stubs``."""
    text = " ".join(cmdline)
    if "triton_python_backend_stub" in text:
        return "triton stubs"
    if cmdline and Path(cmdline[0]).name == "tritonserver":
        return "tritonserver"
    if "multiprocessing.forkserver" in text or "multiprocessing.resource_tracker" in text:
        return "decoders"
    if "--service-name" in cmdline:
        name = cmdline[cmdline.index("--service-name") + 1] if cmdline.index("--service-name") + 1 < len(cmdline) else ""
        return "worker" if name.endswith("-inference") else "api"
    if "bentoml" in text and " serve " in f" {text} ":
        return "supervisor"
    return "other"


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def role_pids(roots: Iterable[int]) -> dict[str, list[int]]:
    """The processes of the trees under ``roots`` by role (``process_role``)."""
    found: dict[str, list[int]] = {}
    for root in roots:
        for process in _tree(root):
            try:
                found.setdefault(process_role(process.cmdline()), []).append(process.pid)
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                pass
    return found


def rss_by_role(roots: Iterable[int]) -> dict[str, int]:
    """Resident bytes of the trees under ``roots``, summed per role (a role's processes may come
    and go: decoders are recycled, a killed worker is replaced)."""
    totals: dict[str, int] = {}
    for root in roots:
        for process in _tree(root):
            try:
                if process.status() == psutil.STATUS_ZOMBIE:  # exited, not yet reaped: it holds nothing
                    continue
                role = process_role(process.cmdline())
                totals[role] = totals.get(role, 0) + process.memory_info().rss
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                pass
    return totals


@dataclass
class RoleRssSampler:
    """Resident memory per role (``rss_by_role``) of the process trees that ``roots()`` names at
    each sample (a restarted tritonserver has a new pid), every ``every_s`` in a thread until
    ``stop``. ``samples``: (seconds since start, {role: bytes})."""

    roots: Callable[[], Iterable[int]]
    every_s: float = 1.0
    samples: list[tuple[float, dict[str, int]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        try:
            by_role = rss_by_role(self.roots())
        except Exception:  # noqa: BLE001 - the service went away between two samples
            return
        if by_role:
            self.samples.append((time.monotonic() - self.started, by_role))

    def _run(self) -> None:
        while not self._stop.wait(0 if not self.samples else self.every_s):
            self._sample()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def roles(self) -> list[str]:
        seen = {role for _, by_role in self.samples for role in by_role}
        return [role for role in ROLES if role in seen]

    def series_mb(self) -> tuple[list[float], dict[str, list[float]]]:
        """(times s, {role: MB per sample, 0 where absent; "total": their sum})."""
        times = [t for t, _ in self.samples]
        series = {role: [by_role.get(role, 0) / 2**20 for _, by_role in self.samples] for role in self.roles()}
        series["total"] = [sum(by_role.values()) / 2**20 for _, by_role in self.samples]
        return times, series

    def figures(self) -> dict[str, object] | None:
        """Total MB at start, peak and end, and the same per role."""
        if not self.samples:
            return None
        _, series = self.series_mb()
        summary = {key: {"start": round(mb[0], 1), "peak": round(max(mb), 1), "end": round(mb[-1], 1)}
                   for key, mb in series.items()}
        total = summary.pop("total")
        return {**total, "samples": len(self.samples), "every_s": self.every_s, "by_role": summary}

    def write_csv(self, path: Path) -> None:
        """``t_s``, one MB column per role, ``total``."""
        times, series = self.series_mb()
        with Path(path).open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["t_s", *(f"{key}_mb" for key in series)])
            for i, t in enumerate(times):
                writer.writerow([f"{t:.1f}", *(f"{series[key][i]:.1f}" for key in series)])
