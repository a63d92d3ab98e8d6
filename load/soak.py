"""Soak run (issue 14 §4): a fixed locust load for a long time, the resident memory of every service
process sampled, judged flat or not.

    python -m load soak                               # the full-length run: 30 min, 4 users of segment, embedded
    python -m load soak --time 1h --backend triton    # in front of a tritonserver
    python -m load.soak --time 90s --users 2 --warmup 45 --tolerance-mb 40   # the short soak CI runs

It always starts its own service (``bentoml serve`` on a free loopback port, embedded or in front of
a supervised tritonserver: ``load.load_run.service_at``), since it samples that service's process
tree every second by role (``load.process_memory``: api, worker, decoders, supervisor, tritonserver,
triton stubs). Options default from ``SOAK_*`` variables (``SOAK_TIME``, ``SOAK_USERS``,
``SOAK_SCENARIOS``, ``SOAK_BACKEND``, ``SOAK_RATE``, ``SOAK_OUT``, ``SOAK_WARMUP``,
``SOAK_MAX_SLOPE_MB_PER_H``, ``SOAK_TOLERANCE_MB``; ``LOAD_LOCUSTFILE``).

The run folder ``<out>/<YYYYmmdd-HHMMSS>/`` (default ``build/soak``) holds locust's files as
``make load`` writes them, ``memory.csv`` (MB per role and in total, every second, seconds since the
service was ready), ``memory.png`` (a panel per role: RSS, the fitted line over the judged window,
the warm-up shaded), ``latency.png``, ``service/`` (the service's log) and ``summary.json``
(``scenarios``, ``memory`` per role, ``errors``, ``verdict``, the window and bounds used).

What "flat" means (``judge_memory``, a pure function). The judged window runs from the load's start
plus the warm-up (default: 10 % of the run, at least 300 s, at most half the run) to the load's
end. For each role:

- ``slope_mb_per_h``: least-squares slope over the judged window;
- ``rise_mb``: median of the window's last fifth minus median of its first fifth (robust to the
  short spikes of a request's buffers).

A role present in every judged sample (api, worker, supervisor, tritonserver, triton stubs) is
*judged by its trend*: it leaks when ``slope_mb_per_h > max_slope`` **and** ``rise_mb >
tolerance_mb``. RSS moves in steps (an allocator arena's top, a bigger batch): in a short window
one step makes a steep slope, so the slope alone would cry wolf; a rise within the tolerance is
noise, and a long run's leak exceeds both. A window of T seconds can only show leaks faster than
``max(max_slope, tolerance_mb / (0.8 T))``: with the defaults 50 MB/h for a 30-min run (4 MB over
20 min is 12 MB/h), but 400 MB/h over the 45 s a 90-s run judges.

``decoders`` (the decode pool's processes, each replaced after 200 decodes: the role's RSS dips and
jumps as they come and go) and any role absent from some judged sample are *judged by their peak*:
the peak over the window's last fifth must not exceed the peak up to the end of its first fifth
(warm-up included) by more than 10 % plus ``tolerance_mb``; a role not seen by then is not judged.
A leak in a decoder is cut by its replacement; one that outlives it raises the peak.

``steady total`` (the sum of the trend-judged roles) is judged by its trend; ``total`` (every
process, decoders included) is reported with the same figures but not judged: the decoders'
recycling dips it by up to 70 MB for a second, noise that would drown a leak elsewhere.

Measured here (2 cores, another session's load tests running beside it: noisy), segment scenario,
embedded unless said. Under load the api and worker RSS climb for the first 3-5 minutes (+130 MB
api, +240 MB worker over idle at 4 users; in /proc/PID/smaps, anonymous mappings at 64 MB-aligned
addresses, glibc's thread-arena heaps, filling up to their high-water mark), fast and near-linear
at first, then level off:

- ``python -m load.soak`` (the default: 30 min, 4 users, 25 req/s, 44,680 requests, 0 failures),
  judged from 300 s: api +18.8 MB/h (rise 6.9 MB, a creep that slows: +8.0 MB/h from 900 s,
  +4.9 from 1200 s), worker +10.8 MB/h (rise 1.7 MB; one +8 MB step at 1720 s), steady total
  +29.6 MB/h (rise 8.6 MB), decoders' peak 281.6 MB all through: passed.
- ``--time 15m`` (4 users, 20 req/s): from 300 s to the end api +13.7 MB/h (rise 1.8 MB), worker
  +4.5 MB/h (0.6 MB), steady total +18.1 MB/h (2.4 MB); from 450 s api +11.8, worker +1.4 MB/h;
  decoders' peak 243.2 MB all through (dips to 170 MB on recycling). From 180 s: api +20.2 MB/h
  (rise 3.7 MB): hence the 300 s warm-up.
- ``--time 5m`` (4 users): judged from 150 s, worker +477 MB/h, rise 14.1 MB (two steps, +5 and
  +7 MB at 200 and 235 s): five minutes are still warm-up here.
- ``--time 2m`` (4 users): from 60 s api +1078 MB/h (rise 13 MB), worker +2210 MB/h (28.6 MB).
- ``--time 3m`` / ``4m`` / ``2m`` at 2 users, 45-90 s (the CI window): api +580..720 MB/h (rise
  5.7-7.8 MB), worker +1160..1200 MB/h (11.6-12.2 MB), steady total 18-20 MB; 1 user for 6 min:
  api and worker +46 MB/h from 180 s (rises 1.3 and 1.8 MB).
- ``--time 3m --backend triton`` (4 users, 23 req/s), from 90 s: api +644 MB/h (13 MB), worker
  +853 MB/h (18 MB; it runs no ONNX Runtime there), tritonserver -387 MB/h (a sawtooth of
  95-106 MB), triton stubs +1.7 MB/h (658 MB, level from 78 s).

So the defaults: a warm-up of at least 300 s (from 180 s the api still crept 20 MB/h);
``max_slope`` 50 MB/h (1.7 times the steady total's 29.6 MB/h in the 30-minute run, 2.7 times its
worst role; 1.2 GB a day); ``tolerance_mb`` 4 MB (twice the 1.8 MB a settled role rose over the
10 judged minutes of the 15-minute run; in long windows the slope is the gate, in short ones the
rise). A run shorter than about 15 minutes judges the tail of the warm-up and may fail by them.
The CI soak (90 s, 2 users) states its own tolerance, 40 MB (twice the 18-20 MB the service's
first minutes give; it then sees leaks over 4 GB/h, a decoded image kept per request): a
gross-leak guard, not a flatness proof.

Exit status: 0 zero failed requests, zero locustfile exceptions and every judged role flat; 1 an
error or a role that is not flat (printed); 2 bad arguments; 3 the service did not start, or locust
did not run to the end or wrote no stats.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from load.load_run import (
    BACKENDS,
    DEFAULT_LOCUSTFILE,
    DEFAULT_REPOSITORY,
    EXIT_LOCUST,
    EXIT_OK,
    EXIT_SLO,
    EXIT_USAGE,
    UsageError,
    locust_exceptions,
    parse_timespan,
    plot_latency,
    print_summary,
    run_folder,
    run_scenarios,
    scenario_classes,
    scenario_history,
    service_at,
    summarize_folder,
)
from load.local_service import ROOT, free_port

DEFAULT_OUT = ROOT / "build" / "soak"
PEAK_ROLES = ("decoders",)  # judged by their peak, whatever their presence
TOTAL, STEADY_TOTAL = "total", "steady total"
PART = 0.2  # the fraction of the judged window at each end whose medians give the rise
PEAK_MARGIN = 0.10  # a peak-judged role's late peak may exceed its earlier one by this share (+ tolerance)

# From the measurements in the module docstring, with a margin.
DEFAULT_MAX_SLOPE_MB_PER_H = 50.0
DEFAULT_TOLERANCE_MB = 4.0


@dataclass(frozen=True)
class Bounds:
    """What flat means: the largest slope of a trend-judged role (MB/h) and the largest rise,
    or peak excess, taken for noise (MB)."""

    max_slope_mb_per_h: float = DEFAULT_MAX_SLOPE_MB_PER_H
    tolerance_mb: float = DEFAULT_TOLERANCE_MB


def default_warmup_s(run_s: float) -> float:
    """Seconds of the run excluded from the judgement: 10 % of it, at least 300 s, at most half."""
    return min(max(300.0, 0.1 * run_s), run_s / 2)


# ----------------------------------------------------------------------------------------------
# The judgement: pure functions over (times s, MB series)


def slope_per_h(times: Sequence[float], values: Sequence[float]) -> float:
    """Least-squares slope of ``values`` against ``times`` (s), in units per hour; 0 for fewer
    than two distinct times."""
    if len(times) < 2:
        return 0.0
    mean_t, mean_v = statistics.fmean(times), statistics.fmean(values)
    spread = sum((t - mean_t) ** 2 for t in times)
    if spread == 0:
        return 0.0
    return 3600.0 * sum((t - mean_t) * (v - mean_v) for t, v in zip(times, values)) / spread


def rise(values: Sequence[float], part: float = PART) -> float:
    """Median of the last ``part`` of ``values`` minus the median of the first (at least one
    sample each)."""
    n = max(1, round(len(values) * part))
    return statistics.median(values[-n:]) - statistics.median(values[:n])


def _window(times: Sequence[float], window: tuple[float, float]) -> list[int]:
    return [i for i, t in enumerate(times) if window[0] <= t <= window[1]]


def judge_trend(times: Sequence[float], values: Sequence[float], window: tuple[float, float],
                bounds: Bounds) -> dict[str, object]:
    """Figures of a role judged by its trend over ``window`` (s): start, end and peak MB, slope
    MB/h, rise MB, and ``flat`` (False only when the slope and the rise both exceed their bounds)."""
    judged = _window(times, window)
    t = [times[i] for i in judged]
    v = [values[i] for i in judged]
    if len(v) < 2:
        return {"judged_by": "trend", "samples": len(v), "flat": None, "why": "fewer than 2 samples in the window"}
    slope, grown = slope_per_h(t, v), rise(v)
    leaking = slope > bounds.max_slope_mb_per_h and grown > bounds.tolerance_mb
    return {
        "judged_by": "trend",
        "samples": len(v),
        "start_mb": round(v[0], 1),
        "end_mb": round(v[-1], 1),
        "peak_mb": round(max(v), 1),
        "slope_mb_per_h": round(slope, 2),
        "rise_mb": round(grown, 2),
        "flat": not leaking,
    }


def judge_peak(times: Sequence[float], values: Sequence[float], window: tuple[float, float],
               bounds: Bounds) -> dict[str, object]:
    """Figures of a role judged by its peak: the peak over the window's last fifth against the
    peak up to the end of its first fifth (warm-up included), where the role was present (> 0).
    ``flat`` is None when the role was not present by then."""
    judged = _window(times, window)
    v = [values[i] for i in judged]
    if len(v) < 2:
        return {"judged_by": "peak", "samples": len(v), "flat": None, "why": "fewer than 2 samples in the window"}
    n = max(1, round(len(v) * PART))
    early = [x for x in values[:judged[n - 1] + 1] if x > 0]
    late_peak = max(v[-n:])
    figures: dict[str, object] = {
        "judged_by": "peak",
        "samples": len(v),
        "present": round(sum(1 for x in v if x > 0) / len(v), 3),
        "start_mb": round(v[0], 1),
        "end_mb": round(v[-1], 1),
        "peak_mb": round(max(v), 1),
        "slope_mb_per_h": round(slope_per_h([times[i] for i in judged], v), 2),
        "late_peak_mb": round(late_peak, 1),
    }
    if not early:
        return {**figures, "flat": None, "why": "not present by the end of the window's first fifth"}
    limit = max(early) * (1 + PEAK_MARGIN) + bounds.tolerance_mb
    return {**figures, "early_peak_mb": round(max(early), 1), "peak_limit_mb": round(limit, 1),
            "flat": late_peak <= limit}


def resident_roles(series: Mapping[str, Sequence[float]]) -> list[str]:
    """The roles of ``series`` that held memory at some sample, ``"total"`` apart (a process caught
    between its exit and its reaping, a zombie, reads as a role of 0 MB: nothing to judge)."""
    return [role for role in series if role != TOTAL and max(series[role], default=0.0) > 0]


def judge_memory(times: Sequence[float], series: Mapping[str, Sequence[float]], window: tuple[float, float],
                 bounds: Bounds = Bounds()) -> dict[str, dict]:
    """Per role of ``series`` (MB per sample, 0 where absent; ``"total"`` their sum), its figures
    and ``flat`` (True, False, or None: not judged), over the judged ``window`` (s, in ``times``'
    clock). Trend-judged: roles present in every judged sample and not in PEAK_ROLES; peak-judged:
    the others. ``"steady total"``: the sum of the trend-judged roles, judged by its trend; the
    real ``"total"`` is reported, its trend figures informative only (``flat`` None)."""
    judged = _window(times, window)
    roles = resident_roles(series)
    steady = [role for role in roles if role not in PEAK_ROLES and all(series[role][i] > 0 for i in judged)]
    memory = {}
    for role in roles:
        judge = judge_trend if role in steady else judge_peak
        memory[role] = judge(times, series[role], window, bounds)
    steady_sum = [sum(series[role][i] for role in steady) for i in range(len(times))]
    memory[STEADY_TOTAL] = {**judge_trend(times, steady_sum, window, bounds), "roles": steady}
    if TOTAL in series:
        memory[TOTAL] = {**judge_trend(times, series[TOTAL], window, bounds), "flat": None,
                         "why": "informative: judged as 'steady total' (decoders' recycling apart)"}
    return memory


def memory_violations(memory: Mapping[str, Mapping], bounds: Bounds) -> list[dict]:
    """One violation per role judged not flat: the figures that broke its bound."""
    violations = []
    for role, figures in memory.items():
        if figures.get("flat") is not False:
            continue
        if figures["judged_by"] == "trend":
            violations.append({"check": "memory", "role": role, "metric": "slope_mb_per_h and rise_mb",
                               "value": [figures["slope_mb_per_h"], figures["rise_mb"]],
                               "limit": [bounds.max_slope_mb_per_h, bounds.tolerance_mb]})
        else:
            violations.append({"check": "memory", "role": role, "metric": "late_peak_mb",
                               "value": figures["late_peak_mb"], "limit": figures["peak_limit_mb"]})
    return violations


def error_figures(scenarios: Mapping[str, Mapping], exceptions: int) -> dict[str, object]:
    """Failed requests in all and per scenario, and the locustfile's exceptions."""
    return {
        "failures": sum(int(figures["failures"]) for figures in scenarios.values()),
        "requests": sum(int(figures["requests"]) for figures in scenarios.values()),
        "by_scenario": {name: int(figures["failures"]) for name, figures in scenarios.items()},
        "locust_exceptions": exceptions,
    }


