"""``make load``: a headless locust run of chosen scenarios, judged against per-scenario SLOs.

    make load                                             # segment, 8 users, 60 s, http://127.0.0.1:3000
    LOAD_SCENARIOS=segment,pacs LOAD_USERS=4 LOAD_TIME=2m make load
    python -m load.load_run --scenarios video --users 2 --time 30s --host http://127.0.0.1:3000

Every option defaults from an environment variable: ``LOAD_HOST``, ``LOAD_TIME`` (locust syntax:
``90``, ``60s``, ``2m``, ``1h30m``), ``LOAD_USERS``, ``LOAD_RATE`` (users started per second;
default: all of them in the first second), ``LOAD_SCENARIOS`` (comma list of the locustfile's
``SCENARIOS`` keys; their user classes are what locust runs), ``LOAD_SLO``, ``LOAD_OUT``,
``LOAD_LOCUSTFILE``, ``LOAD_BACKEND`` (embedded, openvino or triton: the back end of a service
started here).

If nothing answers ``GET /readyz`` at the host (a loopback address), the service is started there
(``bentoml serve`` on ``LOAD_BACKEND``, this checkout's ``model_repository``; its log and data in
``<run>/service/``; on triton, a tritonserver too, restarted if it dies), its processes' resident
memory sampled every second per role, and stopped after the run. The run folder ``<out>/<YYYYmmdd-HHMMSS>/`` gets locust's ``report.html``,
``stats_stats.csv``, ``stats_stats_history.csv`` (every request name, every second),
``stats_failures.csv``, ``stats_exceptions.csv``, ``stats.json`` (final counts and response-time
histograms), ``locust.log`` (everything locust wrote), ``latency.png``, ``service_rss.csv`` (when
started here) and ``summary.json``.

Request names are ``"<scenario>: <what>"``; a scenario's figures are over its names (a name
without a known prefix belongs to the only scenario run, else to ``"_unscoped"``). A name whose
part after ``": "`` is ``dropped`` (``"video: dropped"``) counts events, not requests: they are
the scenario's ``dropped`` and ``dropped_rate`` (dropped / (requests + dropped)), never part of its
latency, requests or failures.

Exit status: 0 every SLO held; 1 an SLO was violated (printed) or the locustfile raised; 2 bad
arguments, SLO file, scenario name or host; 3 the service did not start, or locust did not run
to the end or wrote no stats.
"""

from __future__ import annotations

import argparse
import ast
import csv
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from load.local_service import ROOT, LocalService, local_service
from load.process_memory import RoleRssSampler
from load.triton_server import SupervisedTriton, supervised_triton

SEPARATOR = ": "
DROPPED = "dropped"
UNSCOPED = "_unscoped"
DEFAULT_LOCUSTFILE = ROOT / "load" / "locustfile.py"
DEFAULT_SLO = ROOT / "load" / "slo.json"
DEFAULT_OUT = ROOT / "build" / "load"
DEFAULT_REPOSITORY = ROOT / "model_repository"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}

# The percentiles a summary reports, by key.
PERCENTILES = {"p50_ms": 0.50, "p95_ms": 0.95, "p99_ms": 0.99}
# What an SLO may limit: every field of a summary entry (upper limits; "min_<field>" a lower one).
NAME_METRICS = ("requests", "failures", "error_rate", *PERCENTILES, "max_ms", "rps")
SCENARIO_METRICS = (*NAME_METRICS, "dropped", "dropped_rate")
HISTORY_KEYS = ("t_s", "users", "rps", "dropped_per_s", "p50_ms", "p95_ms")
# The percentile columns of locust's CSVs (locust.stats.PERCENTILES_TO_REPORT, its default).
CSV_QUANTILES = {"50%": 0.5, "66%": 0.66, "75%": 0.75, "80%": 0.8, "90%": 0.9, "95%": 0.95, "98%": 0.98,
                 "99%": 0.99, "99.9%": 0.999, "99.99%": 0.9999, "100%": 1.0}

EXIT_OK, EXIT_SLO, EXIT_USAGE, EXIT_LOCUST = 0, 1, 2, 3


class UsageError(Exception):
    """A bad argument, SLO file, scenario name or host (exit status 2)."""


# ----------------------------------------------------------------------------------------------
# Locust's numbers per request name, and per scenario


@dataclass
class NameStats:
    """One row of locust's: a request name's final figures for one method.

    ``histogram``: locust's response-time histogram (bucketed ms -> count: exact to 1 ms under
    100 ms, then about two significant digits), from ``stats.json``; ``knots``: (ms, quantile)
    points of the cumulative distribution, from a CSV row (min, 50 %, 66 % ... 100 %).
    ``window_s``: the run's (first, last) request time, for rates."""

    name: str
    requests: int
    failures: int
    max_ms: float
    rps: float
    histogram: dict[int, int] | None = None
    knots: list[tuple[float, float]] | None = None
    window_s: tuple[float, float] | None = None


