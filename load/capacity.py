"""``python -m load capacity``: the largest load a service holds within its SLOs, per scenario.

    python -m load capacity --scenario segment                       # embedded back end, started here
    python -m load capacity --scenario video pacs --backend triton
    python -m load capacity --scenario volume --host http://127.0.0.1:3000 --step-time 60s

For each scenario, locust runs headless at a number of users for ``--step-time`` (one locust run
per step, judged alone against the scenario's SLO of ``load/slo.json``). The search starts at
``--start`` users and doubles while the SLO holds, then halves the gap between the largest load
held and the smallest broken until they are adjacent (or ``--max-steps``): the capacity is the
largest number of users held. Loads are closed (each user waits for its answer), so users are
concurrent clients, and the requests per second they got is what the host delivers within the
SLO. One service serves every step (started here, on ``--backend``, when nothing answers at
``--host``); ``--warmup`` seconds of one user go first, unjudged. Between steps the service is
left to finish what it was doing (DICOMweb jobs included).

What a capacity means per scenario (``CAPACITY_UNITS``):
- segment: concurrent clients and requests/s (2-D slices, every output kind);
- volume: concurrent clients and volumes/s (and per hour);
- video: streams at LOAD_VIDEO_FPS (30) held with the SLO's dropped-frame limit, and answered
  frames/s;
- pacs: studies/hour: SEGs delivered per hour (``pacs: time-to-SEG`` successes over the step;
  studies still in flight when a step ends are not counted, so it is a lower bound), with
  concurrent PACS senders.

The run folder ``<out>/<YYYYmmdd-HHMMSS>/`` gets one folder per step (``<scenario>-<users>u/``:
locust's files as ``make load`` writes them), ``capacity.json`` (every step's figures and verdict,
and each scenario's capacity), ``capacity.png`` (latency and throughput against users, held steps
green, broken red) and, when the service was started here, ``service_rss.csv``.

Exit status: 0 a capacity was found for every scenario; 1 a scenario broke its SLO at the first
step (no load held); 2 bad arguments; 3 the service or locust failed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from load.load_run import (
    BACKENDS,
    DEFAULT_LOCUSTFILE,
    DEFAULT_REPOSITORY,
    DEFAULT_SLO,
    EXIT_LOCUST,
    EXIT_OK,
    EXIT_SLO,
    EXIT_USAGE,
    ROOT,
    UsageError,
    describe_violation,
    judge,
    load_slo,
    parse_timespan,
    run_folder,
    run_scenarios,
    scenario_classes,
    service_at,
    summarize_folder,
)

DEFAULT_OUT = ROOT / "build" / "capacity"
# The default step length per scenario: long enough for several of its cycles (a PACS study
# waits out the service's 10 s quiet period; a video user streams 10 s at a time).
STEP_TIME = {"segment": "30s", "volume": "30s", "video": "40s", "pacs": "90s"}
FRAME_SUFFIX = " frame"


@dataclass(frozen=True)
class CapacityUnit:
    """How a scenario's capacity is told: ``rate_name`` the unit of its throughput; ``per_hour``
    whether to give it per hour too; ``counted`` a request name whose successes are the unit
    (None: every request of the scenario; ``" frame"``: names ending so)."""

    rate_name: str
    per_hour: bool = False
    counted: str | None = None


CAPACITY_UNITS: dict[str, CapacityUnit] = {
    "segment": CapacityUnit("requests/s"),
    "volume": CapacityUnit("volumes/s", per_hour=True),
    "video": CapacityUnit("frames/s", counted=FRAME_SUFFIX),
    "pacs": CapacityUnit("studies/s", per_hour=True, counted="pacs: time-to-SEG"),
}


@dataclass
class Step:
    """One locust run of a scenario at ``users``: its figures, verdict and unit throughput."""

    scenario: str
    users: int
    held: bool
    duration_s: float
    requests: int
    failures: int
    p50_ms: float | None
    p95_ms: float | None
    rps: float
    dropped_rate: float | None
    throughput: float
    violations: list[str]
    folder: str


# ----------------------------------------------------------------------------------------------
# The search


def next_users(steps: Sequence[tuple[int, bool]], start: int, max_users: int) -> int | None:
    """The next load to try after ``steps`` ((users, held) in the order run), or None when the
    search is over: double from ``start`` while every load held (up to ``max_users``), then
    bisect between the largest load held and the smallest broken above it."""
    if not steps:
        return start
    held = [users for users, ok in steps if ok]
    broken = [users for users, ok in steps if not ok]
    best = max(held, default=0)
    above = [users for users in broken if users > best]
    if not above:
        if best >= max_users:
            return None
        return min(max_users, best * 2)
    ceiling = min(above)
    if ceiling - best <= 1:
        return None
    return (best + ceiling) // 2


def unit_throughput(scenario: str, figures: Mapping, duration_s: float) -> float:
    """The scenario's throughput in its unit (``CAPACITY_UNITS``): its successes per second of
    the step's requests window (first to last request, as ``rps``; ``duration_s`` when no rate)."""
    unit = CAPACITY_UNITS.get(scenario, CapacityUnit("requests/s"))
    if unit.counted is None:
        good = figures["requests"] - figures["failures"]
    else:
        good = sum(row["requests"] - row["failures"] for name, row in figures.get("by_name", {}).items()
                   if (name.endswith(unit.counted) if unit.counted.startswith(" ") else name == unit.counted))
    window = figures["requests"] / figures["rps"] if figures.get("rps") else duration_s
    return good / window if window > 0 else 0.0


