"""Unit tests of the DICOMweb inbox's job loop: services/jobs/scheduler.py, over a real JobStore in
tmp_path, with fake run / deliver callables (no model, no PACS)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

import services.jobs.scheduler as scheduler_module
from services.errors import BackendUnavailable, InternalError, Overloaded, RequestTimeout, UnprocessableImage
from services.jobs.outbox import DeliveryError
from services.jobs.scheduler import RunOutput, Scheduler, SchedulerSettings, stage_timings
from services.jobs.store import Job, JobStore, Placement, Result, StoredInstance

STUDY = "1.2.826.0.1.3680043.8.498.1"
SLICES = Placement("ct-mr-slices", "swtr_unet")
T0 = 1_000_000.0


def settings(**changes) -> SchedulerSettings:
    values = {"quiet_s": 5.0, "delivery_attempts": 3, "delivery_backoff_s": 2.0, "poll_s": 0.02,
              "max_running": 2, "max_run_attempts": 3} | changes
    return SchedulerSettings(**values)


def record(store: JobStore, series: str, count: int = 3, now: float | None = None) -> None:
    for i in range(count):
        sop = f"{series}.{i}"
        stored = StoredInstance(sop, "1.2.840.10008.5.1.4.1.1.2", STUDY, series, Path(f"/spool/{sop}.dcm"), 10, None)
        assert store.record_instance(stored, SLICES, now=None if now is None else now + i)


def claimed(store: JobStore, series: str = f"{STUDY}.1") -> Job:
    """A running job: last instance at T0+2, queued at T0+12, started at T0+15."""
    record(store, series, now=T0)
    store.promote_quiet(5.0, now=T0 + 12)
    job = store.claim_next(now=T0 + 15)
    assert job is not None
    return job


def seg(sop: str = "2.25.1") -> Result:
    return Result(sop, "1.2.840.10008.5.1.4.1.1.66.4", STUDY, "2.25.9", "SEG", Path(f"/spool/results/{sop}.dcm"), 100)


def output(*results: Result) -> RunOutput:
    return RunOutput(results or (seg(),), {"assembly": 0.01, "inference": 1.5, "seg": 0.2})


def returning(value: RunOutput) -> Callable[[Job], Awaitable[RunOutput]]:
    async def run(job: Job) -> RunOutput:
        return value
    return run


def raising(error: BaseException) -> Callable[[Job], Awaitable[RunOutput]]:
    async def run(job: Job) -> RunOutput:
        raise error
    return run


async def delivered_ok(job: Job) -> None:
    return None


@pytest.fixture
def store(tmp_path: Path):
    s = JobStore(tmp_path / "jobs.sqlite3")
    yield s
    s.close()


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """anyio.sleep recorded instead of slept (the scheduler's back-off after a transient error)."""
    slept: list[float] = []

    async def fake_sleep(delay: float) -> None:
        slept.append(delay)

    monkeypatch.setattr(scheduler_module.anyio, "sleep", fake_sleep)
    return slept


def test_stage_timings() -> None:
    base = dict(id="j", study_uid=STUDY, route="r", model="m", state="running", reason=None, created_at=T0,
                last_instance_at=T0 + 2, queued_at=T0 + 12, started_at=T0 + 15, finished_at=None, delivered_at=None,
                timings={}, run_attempts=1, delivery_attempts=0, next_delivery_at=None, run_after=None)
    assert stage_timings(Job(**base), T0 + 20) == {"quiet_wait": 10.0, "queue": 3.0}
    assert stage_timings(Job(**base | {"started_at": None}), T0 + 20) == {"quiet_wait": 10.0}
    assert stage_timings(Job(**base | {"queued_at": None}), T0 + 20) == {}
    assert stage_timings(Job(**base | {"queued_at": T0}), T0 + 20) == {"quiet_wait": 0.0, "queue": 15.0}


# --- run_job ------------------------------------------------------------------------------------------


def test_a_run_that_returns_completes_the_job_with_its_timings(store: JobStore) -> None:
    job = claimed(store)
    scheduler = Scheduler(store, settings(), returning(output(seg("2.25.1"), seg("2.25.2"))), delivered_ok)
    before = time.time()
    asyncio.run(scheduler.run_job(job))
    done = store.job(job.id)
    assert done is not None
    assert (done.state, done.reason) == ("done", None)
    assert done.timings == {"quiet_wait": 10.0, "queue": 3.0, "assembly": 0.01, "inference": 1.5, "seg": 0.2}
    assert done.results == (seg("2.25.1"), seg("2.25.2"))
    assert store.is_result("2.25.2")
    assert before <= done.finished_at <= time.time()  # type: ignore[operator]
    assert [j.id for j in store.due_deliveries()] == [job.id]  # a PACS is configured: in the outbox


def test_without_a_pacs_a_done_job_is_not_delivered(store: JobStore) -> None:
    job = claimed(store)
    asyncio.run(Scheduler(store, settings(), returning(output()), None).run_job(job))
    assert store.job(job.id).state == "done"  # type: ignore[union-attr]
    assert store.due_deliveries(now=time.time() + 10_000) == []


def test_an_unprocessable_image_fails_the_job_with_its_message(store: JobStore, sleeps: list[float]) -> None:
    job = claimed(store)
    error = UnprocessableImage("missing_channels: no series for t2, flair")
    asyncio.run(Scheduler(store, settings(), raising(error), delivered_ok).run_job(job))
    failed = store.job(job.id)
    assert failed is not None
    assert (failed.state, failed.reason) == ("failed", "missing_channels: no series for t2, flair")
    assert failed.timings == {"quiet_wait": 10.0, "queue": 3.0}
    assert failed.finished_at is not None and failed.results == ()
    assert store.due_deliveries(now=time.time() + 10_000) == []
    assert sleeps == []


@pytest.mark.parametrize("error", [BackendUnavailable("worker not ready"), Overloaded("busy"), RequestTimeout("slow")])
def test_a_transient_error_requeues_the_job_until_max_run_attempts_then_fails_it(
    store: JobStore, sleeps: list[float], error: Exception
) -> None:
    job = claimed(store)
    scheduler = Scheduler(store, settings(max_run_attempts=3), raising(error), delivered_ok)
    for attempt, delay in ((1, 2.0), (2, 4.0)):
        assert job.run_attempts == attempt
        before = time.time()
        asyncio.run(scheduler.run_job(job))
        again = store.job(job.id)
        assert again is not None
        assert (again.state, again.reason) == ("queued", f"{error.code}: retrying")  # type: ignore[attr-defined]
        assert again.run_after is not None and before + delay <= again.run_after <= time.time() + delay
        assert store.claim_next(now=again.run_after - 0.01) is None  # backed off: not claimed early
        job = store.claim_next(now=again.run_after)  # type: ignore[assignment]
        assert job is not None and job.id == again.id
    assert job.run_attempts == 3
    asyncio.run(scheduler.run_job(job))
    failed = store.job(job.id)
    assert failed is not None
    assert (failed.state, failed.reason) == ("failed", error.message)  # type: ignore[attr-defined]
    assert sleeps == []  # the back-off holds no slot


def test_a_non_transient_medseg_error_fails_at_once(store: JobStore, sleeps: list[float]) -> None:
    job = claimed(store)
    asyncio.run(Scheduler(store, settings(), raising(InternalError()), delivered_ok).run_job(job))
    assert store.job(job.id).state == "failed"  # type: ignore[union-attr]
    assert sleeps == []


def test_an_unexpected_exception_fails_the_job_as_an_internal_error_without_details(store: JobStore) -> None:
    job = claimed(store)
    scheduler = Scheduler(store, settings(), raising(RuntimeError("/secret/path/PATIENT^NAME")), delivered_ok)
    asyncio.run(scheduler.run_job(job))  # does not raise
    failed = store.job(job.id)
    assert failed is not None
    assert failed.state == "failed"
    assert failed.reason is not None and failed.reason.startswith("internal_error")
    assert "secret" not in failed.reason and "PATIENT" not in failed.reason
    assert failed.timings == {"quiet_wait": 10.0, "queue": 3.0}


def test_a_retried_job_gets_its_transient_retries_again(store: JobStore, sleeps: list[float]) -> None:
    """retry() of a failed job resets run_attempts: a job that failed after max_run_attempts of
    503s (the back end was away) and is retried by hand is queued again on its first 503."""
    job = claimed(store)
    scheduler = Scheduler(store, settings(max_run_attempts=2), raising(BackendUnavailable("away")), delivered_ok)
    asyncio.run(scheduler.run_job(job))
    asyncio.run(scheduler.run_job(store.claim_next(now=time.time() + 60)))  # type: ignore[arg-type]
    assert store.job(job.id).state == "failed"  # type: ignore[union-attr]
    store.retry(job.id, deliver=True)
    rerun = store.claim_next()
    assert rerun is not None and rerun.id == job.id
    asyncio.run(scheduler.run_job(rerun))
    assert store.job(job.id).state == "queued"  # type: ignore[union-attr]


# --- deliver_job --------------------------------------------------------------------------------------


def _done(store: JobStore) -> Job:
    job = claimed(store)
    store.complete(job.id, [seg()], {"inference": 1.0}, deliver=True)
    (due,) = store.due_deliveries()
    return due


def test_a_failed_delivery_is_retried_with_back_off_then_given_up(store: JobStore) -> None:
    job = _done(store)

    async def deliver(job: Job) -> None:
        raise DeliveryError("PACS answered HTTP 503")

    scheduler = Scheduler(store, settings(delivery_attempts=3, delivery_backoff_s=2.0), returning(output()), deliver)
    for attempt, delay in ((1, 2.0), (2, 4.0)):
        before = time.time()
        asyncio.run(scheduler.deliver_job(job))
        after = time.time()
        job = store.job(job.id)  # type: ignore[assignment]
        assert (job.state, job.delivery_attempts, job.reason) == ("done", attempt, "delivery: PACS answered HTTP 503")
        assert before + delay <= job.next_delivery_at <= after + delay  # type: ignore[operator]
        assert store.due_deliveries(now=after) == []
        (job,) = store.due_deliveries(now=after + delay)
    asyncio.run(scheduler.deliver_job(job))
    gave_up = store.job(job.id)
    assert gave_up is not None
    assert (gave_up.state, gave_up.delivery_attempts, gave_up.next_delivery_at) == ("delivery_failed", 3, None)
    assert store.due_deliveries(now=time.time() + 10_000) == []


def test_a_successful_delivery_marks_the_job_delivered_with_its_timing(store: JobStore) -> None:
    job = _done(store)
    seen: list[tuple[str, tuple[Result, ...]]] = []

    async def deliver(job: Job) -> None:
        seen.append((job.id, job.results))
        await asyncio.sleep(0.05)

    asyncio.run(Scheduler(store, settings(), returning(output()), deliver).deliver_job(job))
    assert seen == [(job.id, (seg(),))]
    delivered = store.job(job.id)
    assert delivered is not None
    assert (delivered.state, delivered.reason, delivered.next_delivery_at) == ("delivered", None, None)
    assert delivered.delivered_at is not None
    assert 0.05 <= delivered.timings["delivery"] < 5
    assert delivered.timings["inference"] == 1.0


# --- run_forever --------------------------------------------------------------------------------------


async def _until(condition: Callable[[], bool], task: asyncio.Task, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition() and not task.done() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)


async def _stop(task: asyncio.Task) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def test_run_forever_takes_a_series_from_waiting_to_delivered(store: JobStore) -> None:
    series = f"{STUDY}.1"
    during_run: list[Job] = []
    during_delivery: list[Job] = []

    async def run(claimed_job: Job) -> RunOutput:
        during_run.append(store.job(claimed_job.id))  # type: ignore[arg-type]
        return output()

    async def deliver(done_job: Job) -> None:
        during_delivery.append(store.job(done_job.id))  # type: ignore[arg-type]

    scheduler = Scheduler(store, settings(quiet_s=0.1, poll_s=0.02), run, deliver)
    job_ids: list[str] = []

    async def main() -> None:
        started = time.monotonic()
        task = asyncio.get_running_loop().create_task(scheduler.run_forever())
        await asyncio.sleep(0.05)
        record(store, series)
        (waiting,) = store.jobs()
        job_ids.append(waiting.id)
        assert waiting.state == "waiting"
        await _until(lambda: store.job(waiting.id).state == "delivered", task)  # type: ignore[union-attr]
        assert not task.done(), task
        assert time.monotonic() - started < 3
        await asyncio.sleep(0.1)  # the loop goes on and does nothing more
        await _stop(task)

    asyncio.run(main())
    (job_id,) = job_ids
    (running,) = during_run
    assert running.state == "running" and running.run_attempts == 1
    assert running.queued_at is not None and running.queued_at - running.last_instance_at >= 0.1 - 1e-6
    (done,) = during_delivery
    assert done.state == "done" and done.results == (seg(),)
    assert running.id == done.id == job_id
    final = store.job(job_id)
    assert final is not None
    assert final.state == "delivered" and final.delivery_attempts == 1
    assert {"quiet_wait", "queue", "inference", "seg", "delivery"} <= final.timings.keys()
    assert final.timings["quiet_wait"] >= 0.1 - 1e-4
    assert store.counts()["delivered"] == 1


def test_run_forever_reruns_a_job_interrupted_by_a_stop_and_goes_on_after_a_bug(store: JobStore) -> None:
    interrupted = claimed(store, f"{STUDY}.1")  # left running by a killed process
    record(store, f"{STUDY}.2")
    record(store, f"{STUDY}.3")
    buggy_series = f"{STUDY}.2"

    async def run(job: Job) -> RunOutput:
        if buggy_series in job.series:
            raise RuntimeError("a bug")
        return output(seg(f"2.25.{len(job.series)}{next(iter(job.series))[-1]}"))

    scheduler = Scheduler(store, settings(quiet_s=0.05, poll_s=0.02), run, None)

    async def main() -> None:
        task = asyncio.get_running_loop().create_task(scheduler.run_forever())
        await _until(lambda: store.counts()["done"] == 2 and store.counts()["failed"] == 1, task)
        assert not task.done(), task
        await _stop(task)

    asyncio.run(main())
    states = {next(iter(j.series)): (j.state, j.run_attempts) for j in store.jobs()}
    assert states == {f"{STUDY}.1": ("done", 2), f"{STUDY}.2": ("failed", 1), f"{STUDY}.3": ("done", 1)}
    assert store.job(interrupted.id).state == "done"  # type: ignore[union-attr]


def test_run_forever_backs_off_a_transient_error(store: JobStore) -> None:
    """run_job requeues the job *before* its back-off sleep, so with max_running=2
    the other free slot claims it again at once (no back-off for the job) while the failed slot
    sleeps holding its place (two 503s in a row stall every job for up to 30 s)."""
    record(store, f"{STUDY}.1")
    calls: list[float] = []

    async def run(job: Job) -> RunOutput:
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise BackendUnavailable("worker not ready")
        return output()

    scheduler = Scheduler(store, settings(quiet_s=0.05, poll_s=0.02, max_running=2), run, None)

    async def main() -> None:
        task = asyncio.get_running_loop().create_task(scheduler.run_forever())
        await _until(lambda: store.counts()["done"] == 1, task, timeout_s=6)
        await _stop(task)

    asyncio.run(main())
    assert len(calls) == 2
    assert calls[1] - calls[0] >= 1.5  # the first back-off is min(2 ** 1, 30) = 2 s


def test_an_unexpected_delivery_error_does_not_stop_the_loop(store: JobStore) -> None:
    """deliver_job catches only DeliveryError; anything else a delivery raises (an
    OSError reading a result file, httpx.InvalidURL from a mistyped MEDSEG_PACS_URL, an
    AttributeError on a malformed PACS answer) leaves _deliver_due, the task group and
    run_forever, and the whole job loop (runs included) stops for good."""
    record(store, f"{STUDY}.1", now=time.time() - 10)
    first: list[str] = []
    delivered: list[str] = []

    async def deliver(job: Job) -> None:
        if not first:
            first.append(job.id)
            raise FileNotFoundError("result file gone")
        delivered.append(job.id)

    scheduler = Scheduler(store, settings(quiet_s=0.05, poll_s=0.02), returning(output()), deliver)

    async def main() -> None:
        task = asyncio.get_running_loop().create_task(scheduler.run_forever())
        await _until(lambda: bool(first), task)
        record(store, f"{STUDY}.2")  # a later series must still be segmented and delivered
        await _until(lambda: len(delivered) == 1 and delivered[0] != first[0], task)
        still_running = not task.done()
        if still_running:
            await _stop(task)
        assert still_running, repr(task.exception())

    asyncio.run(main())
    second = [j for j in store.jobs() if j.id != first[0]]
    assert len(second) == 1 and second[0].state == "delivered"
