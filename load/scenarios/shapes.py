"""Load profiles (locust ``LoadTestShape``): a staircase and a spike, over the user classes chosen.

Not in load/locustfile.py: locust runs the first shape it finds in any ``-f`` file, so each shape
has a one-line locustfile of its own to add after the scenarios:

    locust -f load/locustfile.py,load/scenarios/step_shape.py --headless --host URL [-t 5m] [UserClass ...]
    locust -f load/locustfile.py,load/scenarios/spike_shape.py --headless --host URL [-t 2m] [UserClass ...]

Both read their numbers from the environment (below), ``LOAD_USERS`` falling back to ``-u``; a
shape ends at ``-t`` when one is given, else after its own length. ``-r`` is the spawn rate
floor (each step or spike is spawned at least as fast as it is big per second).

StepShape: ``LOAD_STEP_USERS`` users (default a fifth of LOAD_USERS) every ``LOAD_STEP_S``
seconds (30) up to ``LOAD_USERS`` (-u, default 10); the last step is held one period too.

SpikeShape: ``LOAD_USERS`` (-u) users, then ``LOAD_SPIKE_USERS`` (default 4 × LOAD_USERS) from
``LOAD_SPIKE_AT_S`` (30) for ``LOAD_SPIKE_S`` (15) seconds, then the base load again until
``LOAD_SPIKE_AT_S`` after the spike.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

from locust import LoadTestShape

from load.scenarios.common import env_int, env_number


class _EnvShape(LoadTestShape):
    """Reads -u / -r / -t when given (``use_common_options``), the LOAD_* variables first."""

    abstract = True
    use_common_options = True
    environ: Mapping[str, str] | None = None  # None: os.environ (tests set a dict)

    def _options(self) -> tuple[int | None, float, float | None]:
        """(-u, -r, -t in seconds) of the run, None where locust has none."""
        runner = self.runner
        options = getattr(getattr(runner, "environment", None), "parsed_options", None)
        users = getattr(options, "num_users", None)
        rate = getattr(options, "spawn_rate", None) or 1.0
        run_time = getattr(options, "run_time", None) or None
        return users, float(rate), run_time

    def _env(self) -> Mapping[str, str]:
        return os.environ if self.environ is None else self.environ

    def _users(self, default: int = 10) -> int:
        cli, _, _ = self._options()
        return env_int("LOAD_USERS", cli or default, self._env(), minimum=1)


class StepShape(_EnvShape):
    abstract = False

    def plan(self) -> tuple[int, int, float, float]:
        """(top users, users per step, seconds per step, spawn rate)."""
        _, rate, _ = self._options()
        top = self._users()
        step = env_int("LOAD_STEP_USERS", max(1, top // 5), self._env(), minimum=1)
        period = env_number("LOAD_STEP_S", 30.0, self._env(), minimum=1.0)
        return top, min(step, top), period, max(rate, float(step))

    def length_s(self) -> float:
        _, _, run_time = self._options()
        if run_time:
            return float(run_time)
        top, step, period, _ = self.plan()
        return math.ceil(top / step) * period + period

    def tick(self) -> tuple[int, float] | None:
        elapsed = self.get_run_time()
        if elapsed >= self.length_s():
            return None
        top, step, period, rate = self.plan()
        return min(top, step * (int(elapsed // period) + 1)), rate


class SpikeShape(_EnvShape):
    abstract = False

    def plan(self) -> tuple[int, int, float, float, float]:
        """(base users, spike users, spike start s, spike length s, spawn rate)."""
        _, rate, _ = self._options()
        base = self._users()
        spike = env_int("LOAD_SPIKE_USERS", 4 * base, self._env(), minimum=1)
        at = env_number("LOAD_SPIKE_AT_S", 30.0, self._env(), minimum=0.0)
        length = env_number("LOAD_SPIKE_S", 15.0, self._env(), minimum=1.0)
        return base, spike, at, length, max(rate, float(abs(spike - base)), float(base))

    def length_s(self) -> float:
        _, _, run_time = self._options()
        if run_time:
            return float(run_time)
        _, _, at, length, _ = self.plan()
        return at + length + max(at, 10.0)

    def tick(self) -> tuple[int, float] | None:
        elapsed = self.get_run_time()
        if elapsed >= self.length_s():
            return None
        base, spike, at, length, rate = self.plan()
        return (spike if at <= elapsed < at + length else base), rate
