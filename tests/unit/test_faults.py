"""The fault run's verdict (load/faults.py) over request logs written here, and the request log's
rows (load/scenarios/request_log.py) read back: no service, no locust."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import pytest

from load.faults import (
    Request,
    add_arguments,
    analyse_fault,
    check_arguments,
    find_recovery,
    outcome,
    plot_faults,
    read_requests,
)
from load.load_run import UsageError
from load.scenarios.request_log import RequestLog, error_code, request_row

KILL = 1_000_000.0  # the kill, epoch s
HANG_S, LIMIT_S = 35.0, 30.0


def ok(start: float, ms: float = 100.0, name: str = "segment: swtr_unet dicom png") -> Request:
    return Request(KILL + start, name, ms, 200)


def unavailable(start: float, ms: float = 50.0, retry_after: bool = True) -> Request:
    return Request(KILL + start, "segment: mast png json", ms, 503, retry_after, "backend_unavailable",
                   "HTTP 503: backend_unavailable")


def steady(start: float, end: float, step: float = 0.5) -> list[Request]:
    count = int((end - start) / step)
    return [ok(start + i * step) for i in range(count)]


def verdict(requests: list[Request], readyz: Sequence[tuple[float, int | None]] = (), **limits: float) -> dict:
    return analyse_fault(requests, KILL, limits.get("hang_s", HANG_S), limits.get("limit_s", LIMIT_S),
                         end_s=KILL + limits.get("end", 30.0), readyz=readyz)


def kinds(result: dict) -> list[str]:
    return [v["kind"] for v in result["violations"]]


def clean_outage() -> list[Request]:
    """Traffic before the kill, 503s with Retry-After for 6 s, then 200s."""
    return [*steady(-10, 0), *(unavailable(t) for t in (0.2, 1.5, 3.0, 4.5, 5.9)), ok(6.3, 200.0), *steady(7, 30)]


def test_a_clean_outage_passes_with_the_recovery_at_the_first_lasting_success() -> None:
    result = verdict(clean_outage())
    assert result["passed"] and result["violations"] == []
    assert result["recovered_after_s"] == pytest.approx(6.5)  # sent at +6.3, answered 200 ms later
    assert result["first_success_after_s"] == pytest.approx(6.5)
    assert result["outage"] == {"503": 5}
    assert result["requests"]["before_kill"] == 20


def test_requests_in_flight_at_the_kill_are_counted_and_a_slow_success_is_no_failure() -> None:
    waited = ok(-0.1, ms=5000.0)  # in flight at the kill, answered once the worker was back
    result = verdict([*steady(-10, -0.5), waited, ok(0.5, ms=4600.0), *steady(5.5, 30)])
    assert result["passed"]
    assert result["in_flight_at_kill"] == {"200": 1}
    assert result["recovered_after_s"] == pytest.approx(5.1)  # the first request sent after the kill
    assert result["longest_request_ms"] == 5000.0


def test_a_500_fails() -> None:
    requests = clean_outage()
    requests.append(Request(KILL + 2.0, "segment: mast png json", 30.0, 500, False, "internal_error", "HTTP 500"))
    result = verdict(requests)
    assert not result["passed"] and kinds(result) == ["status"]
    assert result["violations"][0]["outcome"] == "500" and result["violations"][0]["count"] == 1


def test_a_503_without_retry_after_fails() -> None:
    result = verdict([*clean_outage(), unavailable(2.5, retry_after=False)])
    assert kinds(result) == ["status"] and result["violations"][0]["outcome"] == "503 without Retry-After"


def test_no_answer_at_all_fails() -> None:
    reset = Request(KILL + 0.1, "segment: mast png json", 3.0, 0, exception="ConnectionResetError")
    result = verdict([*clean_outage(), reset])
    assert kinds(result) == ["status"] and result["violations"][0]["outcome"] == "no answer"


def test_a_hang_fails_even_when_it_ends_well() -> None:
    result = verdict([*clean_outage(), ok(0.1, ms=40_000.0)], end=45.0)
    assert kinds(result) == ["hang"]
    assert result["violations"][0]["longest_ms"] == 40_000.0


def test_never_recovering_fails() -> None:
    result = verdict([*steady(-10, 0), *(unavailable(t) for t in range(0, 30, 2))])
    assert kinds(result) == ["not_recovered"]
    assert result["recovered_after_s"] is None and result["outage"] == {"503": 15}


def test_recovering_later_than_the_limit_fails() -> None:
    result = verdict([*steady(-5, 0), *(unavailable(t) for t in range(0, 20, 2)), *steady(21, 30)], limit_s=10.0)
    assert kinds(result) == ["slow_recovery"] and result["recovered_after_s"] == pytest.approx(21.1)


def test_a_failure_after_recovery_fails_and_recovery_is_after_the_last_failure() -> None:
    requests = [*steady(-5, 0), unavailable(0.5), ok(3.0), unavailable(4.0), *steady(5, 30)]
    result = verdict(requests)
    assert kinds(result) == ["failed_after_recovery"]
    assert result["first_success_after_s"] == pytest.approx(3.1)
    assert result["recovered_after_s"] == pytest.approx(5.1)


def test_a_failure_before_the_kill_fails() -> None:
    result = verdict([unavailable(-3.0), *clean_outage()])
    assert kinds(result) == ["failed_before_kill"]


def test_readyz_may_say_not_ready_but_not_500_nor_hang() -> None:
    assert verdict(clean_outage(), readyz=[(0.3, 503), (6.0, 200)])["passed"]
    result = verdict(clean_outage(), readyz=[(0.3, 500), (5.0, None), (6.0, 200)])
    assert kinds(result) == ["readyz", "readyz"]
    assert [v["status"] for v in result["violations"]] == [500, None]


def test_stream_events_are_judged_by_their_error_and_not_timed_as_requests() -> None:
    refused = Request(KILL + 0.3, "video: mast frame", 900.0, None, exception="backend_unavailable")
    stream_end = Request(KILL - 20, "video: end", 60_000.0, None)  # a whole stream, not one request
    assert outcome(refused) == "event backend_unavailable"
    assert verdict([*clean_outage(), refused, stream_end])["passed"]
    broken = Request(KILL + 0.3, "video: end", 10.0, None, exception="stream broken: ConnectionClosed")
    assert outcome(broken) == "event failed" and kinds(verdict([*clean_outage(), broken])) == ["status"]


def test_a_200_with_a_wrong_body_is_a_failure() -> None:
    wrong = Request(KILL + 8, "segment: mast png png", 80.0, 200, exception="png: the body is not image/png")
    assert outcome(wrong) == "200 bad answer"
    assert find_recovery([*clean_outage(), wrong], KILL).recovered == pytest.approx(8.1)  # sent at +8.0
    assert kinds(verdict([*clean_outage(), wrong])) == ["status", "failed_after_recovery"]


def response(status: int, headers: dict[str, str], body: bytes) -> SimpleNamespace:
    return SimpleNamespace(status_code=status, headers=headers, content=body)


def test_request_log_rows_read_back_as_the_analysis_reads_them(tmp_path: Path) -> None:
    path = tmp_path / "requests.csv"
    log = RequestLog(str(path))
    body = b'{"error": "backend_unavailable", "message": "retry shortly"}'
    log.on_request("segment: mast png json", 51.25, response(503, {"Retry-After": "5", "Content-Type": "application/json"}, body),
                   RuntimeError("HTTP 503: " + "x" * 500), start_time=KILL + 1)
    log.on_request("segment: swtr_unet dicom seg", 80.0, response(200, {"Content-Type": "application/dicom"}, b"DICM"),
                   None, start_time=KILL + 2)
    log.on_request("video: mast frame", 30.0, None, None)  # a custom event: no start time, no response
    log.on_request("video: dropped", 0.0)
    log.handle.close()
    rows = read_requests(path)
    assert [r.name for r in rows] == ["segment: mast png json", "segment: swtr_unet dicom seg", "video: mast frame"]
    first, second, event = rows
    assert (first.status, first.retry_after, first.error, first.response_ms) == (503, True, "backend_unavailable", 51.2)
    assert first.start_s == KILL + 1 and len(first.exception) == 120 and outcome(first) == "503"
    assert (second.status, second.retry_after, second.error, outcome(second)) == (200, False, "", "200")
    assert event.status is None and outcome(event) == "event ok"


def test_a_connection_error_has_status_0_and_a_short_exception() -> None:
    row = request_row("segment: mast png json", 2.0, response(0, None, None), ConnectionRefusedError(111, "refused"), 5.0)
    assert row[3:] == ["0", "0", "", "[Errno 111] refused"]


def test_error_code_is_read_from_small_json_error_bodies_only() -> None:
    assert error_code(503, "application/json", b'{"error": "backend_unavailable"}') == "backend_unavailable"
    assert error_code(200, "application/json", b'{"error": "x"}') == ""
    assert error_code(500, "text/plain", b"Internal Server Error") == ""
    assert error_code(502, "application/json", b"<html>") == ""
    assert error_code(503, "application/json", b'{"error": "' + b"x" * 5000 + b'"}') == ""


def arguments(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return check_arguments(parser.parse_args(list(argv)))


def test_arguments_defaults_and_refusals() -> None:
    args = arguments("--kill", "tritonserver")
    assert (args.backend, args.run_s, args.at, args.hang_s, args.scenarios) == ("triton", 60, 20.0, 35.0, ["segment"])
    assert arguments("--kill", "worker").backend == "embedded"
    assert arguments("--kill", "worker", "--backend", "triton", "--deadline-s", "10").hang_s == 15.0
    with pytest.raises(UsageError):
        arguments("--kill", "tritonserver", "--backend", "embedded")
    with pytest.raises(UsageError):
        arguments("--kill", "worker", "--time", "30s", "--at", "30")


def test_the_figure_is_written(tmp_path: Path) -> None:
    requests = clean_outage()
    plot_faults(requests, KILL, 6.5, 5.0, tmp_path / "faults.png", title="test")
    assert (tmp_path / "faults.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
