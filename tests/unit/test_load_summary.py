"""make load's arithmetic without locust or a service: percentiles per scenario, SLOs, the plot."""

from __future__ import annotations

import csv
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from load.load_run import (
    DEFAULT_LOCUSTFILE,
    DEFAULT_SLO,
    NameStats,
    UsageError,
    evaluate_slo,
    histogram_percentile,
    load_slo,
    mixture_percentile,
    parse_timespan,
    plot_latency,
    read_stats_csv,
    read_stats_json,
    scenario_classes,
    scenario_history,
    scenario_of,
    summarize_scenarios,
)

CSV_HEADER = ["Type", "Name", "Request Count", "Failure Count", "Median Response Time", "Average Response Time",
              "Min Response Time", "Max Response Time", "Average Content Size", "Requests/s", "Failures/s",
              "50%", "66%", "75%", "80%", "90%", "95%", "98%", "99%", "99.9%", "99.99%", "100%"]
HISTORY_HEADER = ["Timestamp", "User Count", "Type", "Name", "Requests/s", "Failures/s", "50%", "66%", "75%", "80%",
                  "90%", "95%", "98%", "99%", "99.9%", "99.99%", "100%", "Total Request Count",
                  "Total Failure Count", "Total Median Response Time", "Total Average Response Time",
                  "Total Min Response Time", "Total Max Response Time", "Total Average Content Size"]


def test_histogram_percentiles_follow_locusts_own_rule() -> None:
    """Against locust.stats.calculate_response_time_percentile itself (in a child interpreter:
    importing locust here would monkey-patch this one with gevent)."""
    rng = random.Random(3)
    cases = [{rng.choice([1, 5, 20, 35, 99, 150, 1200, 9000]): rng.randint(1, 40) for _ in range(6)} for _ in range(20)]
    quantiles = [0.5, 0.66, 0.95, 0.99, 1.0]
    code = (
        "import json, sys\nfrom locust.stats import calculate_response_time_percentile as p\n"
        "cases = json.loads(sys.stdin.read())\n"
        f"print(json.dumps([[p({{int(k): v for k, v in c.items()}}, sum(c.values()), q) for q in {quantiles}]\n"
        "                   for c in cases]))"
    )
    result = subprocess.run([sys.executable, "-c", code], input=json.dumps(cases), capture_output=True, text=True,
                            timeout=120, check=True)
    expected = json.loads(result.stdout.strip().splitlines()[-1])
    assert [[histogram_percentile(case, q) for q in quantiles] for case in cases] == expected


def test_histogram_percentile_small_cases() -> None:
    assert histogram_percentile({10: 50, 20: 45, 100: 5}, 0.5) == 20
    assert histogram_percentile({10: 50, 20: 45, 100: 5}, 0.95) == 100
    assert histogram_percentile({10: 50, 20: 45, 100: 5}, 0.9) == 20
    assert histogram_percentile({}, 0.5) is None


def test_mixture_of_one_distribution_gives_back_its_own_percentiles() -> None:
    knots = [(3.0, 0.0), (10.0, 0.5), (12.0, 0.66), (20.0, 0.95), (40.0, 0.99), (90.0, 1.0)]
    for x, q in knots[1:]:
        assert mixture_percentile([(7, knots)], q) == pytest.approx(x)
    assert mixture_percentile([(7, knots), (7, knots)], 0.95) == pytest.approx(20.0)


def test_mixture_of_two_distributions_weights_by_request_count() -> None:
    fast = [(0.0, 0.0), (10.0, 1.0)]  # uniform 0-10 ms
    slow = [(100.0, 0.0), (110.0, 1.0)]  # uniform 100-110 ms
    assert mixture_percentile([(1, fast), (1, slow)], 0.25) == pytest.approx(5.0)
    assert mixture_percentile([(1, fast), (1, slow)], 0.5) == pytest.approx(10.0)
    assert mixture_percentile([(1, fast), (1, slow)], 0.75) == pytest.approx(105.0)
    assert mixture_percentile([(3, fast), (1, slow)], 0.95) == pytest.approx(108.0)
    assert mixture_percentile([(0, fast)], 0.5) is None


def test_mixture_with_a_point_mass_at_the_minimum() -> None:
    """Locust's CSV often repeats a value (min = 50 % = 66 %): a jump in the distribution."""
    knots = [(20.0, 0.0), (20.0, 0.5), (20.0, 0.66), (30.0, 1.0)]
    assert mixture_percentile([(1, knots)], 0.3) == pytest.approx(20.0)
    assert mixture_percentile([(1, knots)], 0.66) == pytest.approx(20.0)
    assert mixture_percentile([(1, knots)], 0.83) == pytest.approx(25.0)
    bucket = [(5.0, 0.0), (10.0, 0.5), (20.0, 0.9), (30.0, 0.95), (30.0, 0.98), (40.0, 1.0)]
    for q, x in ((0.5, 10.0), (0.9, 20.0), (0.95, 30.0), (0.97, 30.0), (0.98, 30.0), (0.99, 35.0)):
        assert mixture_percentile([(1, bucket)], q) == pytest.approx(x)


