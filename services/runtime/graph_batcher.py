"""GraphBatcher: concurrent calls to the same graph merged into one backend call, without waiting.

Greedy dynamic batching, as Triton's dynamic batcher with no queue delay: a call runs at once
when the backend has a free slot (``max_in_flight`` calls running); calls that arrive while every
slot is busy queue up, and the next run takes the oldest queued call plus every other queued call
to the same graph, in arrival order, up to the graph's ``max_rows``. At low load a call therefore
runs alone and at once; under load batches fill up by themselves. Nothing is learned from past
traffic, so a burst leaves no trace on the next lone call (BentoML's adaptive batcher makes a lone
call wait about as long as recent calls queued: seconds after a burst).

A call larger than its graph's row limit is split into parts of at most the limit.
Unbatched graphs (full shapes, SurgicalSAM's prompt stage) are never merged. If a merged run
fails for any reason but :class:`BackendUnavailable` (the back end is down: every call of the
run gets it), each of its calls is run again alone, so one bad call cannot fail the others. A
call that waited more than ``max_queue_s`` for a slot is refused with :class:`Overloaded`
instead of run.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from services.contract import ModelCard
from services.errors import PROCESS_EXITS, BackendUnavailable, Overloaded

Tensors = dict[str, np.ndarray]
Infer = Callable[[str, Tensors], Awaitable[Tensors]]
BatchObserver = Callable[[str, int, int], None]  # (graph, calls merged, rows)


def row_limits(cards: Mapping[str, ModelCard]) -> dict[str, int]:
    """Rows per backend run, by graph: the card's ``batching.max_batch_size`` (its Triton config's
    ``max_batch_size``). The one place a row limit comes from: the batcher splits and merges to
    it, so no back end sees more rows in one call."""
    return {graph: card.batching.max_batch_size for card in cards.values() for graph in card.graphs()}


@dataclass(eq=False)  # identity: removing a call from the queue must never compare tensors
class _Call:
    model: str
    inputs: Tensors
    rows: int  # 0: an unbatched call, never merged
    future: asyncio.Future[Tensors]
    enqueued_s: float = field(default_factory=time.monotonic)
    started_s: float | None = None  # when the run that carries it began


@dataclass(frozen=True)
class CallTiming:
    """Where one call's time went in the worker, in seconds: waiting for a run slot, and the
    backend run that carried it (shared with the calls merged into it)."""

    queue_s: float
    run_s: float


class GraphBatcher:
    """Merges concurrent calls per graph in front of ``infer`` (an InferenceBackend's ``infer``).

    ``max_rows``: rows per run by graph (Triton model name); graphs not listed run calls alone.
    ``observe``: told (graph, calls, rows) for every run, e.g. to export a batch-size metric.
    """

    def __init__(
        self,
        infer: Infer,
        max_rows: Mapping[str, int],
        max_in_flight: int = 1,
        max_queue_s: float = 20.0,
        observe: BatchObserver | None = None,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self._infer = infer
        self._max_rows = dict(max_rows)
        self._max_in_flight = max_in_flight
        self._max_queue_s = max_queue_s
        self._observe = observe
        self._queue: deque[_Call] = deque()
        self._running = 0
        self._runs: set[asyncio.Task[None]] = set()  # the loop keeps only weak references to tasks

    @property
    def queued(self) -> int:
        """Calls waiting for a slot."""
        return len(self._queue)

    async def run(self, model: str, inputs: Tensors, batched: bool = True) -> Tensors:
        """Run ``inputs`` (batched: axis 0 = rows) through graph ``model``; return its outputs
        for exactly these rows. A call with more rows than the graph's limit is queued as parts
        of at most that many rows, so no backend run is larger than the limit (the runtime's
        memory peak stays bounded). Raises what the backend raised, or Overloaded."""
        outputs, _ = await self.run_timed(model, inputs, batched)
        return outputs

    async def run_timed(self, model: str, inputs: Tensors, batched: bool = True) -> tuple[Tensors, CallTiming]:
        """``run``, and where the call's time went (split calls: the longest part's)."""
        rows = len(next(iter(inputs.values()))) if batched else 0
        limit = self._max_rows.get(model, 0)
        if limit and rows > limit:
            parts = await asyncio.gather(
                *(self.run_timed(model, {name: value[start : start + limit] for name, value in inputs.items()})
                  for start in range(0, rows, limit))
            )
            outputs = {name: np.concatenate([part[name] for part, _ in parts]) for name in parts[0][0]}
            return outputs, CallTiming(max(t.queue_s for _, t in parts), max(t.run_s for _, t in parts))
        call = _Call(model, inputs, rows, asyncio.get_running_loop().create_future())
        self._queue.append(call)
        self._start_runs()
        outputs = await call.future
        started = call.started_s if call.started_s is not None else call.enqueued_s
        return outputs, CallTiming(started - call.enqueued_s, time.monotonic() - started)

    def _start_runs(self) -> None:
        while self._running < self._max_in_flight:
            batch = self._take_batch()
            if not batch:
                return
            self._running += 1
            task = asyncio.get_running_loop().create_task(self._execute(batch))
            self._runs.add(task)
            task.add_done_callback(self._runs.discard)

    def _take_batch(self) -> list[_Call]:
        """The oldest live call and the queued calls that can share its run, removed from the queue."""
        now = time.monotonic()
        while self._queue:
            head = self._queue.popleft()
            if head.future.done():  # its caller went away
                continue
            if now - head.enqueued_s > self._max_queue_s:
                head.future.set_exception(
                    Overloaded(f"the service is overloaded (queued over {self._max_queue_s:g} s); retry shortly")
                )
                continue
            break
        else:
            return []
        batch = [head]
        limit = self._max_rows.get(head.model, 0)
        if head.rows == 0 or limit == 0:
            return batch
        rows = head.rows
        for call in list(self._queue):
            if call.model == head.model and call.rows and not call.future.done() and rows + call.rows <= limit:
                self._queue.remove(call)
                batch.append(call)
                rows += call.rows
        return batch

    async def _execute(self, batch: list[_Call]) -> None:
        try:
            live = [call for call in batch if not call.future.done()]
            started = time.monotonic()
            for call in live:
                call.started_s = started
            if live:
                await self._run_batch(live)
        except asyncio.CancelledError:
            for call in batch:
                call.future.cancel()
            raise
        except BaseException as error:  # noqa: BLE001 - no caller may be left waiting for its answer
            failure = error if isinstance(error, Exception) else RuntimeError(f"the back end failed ({type(error).__name__})")
            for call in batch:
                _settle(call.future, error=failure)
            if isinstance(error, PROCESS_EXITS):
                raise
        finally:
            self._running -= 1
            self._start_runs()

    async def _run_batch(self, batch: list[_Call]) -> None:
        model = batch[0].model
        if self._observe is not None:
            self._observe(model, len(batch), sum(call.rows for call in batch) or 1)
        if len(batch) == 1:
            await self._run_alone(batch[0])
            return
        merged = {name: np.concatenate([call.inputs[name] for call in batch]) for name in batch[0].inputs}
        try:
            outputs = await self._infer(model, merged)
        except BackendUnavailable as error:
            for call in batch:
                _settle(call.future, error=error)
            return
        except Exception:  # noqa: BLE001 - retried alone, so each call gets its own answer
            for call in batch:
                await self._run_alone(call)
            return
        start = 0
        for call in batch:
            _settle(call.future, {name: value[start : start + call.rows] for name, value in outputs.items()})
            start += call.rows

    async def _run_alone(self, call: _Call) -> None:
        try:
            outputs = await self._infer(call.model, call.inputs)
        except Exception as error:  # noqa: BLE001 - handed to the caller
            _settle(call.future, error=error)
        else:
            _settle(call.future, outputs)


def _settle(future: asyncio.Future[Tensors], result: Tensors | None = None, error: BaseException | None = None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)  # type: ignore[arg-type]