def scenario_of(name: str, scenarios: Sequence[str]) -> str:
    """The scenario of a request name: the part before ``": "`` when it is a scenario run; a name
    without one (a locustfile not following the naming contract) belongs to the only scenario run."""
    prefix = name.split(SEPARATOR, 1)[0] if SEPARATOR in name else None
    if prefix in scenarios:
        return prefix
    return scenarios[0] if len(scenarios) == 1 else UNSCOPED


def is_dropped(name: str) -> bool:
    return SEPARATOR in name and name.split(SEPARATOR, 1)[1].strip() == DROPPED


def histogram_percentile(histogram: Mapping[int, int], q: float) -> float | None:
    """The response time under which ``q`` of the requests fell: locust's own rule
    (``locust.stats.calculate_response_time_percentile``), so a one-name scenario gets exactly the
    figure of locust's report, and several names merged get what its "Aggregated" row would."""
    total = sum(histogram.values())
    if total == 0:
        return None
    wanted = int(total * q)
    processed = 0
    for value in sorted(histogram, reverse=True):
        processed += histogram[value]
        if total - processed <= wanted:
            return float(value)
    return None


@dataclass(frozen=True)
class _Steps:
    """A distribution through (ms, quantile) knots: at each distinct response time ``xs[i]`` it
    is ``below[i]`` just under it (the lowest quantile listed there) and ``at[i]`` at it (the
    highest: several percentiles on one value are a mass of requests in one locust bucket);
    linear from one response time to the next."""

    xs: list[float]
    below: list[float]
    at: list[float]

    @classmethod
    def of(cls, knots: Sequence[tuple[float, float]]) -> _Steps:
        xs: list[float] = []
        below: list[float] = []
        at: list[float] = []
        for x, q in sorted(knots):
            if xs and x == xs[-1]:
                at[-1] = max(at[-1], q)
            else:
                q = max(q, at[-1]) if at else q
                xs.append(float(x))
                below.append(q)
                at.append(q)
        return cls(xs, below, at)

    def cdf(self, x: float, left: bool = False) -> float:
        xs = self.xs
        if x < xs[0]:
            return 0.0
        if x > xs[-1]:
            return self.at[-1]
        for i, knot in enumerate(xs):
            if x == knot:
                return self.below[i] if left else self.at[i]
            if x < knot:
                return self.at[i - 1] + (self.below[i] - self.at[i - 1]) * (x - xs[i - 1]) / (knot - xs[i - 1])
        return self.at[-1]


def mixture_percentile(components: Sequence[tuple[float, Sequence[tuple[float, float]]]], q: float) -> float | None:
    """The ``q`` quantile of a mixture of distributions, each given by weight and (ms, quantile)
    knots (``_Steps``): the smallest x where the weighted mean of the distributions reaches
    ``q``. One component gives back its own knots; for several it is exact at the knots and
    linear in between (a CSV row has eleven percentiles and the minimum)."""
    parts = [(w, _Steps.of(k)) for w, k in components if w > 0 and k]
    total = sum(w for w, _ in parts)
    if not parts or total <= 0:
        return None

    def mixed(x: float, left: bool = False) -> float:
        return sum(w * steps.cdf(x, left) for w, steps in parts) / total

    grid = sorted({x for _, steps in parts for x in steps.xs})
    previous_x, previous_f = grid[0], mixed(grid[0], left=True)
    for x in grid:
        below, at = mixed(x, left=True), mixed(x)
        if below >= q - 1e-12 and x > previous_x and below > previous_f:
            return previous_x + (x - previous_x) * (q - previous_f) / (below - previous_f)
        if at >= q - 1e-12:
            return x
        previous_x, previous_f = x, at
    return grid[-1]


def read_stats_json(path: Path) -> list[NameStats]:
    """Locust's ``--json-file`` output: final counts and histograms per (name, method). Rates are
    over the whole run, as locust's own (requests / (last request of the run - first entry's
    start)), not over each name's own first and last request."""
    entries = json.loads(Path(path).read_text())
    firsts = [float(e["start_time"]) for e in entries if e.get("start_time")]
    lasts = [float(e["last_request_timestamp"]) for e in entries if e.get("last_request_timestamp")]
    window = (min(firsts), max(lasts)) if firsts and lasts else None
    span = window[1] - window[0] if window else 0.0
    return [
        NameStats(
            name=entry["name"],
            requests=int(entry["num_requests"]),
            failures=int(entry["num_failures"]),
            max_ms=float(entry.get("max_response_time") or 0.0),
            rps=int(entry["num_requests"]) / span if span > 0 else 0.0,
            histogram={int(float(k)): int(v) for k, v in (entry.get("response_times") or {}).items()},
            window_s=window,
        )
        for entry in entries
    ]


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "", "N/A") else None
    except ValueError:
        return None