def test_scenario_of_uses_the_prefix_or_the_only_scenario() -> None:
    assert scenario_of("pacs: time-to-SEG", ["segment", "pacs"]) == "pacs"
    assert scenario_of("/v1/segment png", ["segment"]) == "segment"
    assert scenario_of("/v1/segment png", ["segment", "pacs"]) == "_unscoped"
    assert scenario_of("other: x", ["segment", "pacs"]) == "_unscoped"


def _row(name: str, histogram: dict[int, int], failures: int = 0) -> NameStats:
    return NameStats(name, sum(histogram.values()), failures, max(histogram), 0.0, histogram=histogram,
                     window_s=(1000.0, 1010.0))


def test_summary_merges_a_scenarios_histograms_and_keeps_drops_apart() -> None:
    rows = [
        _row("segment: a", {10: 90, 30: 10}),
        _row("segment: b", {100: 10}, failures=1),
        _row("video: mast frame", {20: 95, 60: 5}),
        _row("video: dropped", {0: 25}),
    ]
    summary = summarize_scenarios(rows, ["segment", "video"])
    segment, video = summary["segment"], summary["video"]
    assert (segment["requests"], segment["failures"]) == (110, 1)
    assert segment["error_rate"] == pytest.approx(1 / 110, abs=1e-6)
    assert segment["p50_ms"] == 10 and segment["p95_ms"] == 100 and segment["max_ms"] == 100
    assert segment["rps"] == pytest.approx(11.0)
    assert segment["percentiles_from"] == "histogram"
    assert set(segment["by_name"]) == {"segment: a", "segment: b"}
    assert segment["by_name"]["segment: a"]["p95_ms"] == 30
    assert (video["requests"], video["dropped"]) == (100, 25)
    assert video["dropped_rate"] == pytest.approx(25 / 125)
    assert video["p50_ms"] == 20 and video["p99_ms"] == 60  # the drops' 0 ms are not latency
    assert "video: dropped" in video["by_name"]


def test_a_scenario_that_made_no_request_has_no_latency() -> None:
    summary = summarize_scenarios([], ["pacs"])
    assert summary["pacs"]["requests"] == 0 and summary["pacs"]["p95_ms"] is None
    assert summary["pacs"]["error_rate"] is None


def _write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_reading_locusts_csv_and_json(tmp_path: Path) -> None:
    stats_csv = _write_csv(tmp_path / "stats_stats.csv", CSV_HEADER, [
        ["POST", "segment: a", 100, 2, 10, 12.5, 3.2, 90.1, 500, 10.0, 0.2, 10, 12, 14, 15, 18, 20, 30, 40, 90, 90, 90],
        ["POST", "segment: b", 100, 0, 100, 101.0, 95.0, 120.0, 500, 10.0, 0.0,
         100, 100, 100, 100, 110, 110, 120, 120, 120, 120, 120],
        ["", "Aggregated", 200, 2, 50, 55.0, 3.2, 120.0, 500, 20.0, 0.2,
         50, 100, 100, 100, 110, 110, 120, 120, 120, 120, 120],
    ])
    rows = read_stats_csv(stats_csv)
    assert [row.name for row in rows] == ["segment: a", "segment: b"]
    summary = summarize_scenarios(rows, ["segment"])["segment"]
    assert summary["percentiles_from"] == "csv-mixture"
    assert (summary["requests"], summary["failures"], summary["rps"]) == (200, 2, 20.0)
    assert summary["by_name"]["segment: a"]["p95_ms"] == 20.0
    assert 18.0 <= summary["p50_ms"] <= 100.0 and 100.0 <= summary["p95_ms"] <= 110.0

    stats_json = tmp_path / "stats.json"
    stats_json.write_text(json.dumps([
        {"name": "segment: a", "method": "POST", "num_requests": 4, "num_failures": 1, "max_response_time": 31.5,
         "start_time": 100.0, "last_request_timestamp": 110.0, "response_times": {"10": 3, "32": 1}},
        {"name": "segment: a", "method": "GET", "num_requests": 1, "num_failures": 0, "max_response_time": 5.0,
         "start_time": 105.0, "last_request_timestamp": 105.0, "response_times": {"5": 1}},
    ]))
    rows = read_stats_json(stats_json)
    summary = summarize_scenarios(rows, ["segment"])["segment"]
    assert summary["by_name"]["segment: a"]["requests"] == 5  # two methods, one name
    assert summary["rps"] == pytest.approx(0.5) and summary["max_ms"] == 31.5
    assert summary["p50_ms"] == 10 and summary["p99_ms"] == 32


def test_slo_file_validation(tmp_path: Path) -> None:
    path = tmp_path / "slo.json"
    path.write_text(json.dumps({"_comment": "x", "pacs": {"error_rate": 0.01, "min_rps": 0.1, "_why": "y",
                                                          "pacs: time-to-SEG": {"p95_ms": 30000}}}))
    assert load_slo(path) == {"pacs": {"error_rate": 0.01, "min_rps": 0.1, "pacs: time-to-SEG": {"p95_ms": 30000}}}
    for bad in ({"segment": {"p95": 10}}, {"segment": {"p95_ms": "10"}}, {"segment": 3},
                {"video": {"video: x": {"dropped_rate": 0.1}}}):
        path.write_text(json.dumps(bad))
        with pytest.raises(UsageError):
            load_slo(path)