def capacity_of(scenario: str, steps: Sequence[Step]) -> dict[str, object]:
    """The largest load held and its figures: ``users`` (concurrent clients; streams for video),
    throughput in the scenario's unit (and per hour), p95; None figures when nothing held."""
    unit = CAPACITY_UNITS.get(scenario, CapacityUnit("requests/s"))
    held = [step for step in steps if step.held]
    broken_above = [step.users for step in steps if not step.held and (not held or step.users > max(s.users for s in held))]
    if not held:
        return {"users": None, unit.rate_name: None, "first_broken_users": min(broken_above, default=None)}
    best = max(held, key=lambda step: (step.users, step.throughput))
    result: dict[str, object] = {"users": best.users, unit.rate_name: round(best.throughput, 3),
                                 "p50_ms": best.p50_ms, "p95_ms": best.p95_ms}
    if unit.rate_name != "requests/s":
        result["requests/s"] = round(best.rps, 3)
    if unit.per_hour:
        result[unit.rate_name.replace("/s", "/hour")] = round(best.throughput * 3600, 1)
    if scenario == "video":
        result["streams"] = best.users
        result["dropped_rate"] = best.dropped_rate
    result["first_broken_users"] = min(broken_above, default=None)
    return result


# ----------------------------------------------------------------------------------------------
# Running steps