def _knots(row: Mapping[str, str], minimum: float | None) -> list[tuple[float, float]] | None:
    points = [(value, q) for column, q in CSV_QUANTILES.items() if (value := _number(row.get(column))) is not None]
    if not points:
        return None
    low = minimum if minimum is not None else 0.0
    return [(min(low, points[0][0]), 0.0), *points]


def read_stats_csv(path: Path) -> list[NameStats]:
    """Locust's ``<prefix>_stats.csv`` (the "Aggregated" row left out). Locust rewrites it every
    second while the run goes on, not at the end: it can miss the last second's requests."""
    rows = []
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            if row["Name"] == "Aggregated" and not row["Type"]:
                continue
            requests = int(row["Request Count"])
            rows.append(NameStats(
                name=row["Name"],
                requests=requests,
                failures=int(row["Failure Count"]),
                max_ms=_number(row["Max Response Time"]) or 0.0,
                rps=_number(row["Requests/s"]) or 0.0,
                knots=_knots(row, _number(row["Min Response Time"])) if requests else None,
            ))
    return rows


def _figures(rows: Sequence[NameStats]) -> tuple[dict[str, object], str]:
    """Requests, failures, error rate, percentiles, max and rate over ``rows`` (one name or a
    scenario's names), and how the percentiles were had."""
    requests = sum(row.requests for row in rows)
    failures = sum(row.failures for row in rows)
    if rows and all(row.histogram is not None for row in rows):
        histogram: dict[int, int] = {}
        for row in rows:
            for value, count in row.histogram.items():
                histogram[value] = histogram.get(value, 0) + count
        percentiles = {key: histogram_percentile(histogram, q) for key, q in PERCENTILES.items()}
        method = "histogram"
    else:
        mixture = [(row.requests, row.knots) for row in rows if row.knots]
        percentiles = {key: mixture_percentile(mixture, q) for key, q in PERCENTILES.items()}
        method = "csv-mixture"
    windows = [row.window_s for row in rows if row.window_s]
    if windows and len(windows) == len(rows):
        span = max(w[1] for w in windows) - min(w[0] for w in windows)
        rps = requests / span if span > 0 else 0.0
    else:
        rps = sum(row.rps for row in rows)
    figures = {
        "requests": requests,
        "failures": failures,
        "error_rate": round(failures / requests, 6) if requests else None,
        **{key: _ms(value) for key, value in percentiles.items()},
        "max_ms": _ms(max((row.max_ms for row in rows), default=None)) if requests else None,
        "rps": round(rps, 3),
    }
    return figures, method


def _ms(value: float | None) -> float | None:
    return None if value is None else round(float(value), 1)


def summarize_scenarios(rows: Sequence[NameStats], scenarios: Sequence[str]) -> dict[str, dict]:
    """Per scenario: its figures over its request names (drop events apart), ``dropped``,
    ``dropped_rate``, ``percentiles_from`` (``histogram``: locust's histograms merged, exact as its
    own report; ``csv-mixture``: CSV percentiles mixed by request count) and ``by_name`` (locust's
    rows of one name with several methods taken together)."""
    groups: dict[str, dict[str, list[NameStats]]] = {name: {} for name in scenarios}
    for row in rows:
        groups.setdefault(scenario_of(row.name, scenarios), {}).setdefault(row.name, []).append(row)
    summary = {}
    for scenario, names in groups.items():
        counted = [row for name, group in names.items() if not is_dropped(name) for row in group]
        dropped = sum(row.requests for name, group in names.items() if is_dropped(name) for row in group)
        figures, method = _figures(counted)
        seen = figures["requests"] + dropped
        summary[scenario] = {
            **figures,
            "dropped": dropped,
            "dropped_rate": round(dropped / seen, 6) if seen else None,
            "percentiles_from": method,
            "by_name": {name: _figures(names[name])[0] for name in sorted(names)},
        }
    return summary


# ----------------------------------------------------------------------------------------------
# SLOs


