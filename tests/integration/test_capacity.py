"""python -m load capacity end to end: a real service started for the search, real locust steps,
the report and plot; an SLO nothing can hold ends the search at its first step with exit 1."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from load.local_service import ROOT, free_port

pytestmark = pytest.mark.integration


def _capacity(out: Path, slo: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "load", "capacity", "--scenario", "segment", "--host",
               f"http://127.0.0.1:{free_port()}", "--out", str(out), "--slo", str(slo), "--warmup", "2", *extra]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)


def _only_run(out: Path) -> Path:
    (folder,) = out.iterdir()
    return folder


def test_the_search_steps_users_up_and_reports_the_largest_load_held(tmp_path: Path) -> None:
    slo = tmp_path / "slo.json"
    slo.write_text(json.dumps({"segment": {"p95_ms": 60000, "error_rate": 0.01}}))
    result = _capacity(tmp_path / "out", slo, "--step-time", "6s", "--max-users", "2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    folder = _only_run(tmp_path / "out")
    report = json.loads((folder / "capacity.json").read_text())
    steps = report["steps"]["segment"]
    assert [(s["users"], s["held"]) for s in steps] == [(1, True), (2, True)]
    assert all(s["requests"] > 0 and s["failures"] == 0 and s["throughput"] > 0 for s in steps)
    capacity = report["capacity"]["segment"]
    assert capacity["users"] == 2 and capacity["requests/s"] == pytest.approx(steps[1]["throughput"], rel=1e-3)
    assert report["backend"] == "embedded" and report["service_started"] is True
    for name in ("segment-1u", "segment-2u"):
        assert (folder / name / "stats.json").exists() and (folder / name / "report.html").exists()
    assert (folder / "capacity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "segment: 2 users held" in result.stdout


def test_an_slo_no_load_holds_ends_at_the_first_step_with_exit_1(tmp_path: Path) -> None:
    slo = tmp_path / "slo.json"
    slo.write_text(json.dumps({"segment": {"p95_ms": 0.5}}))
    result = _capacity(tmp_path / "out", slo, "--step-time", "4s", "--start", "2")
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((_only_run(tmp_path / "out") / "capacity.json").read_text())
    assert [(s["users"], s["held"]) for s in report["steps"]["segment"]] == [(2, False), (1, False)]
    assert report["capacity"]["segment"]["users"] is None
    assert report["capacity"]["segment"]["first_broken_users"] == 1
    assert "no load held" in result.stdout


def test_a_scenario_without_an_slo_is_a_usage_error(tmp_path: Path) -> None:
    slo = tmp_path / "slo.json"
    slo.write_text(json.dumps({"video": {"p95_ms": 100}}))
    result = _capacity(tmp_path / "out", slo)
    assert result.returncode == 2 and "no SLO for segment" in result.stderr