def settle(url: str, timeout_s: float = 120.0) -> None:
    """Wait until the service has no DICOMweb job waiting, queued or running (a PACS step's
    studies finish before the next step starts), then a second for in-flight work to end."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            jobs = httpx.get(f"{url}/v1/jobs", params={"limit": 1000}, timeout=10, trust_env=False).json()["jobs"]
        except (httpx.HTTPError, ValueError, KeyError):
            break
        if not any(job.get("state") in ("waiting", "queued", "running") for job in jobs):
            break
        time.sleep(1)
    time.sleep(1)


def run_step(folder: Path, url: str, locustfile: Path, scenario: str, user_class: str, users: int, run_time: str,
             slo: Mapping[str, Mapping]) -> Step:
    """One judged locust run of ``scenario`` at ``users`` into ``folder``; RuntimeError when
    locust failed or wrote nothing."""
    folder.mkdir(parents=True)
    code, _, _ = run_scenarios(folder, url, locustfile, [scenario], [user_class], users, float(users), run_time)
    summary = summarize_folder(folder, [scenario]) if code == 0 else None
    if summary is None:
        tail = (folder / "locust.log").read_text(errors="replace")[-2000:] if (folder / "locust.log").exists() else ""
        raise RuntimeError(f"locust exited with {code} at {users} users of {scenario}:\n{tail}")
    figures = summary[scenario]
    verdict = judge(folder, {scenario: figures}, {scenario: slo[scenario]})
    duration = float(parse_timespan(run_time))
    return Step(
        scenario=scenario, users=users, held=bool(verdict["passed"]), duration_s=duration,
        requests=figures["requests"], failures=figures["failures"], p50_ms=figures["p50_ms"],
        p95_ms=figures["p95_ms"], rps=figures["rps"], dropped_rate=figures["dropped_rate"],
        throughput=unit_throughput(scenario, figures, duration),
        violations=[describe_violation(v) if v["metric"] != "locust_exceptions" else
                    f"the locustfile raised {v['value']} times" for v in verdict["violations"]],
        folder=folder.name,
    )


def search(folder: Path, url: str, locustfile: Path, scenario: str, user_class: str, slo: Mapping[str, Mapping],
           step_time: str, start: int, max_users: int, max_steps: int) -> list[Step]:
    """The capacity search of one scenario (``next_users``), each step printed as it ends."""
    steps: list[Step] = []
    while len(steps) < max_steps:
        users = next_users([(s.users, s.held) for s in steps], start, max_users)
        if users is None:
            break
        step = run_step(folder / f"{scenario}-{users}u", url, locustfile, scenario, user_class, users, step_time, slo)
        steps.append(step)
        print(f"capacity: {scenario} {users:>4} users: {'held  ' if step.held else 'BROKEN'} "
              f"p50 {_cell(step.p50_ms)} p95 {_cell(step.p95_ms)} ms, {step.rps:.2f} req/s, "
              f"{step.throughput:.3f} {CAPACITY_UNITS.get(scenario, CapacityUnit('requests/s')).rate_name}"
              f"{f', dropped {step.dropped_rate:.1%}' if step.dropped_rate else ''}"
              f"{'' if step.held else '  (' + '; '.join(step.violations) + ')'}", flush=True)
        settle(url)
    return steps


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


# ----------------------------------------------------------------------------------------------
# Report


def plot_capacity(steps_by_scenario: Mapping[str, Sequence[Step]], slo: Mapping[str, Mapping], path: Path,
                  title: str = "") -> None:
    """One row per scenario: p50 / p95 against users (the SLO's p95 limit dashed) and throughput
    in the scenario's unit against users; held steps green, broken red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    scenarios = list(steps_by_scenario)
    fig, axes = plt.subplots(len(scenarios), 2, figsize=(12, 3.6 * len(scenarios)), squeeze=False)
    for row, scenario in enumerate(scenarios):
        steps = sorted(steps_by_scenario[scenario], key=lambda s: s.users)
        latency, rate = axes[row]
        users = [s.users for s in steps]
        colours = ["tab:green" if s.held else "tab:red" for s in steps]
        latency.plot(users, [math.nan if s.p50_ms is None else s.p50_ms for s in steps], "-", color="grey", label="p50")
        latency.plot(users, [math.nan if s.p95_ms is None else s.p95_ms for s in steps], "--", color="black", label="p95")
        latency.scatter(users, [math.nan if s.p95_ms is None else s.p95_ms for s in steps], c=colours, zorder=3)
        limit = slo.get(scenario, {}).get("p95_ms")
        if isinstance(limit, (int, float)):
            latency.axhline(limit, color="tab:red", linestyle=":", label=f"SLO p95 {limit:g} ms")
        latency.set_xlabel("users")
        latency.set_ylabel("response time (ms)")
        latency.set_title(f"{scenario}: latency per step")
        unit = CAPACITY_UNITS.get(scenario, CapacityUnit("requests/s")).rate_name
        rate.plot(users, [s.throughput for s in steps], "-", color="tab:blue")
        rate.scatter(users, [s.throughput for s in steps], c=colours, zorder=3)
        rate.set_xlabel("users")
        rate.set_ylabel(unit)
        rate.set_title(f"{scenario}: throughput per step (green held, red broken)")
        for ax in (latency, rate):
            ax.set_xscale("log", base=2)
            ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
            ax.set_ylim(bottom=0)
            ax.grid(alpha=0.3)
        latency.legend(fontsize=8, loc="upper left")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def print_capacity(capacity: Mapping[str, Mapping], backend: str) -> None:
    print(f"capacity ({backend}):")
    for scenario, figures in capacity.items():
        if figures["users"] is None:
            print(f"  {scenario}: no load held (broken at {figures['first_broken_users']} users)")
            continue
        extra = ", ".join(f"{key} {value}" for key, value in figures.items()
                          if key not in ("users", "first_broken_users") and value is not None)
        broken = figures["first_broken_users"]
        print(f"  {scenario}: {figures['users']} users held ({extra}); "
              f"{f'broken at {broken}' if broken else 'not broken within --max-users / --max-steps'}")


# ----------------------------------------------------------------------------------------------
# Command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    env = os.environ
    parser.add_argument("--scenario", nargs="+", required=True, help="scenarios of the locustfile, searched in turn")
    parser.add_argument("--backend", choices=BACKENDS, default=env.get("MEDSEG_BACKEND", "embedded") or "embedded",
                        help="back end of a service started here")
    parser.add_argument("--host", default=env.get("LOAD_HOST", "").strip() or "http://127.0.0.1:3000")
    parser.add_argument("--step-time", default=None,
                        help="locust run time of each step (default per scenario: " +
                             ", ".join(f"{k} {v}" for k, v in STEP_TIME.items()) + ")")
    parser.add_argument("--start", type=int, default=1, help="users of the first step")
    parser.add_argument("--max-users", type=int, default=64)
    parser.add_argument("--max-steps", type=int, default=8, help="steps per scenario at most")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds of one unjudged user first (0: none)")
    parser.add_argument("--slo", type=Path, default=Path(env.get("LOAD_SLO", "").strip() or DEFAULT_SLO))
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--locustfile", type=Path, default=DEFAULT_LOCUSTFILE)
    parser.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)