def load_slo(path: Path) -> dict[str, dict]:
    """An SLO file: ``{scenario: {metric: limit, "min_<metric>": limit, "<request name>": {metric:
    limit}}}``; keys starting with ``_`` are comments. UsageError for an unknown metric."""
    try:
        document = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise UsageError(f"SLO file {path}: {error}") from None
    if not isinstance(document, dict):
        raise UsageError(f"SLO file {path}: a JSON object of scenarios expected")
    slo = {}
    for scenario, limits in document.items():
        if scenario.startswith("_"):
            continue
        if not isinstance(limits, dict):
            raise UsageError(f"SLO file {path}: {scenario!r} must map metrics to limits")
        slo[scenario] = {}
        for key, limit in limits.items():
            if key.startswith("_"):
                continue
            if SEPARATOR in key:
                if not isinstance(limit, dict):
                    raise UsageError(f"SLO file {path}: {scenario} / {key!r} must map metrics to limits")
                slo[scenario][key] = {k: _limit(path, f"{scenario} / {key}", k, v, NAME_METRICS)
                                      for k, v in limit.items() if not k.startswith("_")}
            else:
                slo[scenario][key] = _limit(path, scenario, key, limit, SCENARIO_METRICS)
    return slo


def _limit(path: Path, where: str, key: str, limit: object, metrics: Sequence[str]) -> float:
    if key.removeprefix("min_") not in metrics:
        raise UsageError(f"SLO file {path}: {where}: unknown metric {key!r} (known: {', '.join(metrics)}, "
                         "'min_' before one for a lower limit, or a request name with ': ')")
    if isinstance(limit, bool) or not isinstance(limit, (int, float)) or not math.isfinite(limit):
        raise UsageError(f"SLO file {path}: {where}: {key} must be a number, not {limit!r}")
    return limit


def evaluate_slo(scenarios: Mapping[str, Mapping], slo: Mapping[str, Mapping]) -> dict[str, object]:
    """Every limit of every scenario that ran: ``{"passed", "violations": [{"scenario", "name"
    (a request name, or None for the whole scenario), "metric", "limit", "value"}]}``. A limited
    figure that was not measured (no requests; a named request never made) is a violation."""
    violations = []
    for scenario, limits in slo.items():
        if scenario not in scenarios:
            continue
        for key, limit in limits.items():
            if isinstance(limit, Mapping):
                figures = scenarios[scenario]["by_name"].get(key, {})
                for metric, bound in limit.items():
                    violations += _check(scenario, key, figures, metric, bound)
            else:
                violations += _check(scenario, None, scenarios[scenario], key, limit)
    return {"passed": not violations, "violations": violations}


def _check(scenario: str, name: str | None, figures: Mapping, metric: str, limit: float) -> list[dict]:
    lower = metric.startswith("min_")
    value = figures.get(metric.removeprefix("min_"))
    broken = value is None or (value < limit if lower else value > limit)
    return [{"scenario": scenario, "name": name, "metric": metric, "limit": limit, "value": value}] if broken else []


def describe_violation(violation: Mapping) -> str:
    where = violation["scenario"] if violation["name"] is None else f"{violation['name']!r}"
    metric = violation["metric"]
    if violation["value"] is None:
        return f"{where} {metric}: not measured (no requests), limit {violation['limit']}"
    relation = "<" if metric.startswith("min_") else ">"
    return f"{where} {metric.removeprefix('min_')} {violation['value']} {relation} {violation['limit']}"


# ----------------------------------------------------------------------------------------------
# History and the latency plot


def scenario_history(path: Path, scenarios: Sequence[str]) -> dict[str, dict[str, list]]:
    """Per scenario, from ``stats_stats_history.csv`` (``--csv-full-history``: one row per request
    name per second, with locust's *current* figures, the last 10 s): seconds since the first row,
    users (all scenarios: locust records no count per class), requests/s and dropped/s (sums over
    the scenario's names), p50 and p95 ms (the names' current percentiles mixed by their current
    rates, their knots down to the name's minimum so far)."""
    by_time: dict[int, dict[str, list]] = {}
    users: dict[int, int] = {}
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            stamp = int(row["Timestamp"])
            users[stamp] = int(float(row["User Count"] or 0))
            if row["Name"] == "Aggregated" and not row["Type"]:
                continue
            by_time.setdefault(stamp, {}).setdefault(scenario_of(row["Name"], scenarios), []).append(row)
    stamps = sorted(users)
    names = list(dict.fromkeys([*scenarios, *(s for rows in by_time.values() for s in rows)]))
    history = {}
    for scenario in names:
        series: dict[str, list] = {key: [] for key in HISTORY_KEYS}
        for stamp in stamps:
            rows = by_time.get(stamp, {}).get(scenario, [])
            counted = [row for row in rows if not is_dropped(row["Name"])]
            mixture = [(rate, _knots(row, _number(row["Total Min Response Time"])))
                       for row in counted if (rate := _number(row["Requests/s"]) or 0.0) > 0]
            series["t_s"].append(stamp - stamps[0])
            series["users"].append(users[stamp])
            series["rps"].append(sum(_number(row["Requests/s"]) or 0.0 for row in counted))
            series["dropped_per_s"].append(sum(_number(r["Requests/s"]) or 0.0 for r in rows if is_dropped(r["Name"])))
            for key in ("p50_ms", "p95_ms"):
                series[key].append(mixture_percentile([(w, k) for w, k in mixture if k], PERCENTILES[key]))
        history[scenario] = series
    return history


