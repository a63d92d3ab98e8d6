"""Faults under load end to end: ``python -m load.faults`` starts its own service, runs locust and
SIGKILLs the inference worker (embedded) or tritonserver (triton back end) midway; the service
answers only 200 or 503 with Retry-After, hangs nothing and recovers by itself."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from load.local_service import ROOT

pytestmark = pytest.mark.integration

ALLOWED = {"200", "503"}


def fault_run(out: Path, *argv: str) -> tuple[subprocess.CompletedProcess, dict]:
    """The CLI for 40 s at 4 users, the kill 12 s after the first request; its summary.json."""
    command = [sys.executable, "-m", "load.faults", "--time", "40s", "--at", "12", "--users", "4", "--out", str(out), *argv]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=420)
    summaries = list(out.glob("*/summary.json"))
    assert len(summaries) == 1, result.stdout[-3000:] + result.stderr[-3000:]
    return result, json.loads(summaries[0].read_text())


def check_recovered(result: subprocess.CompletedProcess, fault: dict, run_folder: Path) -> None:
    assert result.returncode == 0, result.stdout[-3000:]
    assert fault["passed"] and fault["violations"] == []
    assert fault["pids"] and 11 <= fault["at_s"] <= 14
    assert 0 < fault["recovered_after_s"] <= 30 and fault["first_success_after_s"] <= fault["recovered_after_s"]
    assert set(fault["outage"]) | set(fault["in_flight_at_kill"]) <= ALLOWED
    assert fault["requests"]["before_kill"] > 0 and fault["requests"]["after_recovery"] > 0
    for name in ("requests.csv", "faults.png", "report.html", "stats.json", "locust.log"):
        assert (run_folder / name).is_file(), name
    assert "recovered after" in result.stdout


def test_killing_the_worker_on_embedded_recovers_by_itself(tmp_path: Path) -> None:
    result, summary = fault_run(tmp_path, "--kill", "worker")
    fault = summary["fault"]
    check_recovered(result, fault, next(tmp_path.glob("*/")))
    assert summary["backend"] == "embedded" and fault["killed"] == "worker"
    assert fault["backend"]["back_after_s"] is not None  # BentoML's supervisor started another worker
    assert summary["scenarios"]["segment"]["requests"] > 0


def test_killing_tritonserver_gives_503s_then_recovers_by_itself(tmp_path: Path) -> None:
    result, summary = fault_run(tmp_path, "--kill", "tritonserver")
    fault = summary["fault"]
    check_recovered(result, fault, next(tmp_path.glob("*/")))
    assert summary["backend"] == "triton" and len(fault["pids"]) > 1  # the server and its python stubs
    restarted = fault["backend"]["triton_restarts"]
    # ready again (as SupervisedTriton saw it, polling every 0.5 s) about when requests succeeded again
    assert restarted and restarted[0][1] is not None and restarted[0][1] <= fault["recovered_after_s"] + 2
    assert fault["outage"].get("503", 0) > 0  # nothing answers inference while it restarts