def soak_verdict(errors: Mapping[str, object], memory: Mapping[str, Mapping], bounds: Bounds) -> dict[str, object]:
    """Passed when no request failed, the locustfile never raised, requests were made and every
    judged role is flat."""
    violations: list[dict] = []
    if not errors["requests"]:
        violations.append({"check": "requests", "value": 0, "limit": "> 0"})
    for key in ("failures", "locust_exceptions"):
        if errors[key]:
            violations.append({"check": key, "value": errors[key], "limit": 0})
    violations += memory_violations(memory, bounds)
    return {"passed": not violations, "violations": violations}


# ----------------------------------------------------------------------------------------------
# The plot


def plot_memory(times: Sequence[float], series: Mapping[str, Sequence[float]], memory: Mapping[str, Mapping],
                load: tuple[float, float], window: tuple[float, float], path: Path, title: str = "") -> None:
    """A panel per role (its own MB scale): RSS against time, the least-squares line over the
    judged window (trend-judged roles), the warm-up and the time outside the load shaded, the
    verdict in the panel's title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steady_sum = [sum(series[r][i] for r in memory.get(STEADY_TOTAL, {}).get("roles", [])) for i in range(len(times))]
    panels = [(role, series[role]) for role in resident_roles(series)]
    panels += [(STEADY_TOTAL, steady_sum)] + ([(TOTAL, series[TOTAL])] if TOTAL in series else [])
    columns = 2
    rows = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(13, 2.9 * rows), squeeze=False)
    judged = _window(times, window)
    for ax, (role, values) in zip(axes.flat, panels):
        figures = memory.get(role, {})
        ax.plot(times, values, "-", lw=1, color="tab:blue", label="RSS")
        if figures.get("judged_by") == "trend" and len(judged) >= 2:
            t = [times[i] for i in judged]
            v = [values[i] for i in judged]
            slope = slope_per_h(t, v) / 3600
            mean_t, mean_v = statistics.fmean(t), statistics.fmean(v)
            ax.plot([t[0], t[-1]], [mean_v + slope * (t[0] - mean_t), mean_v + slope * (t[-1] - mean_t)],
                    "--", color="tab:red", lw=1.5, label="least squares")
        elif figures.get("peak_limit_mb") is not None:
            ax.axhline(figures["peak_limit_mb"], ls=":", color="tab:red", lw=1, label="peak limit")
        ax.axvspan(load[0], window[0], color="grey", alpha=0.2, label="warm-up")
        if times and times[0] < load[0]:
            ax.axvspan(times[0], load[0], color="grey", alpha=0.08)
        if times and times[-1] > load[1]:
            ax.axvspan(load[1], times[-1], color="grey", alpha=0.08, label="no load")
        flat = figures.get("flat")
        verdict = {True: "flat", False: "NOT FLAT", None: "not judged"}[flat]
        detail = f"{figures['slope_mb_per_h']:+.1f} MB/h" if "slope_mb_per_h" in figures else ""
        if figures.get("judged_by") == "trend" and "rise_mb" in figures:
            detail += f", rise {figures['rise_mb']:+.1f} MB"
        elif figures.get("judged_by") == "peak":
            detail += ", by peak"
        ax.set_title(f"{role}: {detail} - {verdict}", fontsize=10, color="tab:red" if flat is False else "black")
        ax.set_ylabel("RSS (MB)")
        ax.ticklabel_format(axis="y", useOffset=False, style="plain")
        low, high = min(values, default=0.0), max(values, default=0.0)
        if high - low < 2:  # a flat line: a scale of a few MB, not of rounding errors
            ax.set_ylim(low - 1, high + 1)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=7)
        if times:
            ax.set_xlim(times[0], times[-1])
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for column in range(columns):  # under the lowest panel of each column
        shown = [ax for ax in axes[:, column] if ax.get_visible()]
        if shown:
            shown[-1].set_xlabel("time since the service was ready (s)")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------
# The command


def add_arguments(parser: argparse.ArgumentParser, environ: Mapping[str, str] | None = None) -> None:
    """The soak's options on ``parser``, each defaulting from its environment variable."""
    environ = os.environ if environ is None else environ

    def env(name: str, default: str) -> str:
        return environ.get(name, "").strip() or default

    parser.add_argument("--time", default=env("SOAK_TIME", "30m"), help="SOAK_TIME: locust run time (90s, 5m, 1h)")
    parser.add_argument("--users", type=int, default=env("SOAK_USERS", "4"), help="SOAK_USERS")
    parser.add_argument("--scenarios", default=env("SOAK_SCENARIOS", "segment"), help="SOAK_SCENARIOS: comma list")
    parser.add_argument("--backend", choices=BACKENDS, default=env("SOAK_BACKEND", "embedded"), help="SOAK_BACKEND")
    parser.add_argument("--rate", type=float, default=env("SOAK_RATE", "0"),
                        help="SOAK_RATE: users started per second (default: all of them in the first second)")
    parser.add_argument("--out", type=Path, default=Path(env("SOAK_OUT", str(DEFAULT_OUT))), help="SOAK_OUT")
    parser.add_argument("--warmup", type=float, default=env("SOAK_WARMUP", "-1"),
                        help="SOAK_WARMUP: seconds of load not judged (default: 10%% of the run, 60 s to half of it)")
    parser.add_argument("--max-slope-mb-per-h", type=float,
                        default=env("SOAK_MAX_SLOPE_MB_PER_H", str(DEFAULT_MAX_SLOPE_MB_PER_H)),
                        help="SOAK_MAX_SLOPE_MB_PER_H: the largest memory slope of a role held flat")
    parser.add_argument("--tolerance-mb", type=float, default=env("SOAK_TOLERANCE_MB", str(DEFAULT_TOLERANCE_MB)),
                        help="SOAK_TOLERANCE_MB: the largest rise (or peak excess) of a role taken for noise")
    parser.add_argument("--locustfile", type=Path, default=Path(env("LOAD_LOCUSTFILE", str(DEFAULT_LOCUSTFILE))),
                        help="LOAD_LOCUSTFILE")
    parser.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY, help="the model repository served")