def plot_latency(history: Mapping[str, Mapping[str, list]], path: Path, title: str = "") -> None:
    """One row per scenario: p50 / p95 latency (left) and requests/s (right) against time, the
    user count on a twin axis of each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = list(history) or ["(no requests)"]
    fig, axes = plt.subplots(len(scenarios), 2, figsize=(13, 3.4 * len(scenarios)), squeeze=False)
    for row, scenario in enumerate(scenarios):
        series = history.get(scenario) or {key: [] for key in HISTORY_KEYS}
        t = series["t_s"]
        latency, rate = axes[row]
        for key, style in (("p50_ms", "-"), ("p95_ms", "--")):
            values = [math.nan if v is None else v for v in series[key]]
            latency.plot(t, values, style, label=key.removesuffix("_ms"))
        latency.set_ylabel("response time (ms)")
        latency.set_title(f"{scenario}: latency (last 10 s)")
        rate.plot(t, series["rps"], "-", color="tab:green", label="requests/s")
        if any(series["dropped_per_s"]):
            rate.plot(t, series["dropped_per_s"], "-", color="tab:red", label="dropped/s")
        rate.set_ylabel("per second")
        rate.set_title(f"{scenario}: throughput")
        for ax in (latency, rate):
            ax.set_xlabel("time (s)")
            ax.set_ylim(bottom=0)
            ax.grid(alpha=0.3)
            twin = ax.twinx()
            twin.step(t, series["users"], where="post", color="grey", alpha=0.6, label="users (all)")
            twin.set_ylabel("users")
            twin.set_ylim(bottom=0, top=max(series["users"] or [1]) * 1.25 or 1)
            lines, labels = ax.get_legend_handles_labels()
            twin_lines, twin_labels = twin.get_legend_handles_labels()
            ax.legend(lines + twin_lines, labels + twin_labels, loc="upper left", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------
# Scenarios, time spans, the service


def scenario_classes(locustfile: Path, scenarios: Sequence[str]) -> list[str]:
    """The user class of each scenario, from the locustfile's ``SCENARIOS`` dict (read from its
    source when it is a literal, else by importing it in a child interpreter); without one, the
    ``<Scenario>User`` class of that name. UsageError for a scenario it does not have."""
    try:
        tree = ast.parse(Path(locustfile).read_text(), filename=str(locustfile))
    except (OSError, SyntaxError) as error:
        raise UsageError(f"locustfile {locustfile}: {error}") from None
    mapping: dict[str, str] | None = None
    found = False
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and any(
            isinstance(target, ast.Name) and target.id == "SCENARIOS" for target in targets
        ):
            found = True
            value = node.value
            if isinstance(value, ast.Dict) and all(isinstance(k, ast.Constant) and isinstance(v, ast.Name)
                                                   for k, v in zip(value.keys, value.values)):
                mapping = {k.value: v.id for k, v in zip(value.keys, value.values)}
            else:
                mapping = None
    if found and mapping is None:
        mapping = _imported_scenarios(locustfile)
    if mapping is None:
        classes = {node.name for node in tree.body if isinstance(node, ast.ClassDef)}
        classes |= {alias.asname or alias.name for node in tree.body if isinstance(node, ast.ImportFrom)
                    for alias in node.names}
        mapping = {s: f"{s.capitalize()}User" for s in scenarios if f"{s.capitalize()}User" in classes}
    unknown = [s for s in scenarios if s not in mapping]
    if unknown:
        raise UsageError(f"{locustfile} has no scenario {', '.join(unknown)} (it has: {', '.join(mapping) or 'none'})")
    return [mapping[s] for s in scenarios]


def _imported_scenarios(locustfile: Path) -> dict[str, str]:
    code = ("import json, runpy, sys\n"
            "print(json.dumps({k: v.__name__ for k, v in runpy.run_path(sys.argv[1])['SCENARIOS'].items()}))")
    result = subprocess.run([sys.executable, "-c", code, str(locustfile)], capture_output=True, text=True,
                            cwd=ROOT, timeout=300)
    if result.returncode != 0:
        raise UsageError(f"could not read SCENARIOS of {locustfile}:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def parse_timespan(text: str) -> int:
    """Seconds of a locust run time: ``90``, ``60s``, ``2m``, ``1h30m``, ``1h2m3s``."""
    text = str(text).strip().lower()
    if re.fullmatch(r"\d+", text):
        return int(text)
    match = re.fullmatch(r"(?:(\d+)h)?\s*(?:(\d+)m)?\s*(?:(\d+)s)?", text)
    if not text or not match:
        raise UsageError(f"bad run time {text!r} (e.g. 90, 60s, 2m, 1h30m)")
    hours, minutes, seconds = (int(part or 0) for part in match.groups())
    return hours * 3600 + minutes * 60 + seconds


def probe(host: str, timeout_s: float = 3.0) -> int | None:
    """The status of ``GET {host}/readyz``; None when nothing listens there."""
    try:
        return httpx.get(f"{host.rstrip('/')}/readyz", timeout=timeout_s, trust_env=False).status_code
    except (httpx.ConnectError, httpx.ConnectTimeout):
        return None
    except httpx.HTTPError as error:
        raise UsageError(f"{host} does not answer /readyz: {error!r}") from None


BACKENDS = ("embedded", "openvino", "triton")


@dataclass
class Target:
    """The service a run measures: its URL, whether it was started here, and then its process
    (``service``), the supervised tritonserver in front of which it runs (``triton``, Triton back
    end) and the per-role memory sampler of both."""

    url: str
    started: bool
    backend: str | None = None
    service: LocalService | None = None
    triton: SupervisedTriton | None = None
    sampler: RoleRssSampler | None = None

    def roots(self) -> list[int]:
        """The pids whose trees make up the service now (tritonserver's changes on a restart)."""
        pids = [self.service.process.pid] if self.service else []
        return pids + ([self.triton.server.process.pid] if self.triton else [])


@contextmanager
def service_at(host: str, workdir: Path, repository: Path = DEFAULT_REPOSITORY, ready_timeout_s: float = 300,
               backend: str = "embedded", env: Mapping[str, str] | None = None) -> Iterator[Target]:
    """The service at ``host``: the one answering there (waited for while it loads: 503), or one
    started on that loopback port and stopped, its whole tree, on exit: on the ``embedded`` (ONNX
    Runtime) or ``openvino`` back end, or on ``triton`` in front of a tritonserver of
    ``repository`` restarted whenever it dies (``SupervisedTriton``). ``env``: more settings of a
    service started here."""
    if backend not in BACKENDS:
        raise UsageError(f"unknown back end {backend!r} (known: {', '.join(BACKENDS)})")
    status = probe(host)
    if status == 200:
        yield Target(host.rstrip("/"), started=False)
        return
    if status is not None:
        deadline = time.monotonic() + ready_timeout_s
        while status == 503 and time.monotonic() < deadline:
            time.sleep(1)
            status = probe(host)
        if status != 200:
            raise UsageError(f"{host}/readyz answers {status}: not a ready medseg-serve")
        yield Target(host.rstrip("/"), started=False)
        return
    parts = urlsplit(host)
    if parts.hostname not in LOOPBACK:
        raise UsageError(f"nothing answers at {host}; start the service there (a service is started here "
                         "only for a loopback host)")
    print(f"load: nothing answers at {host}; starting the service on {backend} (log: {workdir / 'serve.log'})",
          flush=True)
    with ExitStack() as stack:
        triton = None
        settings = {"MEDSEG_BACKEND": backend, **(env or {})}
        if backend == "triton":
            triton = stack.enter_context(supervised_triton(Path(repository).resolve(), workdir / "triton",
                                                           ready_timeout_s=ready_timeout_s))
            settings = {"TRITON_URLS": triton.server.grpc_url, **settings}
        service = stack.enter_context(local_service(repository, workdir, env=settings,
                                                    ready_timeout_s=ready_timeout_s, port=parts.port or 80))
        target = Target(service.url, started=True, backend=backend, service=service, triton=triton)
        target.sampler = RoleRssSampler(target.roots)
        try:
            yield target
        finally:
            target.sampler.stop()
    print("load: service stopped", flush=True)


# ----------------------------------------------------------------------------------------------
# The run


def run_folder(out: Path) -> Path:
    """``out/<YYYYmmdd-HHMMSS>`` (``-2``, ``-3``... when a run already took that second)."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    folder, n = Path(out) / stamp, 1
    while True:
        try:
            folder.mkdir(parents=True)
            return folder
        except FileExistsError:
            n += 1
            folder = Path(out) / f"{stamp}-{n}"


def locust_command(locustfile: Path, classes: Sequence[str], host: str, users: int, rate: float, run_time: str,
                   folder: Path) -> list[str]:
    return [
        sys.executable, "-m", "locust", "-f", str(locustfile), "--headless",
        "-u", str(users), "-r", f"{rate:g}", "-t", run_time, "--host", host,
        "--csv", str(folder / "stats"), "--csv-full-history", "--html", str(folder / "report.html"),
        "--json-file", str(folder / "stats"),  # stats.json: final counts and histograms
        "--only-summary", "--exit-code-on-error", "0",  # failures are judged by the SLOs
        *classes,
    ]


def run_locust(command: Sequence[str], log_path: Path, timeout_s: float) -> int:
    """Run locust with everything it writes going to ``log_path``; its exit status (124 after
    ``timeout_s``, when it is interrupted and then killed)."""
    with log_path.open("ab") as log:
        process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            return process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            return 124
        except KeyboardInterrupt:
            process.wait(timeout=60)  # it got the SIGINT too and writes its report
            raise


def locust_exceptions(path: Path) -> int:
    """How many times the locustfile's code raised (``stats_exceptions.csv``)."""
    if not path.exists():
        return 0
    with path.open(newline="") as handle:
        return sum(int(row.get("Count") or 0) for row in csv.DictReader(handle))


def parse_args(argv: Sequence[str] | None, environ: Mapping[str, str]) -> argparse.Namespace:
    def env(name: str, default: str) -> str:
        return environ.get(name, "").strip() or default

    parser = argparse.ArgumentParser(prog="python -m load.load_run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default=env("LOAD_HOST", "http://127.0.0.1:3000"), help="LOAD_HOST")
    parser.add_argument("--time", default=env("LOAD_TIME", "60s"), help="LOAD_TIME: locust run time (60s, 2m, 1h30m)")
    parser.add_argument("--users", type=int, default=env("LOAD_USERS", "8"), help="LOAD_USERS")
    parser.add_argument("--rate", type=float, default=env("LOAD_RATE", "0"),
                        help="LOAD_RATE: users started per second (default: all of them in the first second)")
    parser.add_argument("--scenarios", default=env("LOAD_SCENARIOS", "segment"), help="LOAD_SCENARIOS: comma list")
    parser.add_argument("--slo", type=Path, default=Path(env("LOAD_SLO", str(DEFAULT_SLO))), help="LOAD_SLO")
    parser.add_argument("--out", type=Path, default=Path(env("LOAD_OUT", str(DEFAULT_OUT))), help="LOAD_OUT")
    parser.add_argument("--locustfile", type=Path, default=Path(env("LOAD_LOCUSTFILE", str(DEFAULT_LOCUSTFILE))),
                        help="LOAD_LOCUSTFILE")
    parser.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY,
                        help="model repository of a service started here")
    parser.add_argument("--backend", choices=BACKENDS, default=env("LOAD_BACKEND", "embedded"),
                        help="LOAD_BACKEND: back end of a service started here")
    args = parser.parse_args(argv)
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    if not args.scenarios:
        parser.error("no scenario named")
    if args.users < 1:
        parser.error("users must be at least 1")
    args.rate = args.rate if args.rate > 0 else float(args.users)
    args.locustfile, args.out, args.slo = args.locustfile.resolve(), args.out.resolve(), args.slo.resolve()
    return args


def print_summary(summary: Mapping, folder: Path) -> None:
    print(f"load: {summary['users']} users, {summary['duration_s']} s against {summary['host']}; run folder {folder}")
    columns = "".join(f"{c:>9}" for c in ("requests", "fail", "p50 ms", "p95 ms", "p99 ms", "max ms", "req/s"))
    print(f"  {'scenario / request':44}{columns}")
    for scenario, figures in summary["scenarios"].items():
        for label, row in ((scenario, figures), *((f"  {n}", r) for n, r in figures["by_name"].items())):
            cells = [_cell(row.get(k)) for k in ("p50_ms", "p95_ms", "p99_ms", "max_ms")]
            values = "".join(f"{v:>9}" for v in (row["requests"], row["failures"], *cells, f"{row['rps']:.2f}"))
            print(f"  {label[:44]:44}{values}")
        if figures.get("dropped"):
            print(f"  {'':44} dropped {figures['dropped']} ({figures['dropped_rate']:.1%})")
    if summary.get("service_rss_mb"):
        rss = summary["service_rss_mb"]
        print(f"  service RSS MB: start {rss['start']}, peak {rss['peak']}, end {rss['end']}")


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def run_scenarios(folder: Path, url: str, locustfile: Path, scenarios: Sequence[str], classes: Sequence[str],
                  users: int, rate: float, run_time: str) -> tuple[int, float, datetime]:
    """One locust run into ``folder`` against ``url``: (its exit status, wall seconds, start)."""
    command = locust_command(locustfile, classes, url, users, rate, run_time, folder)
    started, wall = datetime.now().astimezone(), time.monotonic()
    code = run_locust(command, folder / "locust.log", timeout_s=parse_timespan(run_time) + 300)
    return code, time.monotonic() - wall, started


def summarize_folder(folder: Path, scenarios: Sequence[str]) -> dict[str, dict] | None:
    """The per-scenario summary of a run folder: from ``stats.json`` (final, with histograms),
    else from ``stats_stats.csv``; None when locust wrote neither."""
    stats_json, stats_csv = folder / "stats.json", folder / "stats_stats.csv"
    if stats_json.exists():
        return summarize_scenarios(read_stats_json(stats_json), scenarios)
    if stats_csv.exists():
        return summarize_scenarios(read_stats_csv(stats_csv), scenarios)
    return None


def judge(folder: Path, scenarios: Mapping[str, Mapping], slo: Mapping[str, Mapping]) -> dict[str, object]:
    """The SLO verdict; the locustfile raising (``stats_exceptions.csv``) is a violation too: the
    run did not measure what it claims."""
    verdict = evaluate_slo(scenarios, slo)
    exceptions = locust_exceptions(folder / "stats_exceptions.csv")
    if exceptions:
        verdict["violations"].append({"scenario": None, "name": None, "metric": "locust_exceptions",
                                      "limit": 0, "value": exceptions})
        verdict["passed"] = False
    return verdict


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    environ = os.environ if environ is None else environ
    args = parse_args(argv, environ)
    try:
        run_s = parse_timespan(args.time)
        slo = load_slo(args.slo)
        classes = scenario_classes(args.locustfile, args.scenarios)
    except UsageError as error:
        print(f"load: {error}", file=sys.stderr)
        return EXIT_USAGE
    folder = run_folder(args.out)
    log_path = folder / "locust.log"
    try:
        with service_at(args.host, folder / "service", args.repository, backend=args.backend) as target:
            print(f"load: {', '.join(args.scenarios)} ({', '.join(classes)}): {args.users} users "
                  f"({args.rate:g}/s) for {args.time} against {target.url}; locust log {log_path}", flush=True)
            code, wall, started = run_scenarios(folder, target.url, args.locustfile, args.scenarios, classes,
                                                args.users, args.rate, args.time)
    except UsageError as error:
        print(f"load: {error}", file=sys.stderr)
        _remove_if_empty(folder)
        return EXIT_USAGE
    except RuntimeError as error:  # the service did not start
        print(f"load: {error}", file=sys.stderr)
        return EXIT_LOCUST
    except KeyboardInterrupt:
        print(f"load: interrupted; what locust wrote is in {folder}", file=sys.stderr)
        return 130

    scenarios = summarize_folder(folder, args.scenarios) if code == 0 else None
    if scenarios is None:
        tail = log_path.read_text(errors="replace")[-3000:] if log_path.exists() else ""
        print(f"load: locust exited with {code}{'' if code else ' and wrote no stats'}; "
              f"the end of {log_path}:\n{tail}", file=sys.stderr)
        return EXIT_LOCUST
    verdict = judge(folder, scenarios, slo)
    summary = {
        "host": target.url,
        "started": started.isoformat(timespec="seconds"),
        "duration_s": run_s,
        "locust_wall_s": round(wall, 1),
        "users": args.users,
        "spawn_rate": args.rate,
        "user_classes": dict(zip(args.scenarios, classes)),
        "scenarios": scenarios,
        "slo": {"file": str(args.slo), **verdict},
        "service_started": target.started,
        "service_rss_mb": target.sampler.figures() if target.sampler else None,
    }
    if target.sampler:
        target.sampler.write_csv(folder / "service_rss.csv")
    history_path = folder / "stats_stats_history.csv"
    if history_path.exists():
        plot_latency(scenario_history(history_path, args.scenarios), folder / "latency.png",
                     title=f"{args.users} users, {args.time}, {target.url} ({started:%Y-%m-%d %H:%M})")
    (folder / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")

    print_summary(summary, folder)
    if verdict["passed"]:
        print(f"load: SLOs held ({args.slo})")
        return EXIT_OK
    print(f"load: SLO violated ({args.slo}):")
    for violation in verdict["violations"]:
        if violation["metric"] == "locust_exceptions":
            print(f"  the locustfile raised {violation['value']} times (stats_exceptions.csv)")
        else:
            print(f"  {describe_violation(violation)}")
    return EXIT_SLO


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass


if __name__ == "__main__":
    sys.exit(main())