def test_slo_evaluation_lists_every_violation() -> None:
    scenarios = {
        "segment": {"requests": 50, "error_rate": 0.0, "p95_ms": 300.0, "rps": 4.0,
                    "by_name": {"segment: a": {"p95_ms": 90.0}}},
        "pacs": {"requests": 0, "error_rate": None, "p95_ms": None, "rps": 0.0, "by_name": {}},
    }
    slo = {
        "segment": {"p95_ms": 250, "error_rate": 0.01, "min_rps": 5, "segment: a": {"p95_ms": 100}},
        "pacs": {"pacs: time-to-SEG": {"p95_ms": 30000}},
        "volume": {"p95_ms": 1},  # not run: not judged
    }
    verdict = evaluate_slo(scenarios, slo)
    assert verdict["passed"] is False
    assert verdict["violations"] == [
        {"scenario": "segment", "name": None, "metric": "p95_ms", "limit": 250, "value": 300.0},
        {"scenario": "segment", "name": None, "metric": "min_rps", "limit": 5, "value": 4.0},
        {"scenario": "pacs", "name": "pacs: time-to-SEG", "metric": "p95_ms", "limit": 30000, "value": None},
    ]
    assert evaluate_slo(scenarios, {"segment": {"p95_ms": 300}}) == {"passed": True, "violations": []}


def test_the_repositorys_slo_file_covers_every_scenario_of_the_locustfile() -> None:
    slo = load_slo(DEFAULT_SLO)
    for scenario in ("segment", "volume", "pacs", "video"):
        assert scenario in slo and "error_rate" in slo[scenario]
    assert scenario_classes(DEFAULT_LOCUSTFILE, list(slo)) == [f"{s.capitalize()}User" for s in slo]


def test_scenario_classes_from_the_locustfile(tmp_path: Path) -> None:
    literal = tmp_path / "literal.py"
    literal.write_text("class A: pass\nclass B: pass\nSCENARIOS = {'segment': A, 'pacs': B}\n")
    assert scenario_classes(literal, ["pacs", "segment"]) == ["B", "A"]
    with pytest.raises(UsageError, match="no scenario video"):
        scenario_classes(literal, ["video"])
    conventional = tmp_path / "conventional.py"
    conventional.write_text("class SegmentUser: pass\n")
    assert scenario_classes(conventional, ["segment"]) == ["SegmentUser"]
    imported = tmp_path / "imported.py"
    imported.write_text("from load.scenarios.pacs import PacsUser\n")
    assert scenario_classes(imported, ["pacs"]) == ["PacsUser"]
    built = tmp_path / "built.py"
    built.write_text("class SegmentUser: pass\n"
                     "SCENARIOS = {cls.__name__[:-4].lower(): cls for cls in (SegmentUser,)}\n")
    assert scenario_classes(built, ["segment"]) == ["SegmentUser"]


def test_parse_timespan() -> None:
    assert [parse_timespan(t) for t in ("90", "60s", "2m", "1h30m", "1h2m3s")] == [90, 60, 120, 5400, 3723]
    with pytest.raises(UsageError):
        parse_timespan("soon")


def _percentiles(base: int) -> list[int]:
    """A history row's 50 % ... 100 % columns."""
    return [base, base, base, base, base * 2, base * 3, base * 3, base * 4, base * 4, base * 4, base * 4]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # matplotlib on a newer pyparsing
def test_history_per_scenario_and_its_plot(tmp_path: Path) -> None:
    rows = []
    for second in range(5):
        stamp = 1000 + second
        rows += [
            [stamp, 4, "POST", "segment: a", 10.0, 0.0, *_percentiles(10), 10, 0, 10, 12, 5, 40, 500],
            [stamp, 4, "GET", "video: mast frame", 30.0, 0.0, *_percentiles(20), 30, 0, 20, 22, 8, 80, 100],
            [stamp, 4, "WS", "video: dropped", 5.0, 0.0, *([0] * 11), 5, 0, 0, 0, 0, 0, 0],
            [stamp, 4, "", "Aggregated", 45.0, 0.0, *_percentiles(15), 45, 0, 15, 18, 0, 80, 300],
        ]
    path = _write_csv(tmp_path / "stats_stats_history.csv", HISTORY_HEADER, rows)
    history = scenario_history(path, ["segment", "video"])
    assert history["segment"]["t_s"] == [0, 1, 2, 3, 4] and history["segment"]["users"] == [4] * 5
    assert history["segment"]["rps"] == [10.0] * 5 and history["segment"]["p95_ms"] == [pytest.approx(30.0)] * 5
    assert history["video"]["rps"] == [30.0] * 5 and history["video"]["dropped_per_s"] == [5.0] * 5
    assert history["video"]["p50_ms"] == [pytest.approx(20.0)] * 5
    plot_latency(history, tmp_path / "latency.png", title="test")
    assert (tmp_path / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