def _checked(args: argparse.Namespace) -> tuple[list[str], int, float, float]:
    """(scenarios, run seconds, spawn rate, warm-up seconds) of the arguments; UsageError."""
    scenarios = [s.strip() for s in str(args.scenarios).split(",") if s.strip()]
    if not scenarios:
        raise UsageError("no scenario named")
    if args.users < 1:
        raise UsageError("users must be at least 1")
    run_s = parse_timespan(args.time)
    if run_s < 10:
        raise UsageError(f"a soak of {run_s} s judges nothing: give at least 10 s")
    warmup_s = default_warmup_s(run_s) if args.warmup < 0 else args.warmup
    if warmup_s >= run_s:
        raise UsageError(f"the warm-up ({warmup_s:g} s) leaves nothing of the {run_s} s run to judge")
    return scenarios, run_s, (args.rate if args.rate > 0 else float(args.users)), warmup_s


def print_memory(memory: Mapping[str, Mapping]) -> None:
    """A row per role: its judged window's figures and verdict."""
    columns = ("start_mb", "end_mb", "peak_mb", "slope_mb_per_h", "rise_mb")
    print(f"  {'memory (judged window)':24}" + "".join(f"{c:>10}" for c in ("start MB", "end MB", "peak MB", "MB/h",
                                                                              "rise MB")) + "  verdict")
    for role, figures in memory.items():
        cells = "".join(f"{'-' if figures.get(k) is None else figures[k]:>10}" for k in columns)
        flat = figures.get("flat")
        if flat is None:
            verdict = f"not judged: {figures.get('why', '')}"
        else:
            verdict = "flat" if flat else "NOT FLAT"
            if figures.get("judged_by") == "peak":
                verdict += f" (late peak {figures['late_peak_mb']} MB, limit {figures['peak_limit_mb']})"
        print(f"  {role:24}{cells}  {verdict}")


