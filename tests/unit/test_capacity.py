"""The capacity search's policy and figures (load/capacity.py), without a service."""

from __future__ import annotations

import pytest

from load.capacity import Step, capacity_of, next_users, unit_throughput


def _search(capacity: int, start: int = 1, max_users: int = 64) -> list[tuple[int, bool]]:
    """The steps the search runs against a host that holds exactly ``capacity`` users."""
    steps: list[tuple[int, bool]] = []
    while (users := next_users(steps, start, max_users)) is not None:
        assert users not in [u for u, _ in steps], "a load tried twice"
        steps.append((users, users <= capacity))
        assert len(steps) < 20
    return steps


@pytest.mark.parametrize("capacity", [1, 2, 3, 5, 12, 17, 31, 33, 63])
def test_the_search_ends_on_the_exact_capacity(capacity: int) -> None:
    steps = _search(capacity)
    held = max(u for u, ok in steps if ok)
    broken = min(u for u, ok in steps if not ok)
    assert (held, broken) == (capacity, capacity + 1)
    assert len(steps) <= 2 * capacity.bit_length() + 1  # doubling, then bisection


def test_nothing_held_ends_at_the_first_step_and_max_users_ends_the_doubling() -> None:
    assert _search(0) == [(1, False)]
    assert _search(100, max_users=20) == [(1, True), (2, True), (4, True), (8, True), (16, True), (20, True)]
    assert _search(0, start=8) == [(8, False), (4, False), (2, False), (1, False)]
    assert _search(5, start=8) == [(8, False), (4, True), (6, False), (5, True)]


def test_a_noisy_step_held_above_a_broken_one_moves_the_search_up() -> None:
    steps = [(1, True), (2, True), (4, False), (3, False)]
    assert next_users(steps, 1, 64) is None  # 2 held, 3 broken: adjacent
    steps = [(1, True), (2, True), (4, False), (8, True)]  # a noisy 4, then 8 held
    assert next_users(steps, 1, 64) == 16


def _figures(requests: int, failures: int, rps: float, by_name: dict | None = None) -> dict:
    return {"requests": requests, "failures": failures, "rps": rps, "by_name": by_name or {}}


def test_throughput_counts_successes_in_each_scenarios_unit() -> None:
    # segment: successful requests over the requests' window (requests / rps = 20 s)
    assert unit_throughput("segment", _figures(200, 10, 10.0), 30) == pytest.approx(190 / 20)
    # pacs: studies with a SEG (time-to-SEG successes), not STOWs
    pacs = _figures(30, 1, 0.5, {"pacs: STOW 12 instances": {"requests": 15, "failures": 0},
                                 "pacs: time-to-SEG": {"requests": 15, "failures": 1}})
    assert unit_throughput("pacs", pacs, 90) == pytest.approx(14 / 60)
    # video: answered frames, not connects, ends or drop events
    video = _figures(620, 0, 10.0, {"video: mast frame": {"requests": 600, "failures": 2},
                                    "video: connect": {"requests": 10, "failures": 0},
                                    "video: end": {"requests": 10, "failures": 0},
                                    "video: dropped": {"requests": 40, "failures": 0}})
    assert unit_throughput("video", video, 40) == pytest.approx(598 / 62)
    assert unit_throughput("segment", _figures(0, 0, 0.0), 30) == 0.0


def _step(users: int, held: bool, throughput: float, scenario: str = "pacs") -> Step:
    return Step(scenario=scenario, users=users, held=held, duration_s=60, requests=10, failures=0, p50_ms=10.0,
                p95_ms=20.0, rps=1.0, dropped_rate=0.02, throughput=throughput, violations=[], folder="x")


def test_capacity_is_the_largest_load_held_in_the_scenarios_units() -> None:
    steps = [_step(1, True, 0.1), _step(2, True, 0.19), _step(4, False, 0.2), _step(3, True, 0.25)]
    capacity = capacity_of("pacs", steps)
    assert capacity["users"] == 3 and capacity["first_broken_users"] == 4
    assert capacity["studies/s"] == 0.25 and capacity["studies/hour"] == 900.0
    video = capacity_of("video", [_step(1, True, 30.0, "video"), _step(2, False, 40.0, "video")])
    assert video["streams"] == 1 and video["frames/s"] == 30.0 and video["dropped_rate"] == 0.02
    none = capacity_of("segment", [_step(1, False, 5.0, "segment")])
    assert none["users"] is None and none["first_broken_users"] == 1
