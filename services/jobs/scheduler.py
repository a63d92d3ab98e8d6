"""The job loop of the DICOMweb inbox: quiet series become queued jobs, queued jobs run, finished
jobs are delivered to the PACS with retries. Runs as one background task of the API process; all
state is in the job store, so a restart (even after SIGKILL) resumes where it stopped."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio

from services.errors import MedsegError
from services.jobs.outbox import DeliveryError, backoff_s
from services.jobs.store import Job, JobStore, Result

log = logging.getLogger("medseg.jobs")

TRANSIENT_STATUSES = (429, 503, 504)  # the back end is busy or away: the job runs again later


@dataclass(frozen=True)
class RunOutput:
    results: tuple[Result, ...]
    timings: dict[str, float]  # seconds per stage


JobRun = Callable[[Job], Awaitable[RunOutput]]
CountsObserver = Callable[[dict[str, int]], None]  # jobs per state, reported every ``counts_every_s``
JobDelivery = Callable[[Job], Awaitable[None]]  # raises DeliveryError


@dataclass(frozen=True)
class SchedulerSettings:
    quiet_s: float  # a waiting job is queued this long after its last instance
    delivery_attempts: int  # tries before delivery_failed
    delivery_backoff_s: float  # first retry delay (doubled per try)
    poll_s: float = 0.25
    max_running: int = 2  # jobs running at once (their slices share the worker's batcher)
    max_run_attempts: int = 5  # runs stopped by a transient condition before the job fails
    counts_every_s: float = 2.0


def stage_timings(job: Job, now: float) -> dict[str, float]:
    """Waiting stages of a job that has just run: quiet period and queue, in seconds."""
    timings = {}
    if job.queued_at is not None:
        timings["quiet_wait"] = round(max(0.0, job.queued_at - job.last_instance_at), 4)
        if job.started_at is not None:
            timings["queue"] = round(max(0.0, job.started_at - job.queued_at), 4)
    return timings


class Scheduler:
    def __init__(
        self, store: JobStore, settings: SchedulerSettings, run: JobRun, deliver: JobDelivery | None,
        observe_counts: CountsObserver | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.run = run
        self.deliver = deliver
        self.observe_counts = observe_counts

    async def run_forever(self) -> None:
        interrupted = await anyio.to_thread.run_sync(self.store.requeue_interrupted, self.settings.max_run_attempts)
        if interrupted:
            log.warning("%d job(s) interrupted by a stop run again", interrupted)
        async with anyio.create_task_group() as group:
            group.start_soon(self._process)
            if self.deliver is not None:
                group.start_soon(self._deliver_due)
            if self.observe_counts is not None:
                group.start_soon(self._report_counts, self.observe_counts)

    async def _report_counts(self, observe: CountsObserver) -> None:
        while True:
            observe(await anyio.to_thread.run_sync(self.store.counts))
            await anyio.sleep(self.settings.counts_every_s)

    async def _process(self) -> None:
        slots = anyio.Semaphore(self.settings.max_running)
        async with anyio.create_task_group() as group:
            while True:
                # Quiet series are promoted on time even while every slot is busy.
                await anyio.to_thread.run_sync(self.store.promote_quiet, self.settings.quiet_s)
                try:
                    slots.acquire_nowait()
                except anyio.WouldBlock:
                    await anyio.sleep(self.settings.poll_s)
                    continue
                job = await anyio.to_thread.run_sync(self.store.claim_next)
                if job is None:
                    slots.release()
                    await anyio.sleep(self.settings.poll_s)
                    continue
                group.start_soon(self._run_one, job, slots)

    async def _run_one(self, job: Job, slots: anyio.Semaphore) -> None:
        try:
            await self.run_job(job)
        finally:
            slots.release()

    async def run_job(self, job: Job) -> None:
        """Run one claimed job and record how it ended (never raises but for cancellation; a
        failure to record leaves the job running, which the next start runs again)."""
        try:
            await self._run_and_record(job)
        except Exception:  # noqa: BLE001 - the loop goes on whatever one job does
            log.exception("job %s: could not record its outcome", job.id)

    async def _run_and_record(self, job: Job) -> None:
        try:
            output = await self.run(job)
        except MedsegError as error:
            timings = stage_timings(job, time.time())
            if error.status in TRANSIENT_STATUSES and job.run_attempts < self.settings.max_run_attempts:
                delay = min(2.0**job.run_attempts, 30.0)
                log.warning("job %s: %s; runs again in %g s", job.id, error.code, delay)
                await anyio.to_thread.run_sync(self.store.requeue, job.id, f"{error.code}: retrying", time.time() + delay)
                return
            log.info("job %s failed: %s", job.id, error.code)
            await anyio.to_thread.run_sync(self.store.fail, job.id, error.message, timings)
        except Exception:  # noqa: BLE001 - a bug must fail its job, not the loop
            log.exception("job %s failed unexpectedly", job.id)
            await anyio.to_thread.run_sync(self.store.fail, job.id, "internal_error: the failure was logged", stage_timings(job, time.time()))
        else:
            timings = {**stage_timings(job, time.time()), **output.timings}
            await anyio.to_thread.run_sync(self.store.complete, job.id, output.results, timings, self.deliver is not None)
            log.info("job %s done (%s)", job.id, ", ".join(f"{k} {v:.2f} s" for k, v in timings.items()))

    async def _deliver_due(self) -> None:
        assert self.deliver is not None
        while True:
            for job in await anyio.to_thread.run_sync(self.store.due_deliveries):
                await self.deliver_job(job)
            await anyio.sleep(self.settings.poll_s)

    async def deliver_job(self, job: Job) -> None:
        assert self.deliver is not None
        started = time.perf_counter()
        try:
            await self.deliver(job)
        except Exception as error:  # noqa: BLE001 - any failed try is retried; the loop goes on
            if not isinstance(error, DeliveryError):
                log.exception("job %s: delivery failed unexpectedly", job.id)
                error = DeliveryError(f"unexpected {type(error).__name__}")
            attempts = job.delivery_attempts + 1
            last = attempts >= self.settings.delivery_attempts
            next_at = None if last else time.time() + backoff_s(attempts, self.settings.delivery_backoff_s)
            log.warning("job %s: delivery try %d failed (%s)%s", job.id, attempts, error, "; giving up" if last else "")
            await anyio.to_thread.run_sync(self.store.delivery_failed, job.id, f"delivery: {error}", next_at)
        else:
            await anyio.to_thread.run_sync(self.store.delivered, job.id, time.perf_counter() - started)
            log.info("job %s delivered", job.id)
