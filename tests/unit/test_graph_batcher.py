"""GraphBatcher: merging concurrent calls per graph, without waiting, without losing a call."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from services.errors import BackendUnavailable, Overloaded
from services.runtime.graph_batcher import GraphBatcher


class GatedBackend:
    """Doubles ``x`` row by row; each run waits for ``gate`` when one is set. Records every run as
    (graph, first value of each row) and fails runs containing a NaN row."""

    def __init__(self) -> None:
        self.runs: list[tuple[str, list[float]]] = []
        self.gate: asyncio.Event | None = None
        self.error: Exception | None = None

    async def infer(self, model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = inputs["x"]
        self.runs.append((model, [float(row.flat[0]) for row in x]))
        if self.gate is not None:
            await self.gate.wait()
        if self.error is not None:
            raise self.error
        if np.isnan(x).any():
            raise ValueError("NaN in the batch")
        return {"y": x * 2}


def rows(*values: float) -> dict[str, np.ndarray]:
    return {"x": np.array(values, dtype=np.float32).reshape(-1, 1, 1).repeat(2, axis=2)}  # (rows, 1, 2)


def gated(max_rows: dict[str, int], **options: object) -> tuple[GatedBackend, GraphBatcher]:
    """A backend held at its gate (runs start but do not finish) and a batcher in front of it."""
    backend = GatedBackend()
    backend.gate = asyncio.Event()
    return backend, GraphBatcher(backend.infer, max_rows, **options)  # type: ignore[arg-type]


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_a_lone_call_runs_at_once_with_its_own_rows() -> None:
    async def scenario() -> None:
        backend, batcher = gated({"g": 8})
        call = asyncio.ensure_future(batcher.run("g", rows(1, 2)))
        await settle()  # no timer: the call reaches the backend within a few loop iterations
        assert backend.runs == [("g", [1.0, 2.0])]
        backend.gate.set()
        np.testing.assert_array_equal((await call)["y"], rows(2, 4)["x"])

    asyncio.run(scenario())


def test_calls_queued_behind_a_busy_backend_merge_per_graph_in_arrival_order() -> None:
    async def scenario() -> None:
        backend, batcher = gated({"g": 8, "h": 8})
        first = asyncio.ensure_future(batcher.run("g", rows(1)))
        await settle()
        queued = [
            asyncio.ensure_future(batcher.run(model, rows(*values)))
            for model, values in (("g", (2, 3)), ("h", (10,)), ("g", (4,)), ("g", (5, 6)))
        ]
        await settle()
        assert batcher.queued == 4 and len(backend.runs) == 1  # nothing ran while the backend was busy
        backend.gate.set()
        results = await asyncio.gather(first, *queued)
        assert backend.runs == [("g", [1.0]), ("g", [2.0, 3.0, 4.0, 5.0, 6.0]), ("h", [10.0])]
        for values, out in zip(((1,), (2, 3), (10,), (4,), (5, 6)), results):
            np.testing.assert_array_equal(out["y"], rows(*values)["x"] * 2)

    asyncio.run(scenario())


def test_a_run_never_exceeds_the_graphs_row_limit() -> None:
    async def scenario() -> None:
        backend, batcher = gated({"g": 4})
        calls = [asyncio.ensure_future(batcher.run("g", rows(i, i + 0.5))) for i in range(5)]
        await settle()
        backend.gate.set()
        await asyncio.gather(*calls)
        assert [len(values) for _, values in backend.runs] == [2, 4, 4]

    asyncio.run(scenario())


def test_unbatched_calls_are_never_merged() -> None:
    async def scenario() -> None:
        backend, batcher = gated({"prompt": 4})
        calls = [asyncio.ensure_future(batcher.run("prompt", rows(i), batched=False)) for i in range(3)]
        await settle()
        backend.gate.set()
        await asyncio.gather(*calls)
        assert backend.runs == [("prompt", [0.0]), ("prompt", [1.0]), ("prompt", [2.0])]

    asyncio.run(scenario())


def test_one_bad_call_fails_alone_when_its_merged_run_fails() -> None:
    async def scenario() -> None:
        backend, batcher = gated({"g": 8})
        calls = [asyncio.ensure_future(batcher.run("g", rows(v))) for v in (1, 2, float("nan"), 4)]
        await settle()
        backend.gate.set()
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert isinstance(results[2], ValueError)
        for value, out in zip((1, 2, 4), (results[0], results[1], results[3])):
            np.testing.assert_array_equal(out["y"], rows(value)["x"] * 2)

    asyncio.run(scenario())


def test_backend_down_fails_every_merged_call_without_retrying() -> None:
    async def scenario() -> None:
        backend, batcher = gated({"g": 8})
        calls = [asyncio.ensure_future(batcher.run("g", rows(v))) for v in (1, 2, 3)]
        await settle()
        backend.error = BackendUnavailable("no server")
        backend.gate.set()
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert all(isinstance(r, BackendUnavailable) for r in results)
        assert len(backend.runs) == 2  # the first call alone, then the two queued ones merged once

    asyncio.run(scenario())


def test_calls_queued_past_the_limit_are_refused_not_run() -> None:
    async def scenario() -> None:
        backend, batcher = gated({"g": 8}, max_queue_s=0.05)
        first = asyncio.ensure_future(batcher.run("g", rows(1)))
        await settle()
        late = asyncio.ensure_future(batcher.run("g", rows(2)))
        await asyncio.sleep(0.1)
        backend.gate.set()
        await first
        with pytest.raises(Overloaded):
            await late
        assert backend.runs == [("g", [1.0])]

    asyncio.run(scenario())


def test_a_caller_that_went_away_is_not_run() -> None:
    async def scenario() -> None:
        backend, batcher = gated({"g": 8})
        first = asyncio.ensure_future(batcher.run("g", rows(1)))
        await settle()
        gone = asyncio.ensure_future(batcher.run("g", rows(2)))
        kept = asyncio.ensure_future(batcher.run("g", rows(3)))
        await settle()
        gone.cancel()
        backend.gate.set()
        await asyncio.gather(first, kept)
        assert backend.runs == [("g", [1.0]), ("g", [3.0])]

    asyncio.run(scenario())


def test_several_runs_in_flight_when_allowed() -> None:
    async def scenario() -> None:
        observed: list[tuple[str, int, int]] = []
        backend, batcher = gated({"g": 8}, max_in_flight=2, observe=lambda *a: observed.append(a))
        calls = [asyncio.ensure_future(batcher.run("g", rows(v))) for v in (1, 2, 3, 4)]
        await settle()
        assert len(backend.runs) == 2 and batcher.queued == 2  # two slots busy, two calls waiting
        backend.gate.set()
        await asyncio.gather(*calls)
        assert [len(v) for _, v in backend.runs] == [1, 1, 2]
        assert observed == [("g", 1, 1), ("g", 1, 1), ("g", 2, 2)]

    asyncio.run(scenario())


def test_a_call_left_behind_by_the_row_limit_does_not_lose_the_calls_after_it() -> None:
    """Queue g(3 rows), g(3 rows), g(1 row) behind a busy backend with 4 rows per run: the second
    call does not fit beside the first, the third does. Taking the third out of the queue must
    not compare it with the second by value (numpy arrays have no truth value): every call is
    answered, and the batcher keeps running."""

    async def scenario() -> None:
        backend, batcher = gated({"g": 4})
        busy = asyncio.ensure_future(batcher.run("g", rows(0)))
        await settle()
        queued = [asyncio.ensure_future(batcher.run("g", rows(*values))) for values in ((1, 2, 3), (4, 5, 6), (7,))]
        await settle()
        backend.gate.set()
        results = await asyncio.wait_for(asyncio.gather(busy, *queued), timeout=5)
        assert backend.runs == [("g", [0.0]), ("g", [1.0, 2.0, 3.0, 7.0]), ("g", [4.0, 5.0, 6.0])]
        for values, out in zip(((0,), (1, 2, 3), (4, 5, 6), (7,)), results):
            np.testing.assert_array_equal(out["y"], rows(*values)["x"] * 2)

    asyncio.run(scenario())


def test_a_call_larger_than_the_row_limit_runs_in_parts_of_at_most_the_limit() -> None:
    """A 120-frame clip sent as one call of 120 rows must not become one backend run of 120 rows
    (the runtime's memory grows to its largest run and keeps it): parts of at most 4 rows."""

    async def scenario() -> None:
        backend, batcher = gated({"g": 4})
        backend.gate.set()
        values = tuple(float(v) for v in range(10))
        out = await batcher.run("g", rows(*values))
        assert [len(run_rows) for _, run_rows in backend.runs] == [4, 4, 2]
        assert [v for _, run_rows in backend.runs for v in run_rows] == list(values)
        np.testing.assert_array_equal(out["y"], rows(*values)["x"] * 2)

    asyncio.run(scenario())


class BackendPanic(BaseException):
    """A failure that is not an Exception (pyo3's PanicException is one)."""


def test_a_run_failing_with_a_base_exception_answers_its_callers_and_the_batcher_goes_on() -> None:
    async def scenario() -> None:
        backend, batcher = gated({"g": 8})
        backend.gate.set()
        backend.error = BackendPanic("index out of bounds")  # type: ignore[assignment]
        call = asyncio.ensure_future(batcher.run("g", rows(1)))
        with pytest.raises(RuntimeError, match="BackendPanic"):
            await asyncio.wait_for(call, timeout=5)
        backend.error = None
        out = await asyncio.wait_for(batcher.run("g", rows(2)), timeout=5)
        np.testing.assert_array_equal(out["y"], rows(4)["x"])

    asyncio.run(scenario())
