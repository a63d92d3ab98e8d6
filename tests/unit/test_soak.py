"""The soak's judgement without a service: memory flat or leaking, the warm-up, part-time roles,
errors, the plot and the options."""

from __future__ import annotations

import argparse
import random
import struct
from pathlib import Path

import pytest

from load.load_run import EXIT_USAGE
from load.soak import (
    STEADY_TOTAL,
    TOTAL,
    Bounds,
    add_arguments,
    default_warmup_s,
    error_figures,
    judge_memory,
    plot_memory,
    rise,
    run,
    slope_per_h,
    soak_verdict,
)

SECONDS = 120  # a CI-length soak: one sample a second
WINDOW = (30.0, float(SECONDS))  # its warm-up excluded


def _times(n: int = SECONDS + 1) -> list[float]:
    return [float(t) for t in range(n)]


def _noisy(level: float, seed: int, steps: dict[int, float] | None = None, sigma: float = 0.15,
           n: int = SECONDS + 1) -> list[float]:
    """``level`` MB with Gaussian noise and lasting steps (second -> MB up or down), as an
    allocator's arenas move a serving process's RSS."""
    rng, shift, values = random.Random(seed), 0.0, []
    for t in _times(n):
        shift += (steps or {}).get(int(t), 0.0)
        values.append(level + shift + rng.gauss(0, sigma))
    return values


def _series(**roles: list[float]) -> dict[str, list[float]]:
    series = dict(roles)
    series[TOTAL] = [sum(values) for values in zip(*roles.values())]
    return series


def _flat_service() -> dict[str, list[float]]:
    return _series(api=_noisy(340, 1, {50: 1.5, 95: -0.4}), worker=_noisy(450, 2, {60: 2.5, 100: -1.0}),
                   supervisor=_noisy(136.6, 3, sigma=0.0))


def _leaking(mb_per_h: float, level: float = 450, seed: int = 2, n: int = SECONDS + 1) -> list[float]:
    rng = random.Random(seed)
    return [level + mb_per_h * t / 3600 + rng.gauss(0, 0.15) for t in _times(n)]


def test_slope_and_rise() -> None:
    times = [0.0, 60.0, 120.0]
    assert slope_per_h(times, [100.0, 101.0, 102.0]) == pytest.approx(60.0)
    assert slope_per_h([5.0], [1.0]) == 0.0
    assert rise([1.0] * 5 + [9.0] + [1.0] * 4) == 0.0  # a spike is not a level
    assert rise([1.0] * 5 + [3.0] * 5) == 2.0


def test_a_flat_series_with_steps_and_noise_passes() -> None:
    times, series = _times(), _flat_service()
    memory = judge_memory(times, series, WINDOW)
    for role in ("api", "worker", "supervisor", STEADY_TOTAL):
        assert memory[role]["judged_by"] == "trend" and memory[role]["flat"] is True, (role, memory[role])
    # The steps make a steep short-run slope: the rise, within the tolerance, keeps it flat.
    assert memory["worker"]["slope_mb_per_h"] > Bounds().max_slope_mb_per_h
    assert memory[TOTAL]["flat"] is None and memory[TOTAL]["slope_mb_per_h"] is not None
    assert soak_verdict(error_figures({"segment": {"requests": 900, "failures": 0}}, 0), memory, Bounds()) == {
        "passed": True, "violations": []}


def test_a_steady_leak_fails() -> None:
    times = _times()
    series = _series(api=_noisy(340, 1), worker=_leaking(300.0), supervisor=_noisy(136.6, 3, sigma=0.0))
    memory = judge_memory(times, series, WINDOW)
    assert memory["worker"]["flat"] is False and memory[STEADY_TOTAL]["flat"] is False
    assert memory["api"]["flat"] is True
    assert memory["worker"]["slope_mb_per_h"] == pytest.approx(300, rel=0.1)
    verdict = soak_verdict(error_figures({"segment": {"requests": 900, "failures": 0}}, 0), memory, Bounds())
    assert verdict["passed"] is False
    assert [(v["check"], v["role"]) for v in verdict["violations"]] == [("memory", "worker"), ("memory", STEADY_TOTAL)]
    # The same leak under a bound above it is flat: the bound is what is stated.
    assert judge_memory(times, series, WINDOW, Bounds(max_slope_mb_per_h=350))["worker"]["flat"] is True


def test_a_slow_leak_needs_the_full_length_run() -> None:
    """100 MB/h over the 90 s a 2-minute soak judges rises 2 MB, within the noise tolerance: only a
    long run tells it (and 70 MB/h, over the 50 MB/h bound, in 25 judged minutes) from noise; a
    leak under the stated bound passes."""
    short = _series(api=_noisy(340, 1), worker=_leaking(100.0))
    assert judge_memory(_times(), short, WINDOW)["worker"]["flat"] is True
    n = 1801
    for mb_per_h, flat in ((100.0, False), (70.0, False), (30.0, True)):
        long = _series(api=_noisy(340, 1, {400: 1.0, 1200: 2.0}, n=n), worker=_leaking(mb_per_h, n=n))
        memory = judge_memory(_times(n), long, (default_warmup_s(1800), 1800.0))
        assert memory["worker"]["flat"] is flat, (mb_per_h, memory["worker"])
        assert memory["api"]["flat"] is True  # 3 MB of steps over 25 min: under the slope bound


