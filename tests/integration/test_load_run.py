"""make load end to end: python -m load.load_run against a port where nothing listens starts the
service itself, runs locust headless, writes the run folder, judges the SLOs and stops the service."""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from load.local_service import ROOT, free_port

pytestmark = pytest.mark.integration


def _load_run(out: Path, port: int, run_time: str, slo: Path | None = None) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "LOAD_HOST": f"http://127.0.0.1:{port}",
        "LOAD_TIME": run_time,
        "LOAD_USERS": "2",
        "LOAD_SCENARIOS": "segment",
        "LOAD_OUT": str(out),
    }
    env.pop("LOAD_RATE", None)
    if slo is None:
        env.pop("LOAD_SLO", None)
    else:
        env["LOAD_SLO"] = str(slo)
    return subprocess.run([sys.executable, "-m", "load.load_run"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=240)


def _assert_nothing_left(port: int, out: Path) -> None:
    with socket.socket() as sock:  # nothing listens on the port any more
        sock.bind(("127.0.0.1", port))
    left = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        try:
            if str(out) in process.environ().get("MEDSEG_DATA_DIR", ""):
                left.append((process.pid, process.info["cmdline"]))
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    assert left == []


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_make_load_starts_the_service_runs_locust_and_judges_the_slos(tmp_path: Path) -> None:
    out, port = tmp_path / "runs", free_port()
    result = _load_run(out, port, "15s")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "starting the service" in result.stdout and "SLOs held" in result.stdout
    _assert_nothing_left(port, out)

    (folder,) = out.iterdir()
    for name in ("report.html", "stats_stats.csv", "stats_stats_history.csv", "stats_failures.csv", "stats.json",
                 "locust.log", "latency.png", "summary.json", "service_rss.csv"):
        assert (folder / name).is_file() and (folder / name).stat().st_size > 0, name
    width, height = _png_size(folder / "latency.png")
    assert width > 600 and height > 200
    assert "Shutting down (exit code 0)" in (folder / "locust.log").read_text()
    assert (folder / "service" / "serve.log").is_file()

    summary = json.loads((folder / "summary.json").read_text())
    assert summary["host"] == f"http://127.0.0.1:{port}" and summary["users"] == 2 and summary["duration_s"] == 15
    segment = summary["scenarios"]["segment"]
    assert segment["requests"] > 0 and segment["failures"] == 0 and segment["error_rate"] == 0
    assert 0 < segment["p50_ms"] <= segment["p95_ms"] <= segment["p99_ms"] <= segment["max_ms"] * 1.05 + 1
    assert segment["rps"] > 0 and segment["by_name"]
    assert sum(row["requests"] for row in segment["by_name"].values()) == segment["requests"]
    assert summary["slo"]["passed"] is True and summary["slo"]["violations"] == []
    rss = summary["service_rss_mb"]
    assert summary["service_started"] is True and 0 < rss["start"] <= rss["peak"] and rss["end"] > 0

    # The same run against an SLO no service meets: a non-zero exit naming the violation.
    strict = tmp_path / "strict.json"
    strict.write_text(json.dumps({"segment": {"p95_ms": 0.001, "error_rate": 0.01}}))
    port = free_port()
    result = _load_run(out, port, "3s", slo=strict)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert "SLO violated" in result.stdout and "segment p95_ms" in result.stdout and "> 0.001" in result.stdout
    _assert_nothing_left(port, out)
    (second,) = [path for path in out.iterdir() if path != folder]
    verdict = json.loads((second / "summary.json").read_text())["slo"]
    assert verdict["passed"] is False
    assert [(v["scenario"], v["metric"], v["limit"]) for v in verdict["violations"]] == [("segment", "p95_ms", 0.001)]