def run(args: argparse.Namespace) -> int:
    """The soak of ``args`` (``add_arguments``): its exit status."""
    try:
        scenarios, run_s, rate, warmup_s = _checked(args)
        locustfile = Path(args.locustfile).resolve()
        classes = scenario_classes(locustfile, scenarios)
    except UsageError as error:
        print(f"soak: {error}", file=sys.stderr)
        return EXIT_USAGE
    bounds = Bounds(args.max_slope_mb_per_h, args.tolerance_mb)
    folder = run_folder(Path(args.out).resolve())
    host = f"http://127.0.0.1:{free_port()}"
    try:
        with service_at(host, folder / "service", Path(args.repository).resolve(), backend=args.backend) as target:
            print(f"soak: {', '.join(scenarios)}: {args.users} users for {args.time} on {args.backend} at {target.url}, "
                  f"warm-up {warmup_s:g} s; locust log {folder / 'locust.log'}", flush=True)
            load_from = time.monotonic() - target.sampler.started
            code, wall, started = run_scenarios(folder, target.url, locustfile, scenarios, classes, args.users, rate,
                                                args.time)
            load_to = time.monotonic() - target.sampler.started
    except UsageError as error:
        print(f"soak: {error}", file=sys.stderr)
        return EXIT_USAGE
    except RuntimeError as error:  # the service did not start
        print(f"soak: {error}", file=sys.stderr)
        return EXIT_LOCUST
    except KeyboardInterrupt:
        print(f"soak: interrupted; what was written is in {folder}", file=sys.stderr)
        return 130

    target.sampler.write_csv(folder / "memory.csv")
    summarized = summarize_folder(folder, scenarios) if code == 0 else None
    if summarized is None:
        log = folder / "locust.log"
        tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
        print(f"soak: locust exited with {code}{'' if code else ' and wrote no stats'}; the end of {log}:\n{tail}",
              file=sys.stderr)
        return EXIT_LOCUST

    times, series = target.sampler.series_mb()
    window = (load_from + warmup_s, load_to)
    memory = judge_memory(times, series, window, bounds)
    errors = error_figures(summarized, locust_exceptions(folder / "stats_exceptions.csv"))
    verdict = soak_verdict(errors, memory, bounds)
    title = f"{args.users} users of {', '.join(scenarios)}, {args.time} on {args.backend} ({started:%Y-%m-%d %H:%M})"
    plot_memory(times, series, memory, (load_from, load_to), window, folder / "memory.png", title=title)
    history = folder / "stats_stats_history.csv"
    if history.exists():
        plot_latency(scenario_history(history, scenarios), folder / "latency.png", title=title)
    summary = {
        "host": target.url,
        "backend": args.backend,
        "started": started.isoformat(timespec="seconds"),
        "duration_s": run_s,
        "locust_wall_s": round(wall, 1),
        "users": args.users,
        "spawn_rate": rate,
        "user_classes": dict(zip(scenarios, classes)),
        "scenarios": summarized,
        "memory_window_s": {"load": [round(load_from, 1), round(load_to, 1)],
                            "judged": [round(window[0], 1), round(window[1], 1)], "warmup_s": warmup_s,
                            "clock": "seconds since the service was ready (memory.csv's t_s)"},
        "bounds": {"max_slope_mb_per_h": bounds.max_slope_mb_per_h, "tolerance_mb": bounds.tolerance_mb},
        "memory": memory,
        "errors": errors,
        "verdict": verdict,
    }
    (folder / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")

    print_summary(summary, folder)
    print_memory(memory)
    if verdict["passed"]:
        print(f"soak: passed: no errors, memory flat (slope <= {bounds.max_slope_mb_per_h:g} MB/h or rise <= "
              f"{bounds.tolerance_mb:g} MB)")
        return EXIT_OK
    print("soak: FAILED:")
    for violation in verdict["violations"]:
        where = f" {violation['role']}" if "role" in violation else ""
        print(f"  {violation['check']}{where}: {violation.get('metric', '')} {violation['value']} "
              f"(limit {violation['limit']})")
    return EXIT_SLO


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m load.soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