def test_the_warm_up_is_excluded() -> None:
    times = _times()
    warming = [300 + 60 * min(t, 30) / 30 + random.Random(t).gauss(0, 0.1) for t in times]  # +60 MB in 30 s
    series = _series(api=warming, worker=_noisy(450, 2))
    assert judge_memory(times, series, WINDOW)["api"]["flat"] is True
    assert judge_memory(times, series, (0.0, float(SECONDS)))["api"]["flat"] is False
    assert default_warmup_s(120) == 60 and default_warmup_s(1800) == 300 and default_warmup_s(3600) == 360


def _decoders(peak: float, present_from: int, recycled_every: int, grow_after: int | None = None) -> list[float]:
    """A decode pool: absent until ``present_from``, one process replaced every
    ``recycled_every`` s (its RSS gone for a second, then back smaller and growing); with
    ``grow_after``, the whole pool's level creeps up from then (a leak that outlives recycling)."""
    values = []
    for t in _times():
        if t < present_from:
            values.append(0.0)
        elif (t - present_from) % recycled_every == 0:
            values.append(0.0 if t % 2 else peak * 0.7)
        else:
            age = (t - present_from) % recycled_every
            creep = 1.0 * (t - grow_after) if grow_after is not None and t > grow_after else 0.0
            values.append(peak * 0.9 + peak * 0.1 * age / recycled_every + creep)
    return values


def test_a_part_time_role_does_not_false_alarm() -> None:
    times = _times()
    base = _flat_service()
    # Decoders recycled (a sawtooth that drops to 0), a role that appears only in the middle of the
    # run and one seen only at its end: none of them is a leak, nor does it move the steady total.
    late_only = [0.0] * 110 + [50.0] * (SECONDS + 1 - 110)
    middle = [0.0] * 40 + [20.0] * 50 + [0.0] * (SECONDS + 1 - 90)
    series = _series(api=base["api"], worker=base["worker"], supervisor=base["supervisor"],
                     decoders=_decoders(240, present_from=5, recycled_every=17), other=middle,
                     **{"triton stubs": late_only})
    series["zombie"] = [0.0] * len(times)  # a process seen only between its exit and its reaping
    memory = judge_memory(times, series, WINDOW)
    assert "zombie" not in memory
    assert memory["decoders"]["judged_by"] == "peak" and memory["decoders"]["flat"] is True
    assert memory["other"]["judged_by"] == "peak" and memory["other"]["flat"] is True
    assert memory["triton stubs"]["flat"] is None  # never seen before the last fifth: not judged
    assert memory[STEADY_TOTAL]["roles"] == ["api", "worker", "supervisor"]
    assert memory[STEADY_TOTAL]["flat"] is True
    verdict = soak_verdict(error_figures({"segment": {"requests": 900, "failures": 0}}, 0), memory, Bounds())
    assert verdict["passed"] is True
    # Decoders whose level creeps past their recycling: their late peak breaks the bound.
    series["decoders"] = _decoders(240, present_from=5, recycled_every=17, grow_after=60)
    leaking = judge_memory(times, series, WINDOW)["decoders"]
    assert leaking["flat"] is False and leaking["late_peak_mb"] > leaking["peak_limit_mb"]


@pytest.mark.parametrize(("failures", "exceptions", "requests", "check"), [
    (1, 0, 900, "failures"), (0, 2, 900, "locust_exceptions"), (0, 0, 0, "requests")])
def test_a_failed_request_or_a_locustfile_error_fails_the_soak(failures: int, exceptions: int, requests: int,
                                                               check: str) -> None:
    memory = judge_memory(_times(), _flat_service(), WINDOW)
    errors = error_figures({"segment": {"requests": requests, "failures": failures}}, exceptions)
    verdict = soak_verdict(errors, memory, Bounds())
    assert verdict["passed"] is False and [v["check"] for v in verdict["violations"]] == [check]


def test_the_memory_plot_is_a_png_with_a_panel_per_role(tmp_path: Path) -> None:
    times = _times()
    series = _flat_service()
    series["decoders"] = _decoders(240, present_from=5, recycled_every=17)
    series = _series(**{k: v for k, v in series.items() if k != TOTAL})
    memory = judge_memory(times, series, WINDOW)
    path = tmp_path / "memory.png"
    plot_memory(times, series, memory, (0.5, 119.0), WINDOW, path, title="test")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert width >= 1000 and height >= 3 * 250  # 6 panels: 4 roles, steady total, total


def _args(tmp_path: Path, environ: dict[str, str], argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser, environ=environ)
    args = parser.parse_args(argv)
    args.out = tmp_path / "runs"
    return args


def test_options_default_from_the_environment(tmp_path: Path) -> None:
    args = _args(tmp_path, {"SOAK_TIME": "2m", "SOAK_USERS": "3", "SOAK_BACKEND": "triton",
                            "SOAK_MAX_SLOPE_MB_PER_H": "7.5"}, [])
    assert (args.time, args.users, args.backend, args.max_slope_mb_per_h) == ("2m", 3, "triton", 7.5)
    defaults = _args(tmp_path, {}, [])
    assert (defaults.time, defaults.users, defaults.scenarios, defaults.backend) == ("30m", 4, "segment", "embedded")


@pytest.mark.parametrize("argv", [["--scenarios", "nosuch"], ["--time", "5s"], ["--time", "60s", "--warmup", "60"],
                                  ["--users", "0"]])
def test_bad_arguments_exit_2_before_starting_anything(tmp_path: Path, argv: list[str]) -> None:
    args = _args(tmp_path, {}, argv)
    assert run(args) == EXIT_USAGE
    assert not args.out.exists()