def run(args: argparse.Namespace) -> int:
    if args.start < 1 or args.max_users < args.start or args.max_steps < 1:
        print("capacity: need 1 <= --start <= --max-users and --max-steps >= 1", file=sys.stderr)
        return EXIT_USAGE
    try:
        slo = load_slo(args.slo.resolve())
        classes = scenario_classes(args.locustfile.resolve(), args.scenario)
        missing = [s for s in args.scenario if s not in slo]
        if missing:
            raise UsageError(f"{args.slo} has no SLO for {', '.join(missing)}: a capacity is judged against one")
        for scenario in args.scenario:
            parse_timespan(args.step_time or STEP_TIME.get(scenario, "30s"))
    except UsageError as error:
        print(f"capacity: {error}", file=sys.stderr)
        return EXIT_USAGE
    folder = run_folder(args.out.resolve())
    locustfile = args.locustfile.resolve()
    steps_by_scenario: dict[str, list[Step]] = {}
    try:
        with service_at(args.host, folder / "service", args.repository, backend=args.backend) as target:
            print(f"capacity: {', '.join(args.scenario)} against {target.url} "
                  f"({args.backend if target.started else 'running service'}); run folder {folder}", flush=True)
            for scenario, user_class in zip(args.scenario, classes):
                if args.warmup > 0:
                    warm = folder / f"{scenario}-warmup"
                    warm.mkdir()
                    run_scenarios(warm, target.url, locustfile, [scenario], [user_class], 1, 1.0,
                                  f"{max(1, round(args.warmup))}s")
                    settle(target.url)
                steps_by_scenario[scenario] = search(
                    folder, target.url, locustfile, scenario, user_class, slo,
                    args.step_time or STEP_TIME.get(scenario, "30s"), args.start, args.max_users, args.max_steps)
            if target.sampler:
                target.sampler.write_csv(folder / "service_rss.csv")
    except UsageError as error:
        print(f"capacity: {error}", file=sys.stderr)
        return EXIT_USAGE
    except RuntimeError as error:
        print(f"capacity: {error}", file=sys.stderr)
        return EXIT_LOCUST
    capacity = {scenario: capacity_of(scenario, steps) for scenario, steps in steps_by_scenario.items()}
    report = {
        "host": target.url,
        "backend": args.backend if target.started else None,
        "service_started": target.started,
        "slo_file": str(args.slo.resolve()),
        "capacity": capacity,
        "steps": {scenario: [asdict(step) for step in steps] for scenario, steps in steps_by_scenario.items()},
        "settings": {key: os.environ[key] for key in sorted(os.environ) if key.startswith(("LOAD_", "MEDSEG_"))},
    }
    (folder / "capacity.json").write_text(json.dumps(report, indent=2) + "\n")
    plot_capacity(steps_by_scenario, slo, folder / "capacity.png",
                  title=f"capacity, {report['backend'] or target.url}, {time.strftime('%Y-%m-%d %H:%M')}")
    print_capacity(capacity, report["backend"] or target.url)
    print(f"capacity: report {folder / 'capacity.json'}, plot {folder / 'capacity.png'}")
    return EXIT_OK if all(figures["users"] is not None for figures in capacity.values()) else EXIT_SLO


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m load capacity", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
