"""Unit tests of the DICOMweb inbox's job store: services/jobs/store.py (a real SQLite file in tmp_path)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from services.jobs.store import InstanceConflict, STATES, Job, JobStore, Placement, Result, StoredInstance

ROOT = Path(__file__).resolve().parents[2]
STUDY = "1.2.826.0.1.3680043.8.498.1"
SLICES = Placement("ct-mr-slices", "swtr_unet")
BRATS = "brats-mr"
T0 = 1_000_000.0


def series_uid(n: int, study: str = STUDY) -> str:
    return f"{study}.{n}"


def instance(sop: str, series: str, study: str = STUDY, excluded: str | None = None) -> StoredInstance:
    return StoredInstance(
        sop_uid=sop, sop_class="1.2.840.10008.5.1.4.1.1.2", study_uid=study, series_uid=series,
        path=Path(f"/spool/instances/{study}/{series}/{sop}.dcm"), bytes=1234, excluded=excluded,
    )


def channel(name: str) -> Placement:
    return Placement(BRATS, "hnf_net", name)


def result(sop: str, series: str = "9.9.1", study: str = STUDY) -> Result:
    return Result(sop, "1.2.840.10008.5.1.4.1.1.66.4", study, series, "SEG", Path(f"/spool/results/{sop}.dcm"), 99)


@pytest.fixture
def store(tmp_path: Path):
    s = JobStore(tmp_path / "db" / "jobs.sqlite3")
    yield s
    s.close()


def only_job(store: JobStore) -> Job:
    jobs = store.jobs()
    assert len(jobs) == 1, jobs
    return jobs[0]


def record_series(store: JobStore, series: str, count: int, placement: Placement = SLICES, now: float = T0,
                  study: str = STUDY, first: int = 0) -> None:
    for i in range(first, first + count):
        assert store.record_instance(instance(f"{series}.{i}", series, study), placement, now=now + i * 0.01)


def queued_job(store: JobStore, series: str, count: int = 3, now: float = T0) -> Job:
    """A job of ``count`` instances, promoted to queued at ``now + 100``."""
    record_series(store, series, count, now=now)
    (job_id,) = store.promote_quiet(10.0, now=now + 100)
    job = store.job(job_id)
    assert job is not None and job.state == "queued"
    return job


# --- ingest ------------------------------------------------------------------------------------------


def test_a_routed_instance_creates_a_waiting_job_that_the_rest_of_its_series_joins(store: JobStore) -> None:
    series = series_uid(1)
    assert store.record_instance(instance("1.1", series), SLICES, now=T0)
    job = only_job(store)
    assert (job.state, job.route, job.model, job.study_uid) == ("waiting", "ct-mr-slices", "swtr_unet", STUDY)
    assert job.series == {series: None}
    assert job.instance_count == 1
    assert job.created_at == job.last_instance_at == T0

    assert store.record_instance(instance("1.2", series), SLICES, now=T0 + 5)
    assert store.record_instance(instance("1.3", series), SLICES, now=T0 + 7)
    job = only_job(store)
    assert job.instance_count == 3
    assert job.last_instance_at == T0 + 7
    assert job.created_at == T0
    assert [p.name for _, p in store.job_instances(job.id)] == ["1.1.dcm", "1.2.dcm", "1.3.dcm"]
    assert {s for s, _ in store.job_instances(job.id)} == {series}


def test_each_series_gets_its_own_job(store: JobStore) -> None:
    record_series(store, series_uid(1), 2)
    record_series(store, series_uid(2), 3)
    jobs = {tuple(j.series): j.instance_count for j in store.jobs()}
    assert jobs == {(series_uid(1),): 2, (series_uid(2),): 3}


def test_a_resent_instance_returns_false_and_changes_no_job(store: JobStore) -> None:
    series = series_uid(1)
    record_series(store, series, 2, now=T0)
    before = only_job(store)
    # re-sent while the job waits: its quiet period is not restarted, nothing is added
    assert store.record_instance(instance(f"{series}.0", series), SLICES, now=T0 + 50) is False
    assert only_job(store) == before
    # re-sent after the job was queued (a PACS re-forwarding a stable series): no new job
    assert store.promote_quiet(10.0, now=T0 + 100) == [before.id]
    queued = store.job(before.id)
    assert store.record_instance(instance(f"{series}.1", series), SLICES, now=T0 + 200) is False
    assert store.jobs() == [queued]
    assert store.counts()["waiting"] == 0


def test_an_excluded_instance_or_one_no_route_takes_creates_no_job(store: JobStore) -> None:
    assert store.record_instance(instance("5.1", series_uid(5), excluded="derived_object"), SLICES, now=T0)
    assert store.record_instance(instance("6.1", series_uid(6)), None, now=T0)
    assert store.jobs() == []
    assert store.counts() == {state: 0 for state in STATES}
    # both are stored (a re-send is recognised)
    assert store.record_instance(instance("5.1", series_uid(5), excluded="derived_object"), SLICES) is False
    assert store.record_instance(instance("6.1", series_uid(6)), None) is False


def test_an_excluded_instance_in_a_routed_series_is_not_part_of_its_job(store: JobStore) -> None:
    series = series_uid(1)
    assert store.record_instance(instance("1.1", series, excluded="localizer"), SLICES, now=T0)
    assert store.record_instance(instance("1.2", series), SLICES, now=T0 + 1)
    assert store.record_instance(instance("1.3", series, excluded="localizer"), SLICES, now=T0 + 2)
    job = only_job(store)
    assert job.instance_count == 1
    assert job.last_instance_at == T0 + 1  # an excluded instance does not restart the quiet period
    assert [p.name for _, p in store.job_instances(job.id)] == ["1.2.dcm"]


# --- scheduling ---------------------------------------------------------------------------------------


def test_promote_quiet_queues_only_jobs_quiet_for_the_period(store: JobStore) -> None:
    record_series(store, series_uid(1), 1, now=T0)
    record_series(store, series_uid(2), 1, now=T0 + 8)
    early = store.promote_quiet(10.0, now=T0 + 9.99)
    assert early == []
    assert store.counts()["waiting"] == 2

    (first,) = store.promote_quiet(10.0, now=T0 + 10)
    job = store.job(first)
    assert job is not None
    assert (job.state, job.series, job.queued_at) == ("queued", {series_uid(1): None}, T0 + 10)
    assert store.counts()["waiting"] == 1

    # a new instance restarts the second series' period
    record_series(store, series_uid(2), 1, now=T0 + 17, first=1)
    assert store.promote_quiet(10.0, now=T0 + 18.5) == []
    (second,) = store.promote_quiet(10.0, now=T0 + 27.01)
    assert store.job(second).series == {series_uid(2): None}  # type: ignore[union-attr]
    assert store.promote_quiet(10.0, now=T0 + 1000) == []


def test_claim_next_returns_the_oldest_queued_job_running_with_its_attempt_counted(store: JobStore) -> None:
    record_series(store, series_uid(1), 1, now=T0)
    record_series(store, series_uid(2), 1, now=T0 + 1)
    record_series(store, series_uid(3), 1, now=T0 + 50)
    both = store.promote_quiet(10.0, now=T0 + 20)  # same queued_at: the older job first
    store.promote_quiet(10.0, now=T0 + 80)
    assert len(both) == 2

    claimed = [store.claim_next(now=T0 + 100 + i) for i in range(3)]
    assert [next(iter(j.series)) for j in claimed if j] == [series_uid(1), series_uid(2), series_uid(3)]
    for i, job in enumerate(claimed):
        assert job is not None
        assert (job.state, job.run_attempts, job.started_at) == ("running", 1, T0 + 100 + i)
    assert store.claim_next(now=T0 + 200) is None
    assert store.counts()["running"] == 3


def test_claim_next_ignores_waiting_jobs(store: JobStore) -> None:
    record_series(store, series_uid(1), 2, now=T0)
    assert store.claim_next(now=T0 + 1000) is None
    assert only_job(store).state == "waiting"


def test_requeue_and_fail(store: JobStore) -> None:
    job = queued_job(store, series_uid(1))
    claimed = store.claim_next(now=T0 + 101)
    assert claimed is not None and claimed.id == job.id
    store.requeue(job.id, "backend_unavailable: retrying", run_after=T0 + 102)
    again = store.job(job.id)
    assert (again.state, again.reason) == ("queued", "backend_unavailable: retrying")  # type: ignore[union-attr]
    assert store.claim_next(now=T0 + 101.5) is None  # not before run_after
    claimed = store.claim_next(now=T0 + 102)
    assert claimed is not None and claimed.run_attempts == 2
    store.fail(job.id, "not a volume", {"queue": 1.0}, now=T0 + 103)
    failed = store.job(job.id)
    assert failed is not None
    assert (failed.state, failed.reason, failed.finished_at, failed.timings) == ("failed", "not a volume", T0 + 103, {"queue": 1.0})


def test_requeue_interrupted_after_a_restart_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    store = JobStore(path)
    running = queued_job(store, series_uid(1), count=4)
    done = queued_job(store, series_uid(2), count=2, now=T0 + 1)
    assert store.claim_next(now=T0 + 200).id == running.id  # type: ignore[union-attr]
    assert store.claim_next(now=T0 + 201).id == done.id  # type: ignore[union-attr]
    store.complete(done.id, [result("7.7.1")], {"inference": 1.0}, deliver=True, now=T0 + 300)
    record_series(store, series_uid(3), 2, now=T0 + 400)  # a waiting job
    before = {j.id: j for j in store.jobs()}
    store.close()

    reopened = JobStore(path)
    try:
        assert reopened.requeue_interrupted(max_runs=5) == 1
        after = {j.id: j for j in reopened.jobs()}
        assert after.keys() == before.keys()
        assert after[running.id].state == "queued"
        assert after[running.id].instance_count == 4
        assert after[running.id].run_attempts == 1
        assert after[done.id] == before[done.id]
        assert after[done.id].results == (result("7.7.1"),)
        waiting = [j for j in after.values() if j.state == "waiting"]
        assert len(waiting) == 1 and waiting[0].instance_count == 2
        assert reopened.is_result("7.7.1")
        assert [j.id for j in reopened.due_deliveries(now=T0 + 500)] == [done.id]
        assert len(reopened.job_instances(running.id)) == 4
        # every stored instance is still known: a re-send is recognised
        assert reopened.record_instance(instance(f"{series_uid(1)}.0", series_uid(1)), SLICES) is False
        rerun = reopened.claim_next(now=T0 + 600)
        assert rerun is not None and (rerun.id, rerun.run_attempts) == (running.id, 2)
        assert reopened.requeue_interrupted(max_runs=5) == 1  # a second restart again
    finally:
        reopened.close()


def test_a_killed_process_loses_nothing_it_committed(tmp_path: Path) -> None:
    """SIGKILL without close(): what record_instance / claim_next returned is in the file."""
    path = tmp_path / "jobs.sqlite3"
    code = f"""
import os, signal
from pathlib import Path
from services.jobs.store import JobStore, Placement, StoredInstance
s = JobStore(Path({str(path)!r}))
for i in range(20):
    s.record_instance(StoredInstance(f"1.2.{{i}}", "1.2.3", "1.2", "1.2.1", Path(f"/x/{{i}}"), 10, None),
                      Placement("ct-mr-slices", "swtr_unet"), now=100.0 + i)
s.promote_quiet(1.0, now=1000.0)
assert s.claim_next(now=1001.0) is not None
os.kill(os.getpid(), signal.SIGKILL)
"""
    killed = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert killed.returncode == -9, killed.stderr[-2000:]
    store = JobStore(path)
    try:
        assert store.counts()["running"] == 1
        assert store.requeue_interrupted(max_runs=5) == 1
        job = only_job(store)
        assert (job.state, job.instance_count, job.run_attempts) == ("queued", 20, 1)
    finally:
        store.close()


def test_a_job_interrupted_at_every_run_fails_instead_of_running_forever(store: JobStore) -> None:
    """A job that takes the process down with it would otherwise crash every restart."""
    job = queued_job(store, series_uid(1))
    for run in (1, 2, 3):
        claimed = store.claim_next(now=T0 + 200 + run)
        assert claimed is not None and claimed.run_attempts == run
        requeued = store.requeue_interrupted(max_runs=3)  # a restart
        assert requeued == (1 if run < 3 else 0)
    failed = store.job(job.id)
    assert failed is not None and failed.state == "failed"
    assert failed.reason is not None and failed.reason.startswith("interrupted")


def test_an_instance_uid_stored_in_another_series_is_a_conflict(store: JobStore) -> None:
    record_series(store, series_uid(1), 2, now=T0)
    moved = instance(f"{series_uid(1)}.0", series_uid(2))
    with pytest.raises(InstanceConflict):
        store.record_instance(moved, SLICES, now=T0 + 1)
    assert store.location(moved.sop_uid) == (STUDY, series_uid(1))
    assert only_job(store).instance_count == 2


# --- multi-series (channel) routes ----------------------------------------------------------------------


BRATS_SERIES = {"t1": 11, "t1ce": 12, "t2": 13, "flair": 14}


def test_a_channel_route_gathers_the_studys_series_into_one_job(store: JobStore) -> None:
    for name, n in BRATS_SERIES.items():
        record_series(store, series_uid(n), 3, placement=channel(name), now=T0 + n)
    # a series of the same study on a single-series route, and the same route in another study
    record_series(store, series_uid(20), 2, now=T0)
    other = "1.2.826.0.1.3680043.8.498.2"
    record_series(store, series_uid(1, other), 2, placement=channel("t1"), study=other, now=T0)

    jobs = {(j.study_uid, j.route): j for j in store.jobs(limit=10)}
    assert len(jobs) == 3
    brats = jobs[(STUDY, BRATS)]
    assert (brats.model, brats.state, brats.instance_count) == ("hnf_net", "waiting", 12)
    assert brats.series == {series_uid(n): name for name, n in BRATS_SERIES.items()}
    assert {s for s, _ in store.job_instances(brats.id)} == {series_uid(n) for n in BRATS_SERIES.values()}
    assert jobs[(STUDY, "ct-mr-slices")].series == {series_uid(20): None}
    assert jobs[(other, BRATS)].series == {series_uid(1, other): "t1"}
    assert [j.id for j in store.jobs(study_uid=other)] == [jobs[(other, BRATS)].id]
    # the study's job waits for its last series
    assert set(store.promote_quiet(10.0, now=T0 + 14 + 9)) == {jobs[(other, BRATS)].id, jobs[(STUDY, "ct-mr-slices")].id}
    assert store.promote_quiet(10.0, now=T0 + 14.03 + 10) == [brats.id]


def test_a_series_that_grows_after_its_job_was_queued_gets_a_new_job_with_the_whole_series(store: JobStore) -> None:
    series = series_uid(1)
    first = queued_job(store, series, count=3)
    assert store.claim_next(now=T0 + 101).id == first.id  # type: ignore[union-attr]
    assert store.record_instance(instance(f"{series}.3", series), SLICES, now=T0 + 150)
    assert store.record_instance(instance(f"{series}.4", series), SLICES, now=T0 + 151)
    new = [j for j in store.jobs() if j.id != first.id]
    assert len(new) == 1
    assert (new[0].state, new[0].series, new[0].instance_count) == ("waiting", {series: None}, 5)
    assert sorted(p.name for _, p in store.job_instances(new[0].id)) == [f"{series}.{i}.dcm" for i in range(5)]
    assert store.job(first.id).instance_count == 3  # type: ignore[union-attr]
    assert store.job(first.id).state == "running"  # type: ignore[union-attr]


def test_a_channel_series_that_grows_after_its_job_was_queued_gets_a_job_with_every_channel(store: JobStore) -> None:
    """Regression (fixed): the new waiting job of a multi-series route holds only the grown series, so it
    is bound to fail with missing_channels; it should take the study's other channel series too."""
    for name, n in BRATS_SERIES.items():
        record_series(store, series_uid(n), 3, placement=channel(name), now=T0)
    (first,) = store.promote_quiet(10.0, now=T0 + 100)
    store.claim_next(now=T0 + 101)
    t2 = series_uid(BRATS_SERIES["t2"])
    assert store.record_instance(instance(f"{t2}.3", t2), channel("t2"), now=T0 + 150)
    (new,) = [j for j in store.jobs() if j.id != first]
    assert new.state == "waiting"
    assert new.series == {series_uid(n): name for name, n in BRATS_SERIES.items()}
    assert new.instance_count == 13


# --- results and the outbox -----------------------------------------------------------------------------


def test_complete_records_results_and_puts_the_job_in_the_outbox(store: JobStore) -> None:
    job = queued_job(store, series_uid(1))
    store.claim_next(now=T0 + 101)
    store.complete(job.id, [result("8.8.1"), result("8.8.2")], {"inference": 2.5}, deliver=True, now=T0 + 110)
    done = store.job(job.id)
    assert done is not None
    assert (done.state, done.finished_at, done.timings, done.next_delivery_at) == ("done", T0 + 110, {"inference": 2.5}, T0 + 110)
    assert done.results == (result("8.8.1"), result("8.8.2"))
    assert store.due_deliveries(now=T0 + 109) == []
    assert [j.id for j in store.due_deliveries(now=T0 + 110)] == [job.id]
    assert store.due_deliveries(now=T0 + 110)[0].results == done.results


def test_complete_without_delivery_leaves_the_outbox_empty(store: JobStore) -> None:
    job = queued_job(store, series_uid(1))
    store.claim_next(now=T0 + 101)
    store.complete(job.id, [result("8.8.1")], {}, deliver=False, now=T0 + 110)
    assert store.job(job.id).state == "done"  # type: ignore[union-attr]
    assert store.due_deliveries(now=T0 + 10_000) == []


def _done(store: JobStore, series: str = series_uid(1)) -> Job:
    job = queued_job(store, series)
    store.claim_next(now=T0 + 101)
    store.complete(job.id, [result(f"{series}.99")], {"inference": 1.0}, deliver=True, now=T0 + 110)
    return store.job(job.id)  # type: ignore[return-value]


def test_delivery_failed_with_a_next_time_keeps_the_job_done_and_retries_it_then(store: JobStore) -> None:
    job = _done(store)
    store.delivery_failed(job.id, "delivery: PACS answered HTTP 503", T0 + 200)
    after = store.job(job.id)
    assert after is not None
    assert (after.state, after.delivery_attempts, after.next_delivery_at, after.reason) == (
        "done", 1, T0 + 200, "delivery: PACS answered HTTP 503")
    assert store.due_deliveries(now=T0 + 199) == []
    assert [j.id for j in store.due_deliveries(now=T0 + 200)] == [job.id]


def test_delivery_failed_without_a_next_time_gives_up(store: JobStore) -> None:
    job = _done(store)
    store.delivery_failed(job.id, "delivery: one", T0 + 200)
    store.delivery_failed(job.id, "delivery: two", None)
    after = store.job(job.id)
    assert after is not None
    assert (after.state, after.delivery_attempts, after.next_delivery_at, after.reason) == (
        "delivery_failed", 2, None, "delivery: two")
    assert store.due_deliveries(now=T0 + 10_000) == []
    assert store.counts()["delivery_failed"] == 1


def test_delivered(store: JobStore) -> None:
    job = _done(store)
    store.delivery_failed(job.id, "delivery: one", T0 + 120)
    store.delivered(job.id, 0.123456, now=T0 + 130)
    after = store.job(job.id)
    assert after is not None
    assert (after.state, after.delivered_at, after.next_delivery_at, after.reason, after.delivery_attempts) == (
        "delivered", T0 + 130, None, None, 2)
    assert after.timings == {"inference": 1.0, "delivery": 0.1235}
    assert store.due_deliveries(now=T0 + 10_000) == []


def test_retry_delivers_a_delivery_failed_job_again_from_its_first_try(store: JobStore) -> None:
    job = _done(store)
    store.delivery_failed(job.id, "delivery: one", None)
    retried = store.retry(job.id, deliver=True, now=T0 + 500)
    assert retried is not None
    assert (retried.state, retried.delivery_attempts, retried.next_delivery_at) == ("done", 0, T0 + 500)
    assert retried.results == (result(f"{series_uid(1)}.99"),)
    assert [j.id for j in store.due_deliveries(now=T0 + 500)] == [job.id]


def test_retry_without_a_pacs_leaves_a_retried_delivery_out_of_the_outbox(store: JobStore) -> None:
    job = _done(store)
    store.delivery_failed(job.id, "delivery: one", None)
    assert store.retry(job.id, deliver=False, now=T0 + 500).state == "done"  # type: ignore[union-attr]
    assert store.due_deliveries(now=T0 + 10_000) == []


def test_retry_runs_a_failed_job_again(store: JobStore) -> None:
    job = queued_job(store, series_uid(1))
    store.claim_next(now=T0 + 101)
    store.fail(job.id, "not a volume", {}, now=T0 + 102)
    retried = store.retry(job.id, deliver=True, now=T0 + 500)
    assert retried is not None
    assert (retried.state, retried.reason, retried.queued_at) == ("queued", None, T0 + 500)
    again = store.claim_next(now=T0 + 501)
    assert again is not None and again.id == job.id and again.instance_count == 3


def test_retry_leaves_other_states_alone_and_knows_no_unknown_job(store: JobStore) -> None:
    done = _done(store, series_uid(2))
    record_series(store, series_uid(1), 1, now=T0 + 1000)
    (waiting,) = [j for j in store.jobs() if j.state == "waiting"]
    assert store.retry(waiting.id, deliver=True) == waiting
    assert store.retry(done.id, deliver=True, now=T0 + 9999) == done
    store.delivered(done.id, 0.5, now=T0 + 200)
    delivered = store.job(done.id)
    assert store.retry(done.id, deliver=True) == delivered
    assert store.retry("no-such-job", deliver=True) is None


def test_results_filter_by_series_and_instance_and_is_result(store: JobStore) -> None:
    job = queued_job(store, series_uid(1))
    store.claim_next(now=T0 + 101)
    other_study = "1.2.826.0.1.3680043.8.498.2"
    rows = [result("8.1", "9.1"), result("8.2", "9.1"), result("8.3", "9.2"), result("8.4", "9.1", other_study)]
    store.complete(job.id, rows, {}, deliver=False, now=T0 + 110)
    assert store.results(STUDY) == rows[:3]
    assert store.results(STUDY, series_uid="9.1") == rows[:2]
    assert store.results(STUDY, series_uid="9.1", sop_uid="8.2") == [rows[1]]
    assert store.results(STUDY, series_uid="9.2", sop_uid="8.2") == []
    assert store.results(STUDY, sop_uid="8.3") == [rows[2]]
    assert store.results(other_study) == [rows[3]]
    assert store.results("1.2.3.4") == []
    assert all(store.is_result(r.sop_uid) for r in rows)
    assert not store.is_result(f"{series_uid(1)}.0")  # a received instance is not a result
    assert not store.is_result("8.9")


def test_counts_and_jobs_newest_first(store: JobStore) -> None:
    assert store.counts() == dict.fromkeys(STATES, 0)
    for n in range(1, 6):
        record_series(store, series_uid(n), 1, now=T0 + n)
    store.promote_quiet(10.0, now=T0 + 13.5)  # series 1..3
    store.claim_next(now=T0 + 20)
    job = store.claim_next(now=T0 + 21)
    store.fail(job.id, "x", {}, now=T0 + 22)  # type: ignore[union-attr]
    assert store.counts() == dict.fromkeys(STATES, 0) | {"waiting": 2, "queued": 1, "running": 1, "failed": 1}
    assert [next(iter(j.series)) for j in store.jobs()] == [series_uid(n) for n in range(5, 0, -1)]
    assert len(store.jobs(limit=2)) == 2


# --- concurrency and durability -------------------------------------------------------------------------


def test_concurrent_record_instance_from_8_threads_loses_nothing(store: JobStore) -> None:
    threads, per_thread, series_count = 8, 50, 10
    errors: list[BaseException] = []
    returned: list[bool] = []
    start = threading.Barrier(threads + 1)

    def send(t: int) -> None:
        try:
            start.wait()
            for i in range(per_thread):
                n = t * per_thread + i
                series = series_uid(n % series_count)
                returned.append(store.record_instance(instance(f"{series}.{n}", series), SLICES))
        except BaseException as error:  # noqa: BLE001
            errors.append(error)

    def read() -> None:
        start.wait()
        for _ in range(50):
            store.counts()
            store.jobs()

    workers = [threading.Thread(target=send, args=(t,)) for t in range(threads)]
    reader = threading.Thread(target=read)
    for w in [*workers, reader]:
        w.start()
    for w in [*workers, reader]:
        w.join(timeout=60)
    assert errors == []
    assert returned.count(True) == threads * per_thread
    jobs = store.jobs(limit=1000)
    assert len(jobs) == series_count  # one waiting job per series, never two
    assert sorted(next(iter(j.series)) for j in jobs) == sorted(series_uid(n) for n in range(series_count))
    assert all(j.instance_count == threads * per_thread // series_count for j in jobs)
    assert sum(len(store.job_instances(j.id)) for j in jobs) == threads * per_thread
    # all were stored: each re-send is recognised
    assert not any(store.record_instance(instance(f"{series_uid(n % series_count)}.{n}", series_uid(n % series_count)), SLICES)
                   for n in range(0, threads * per_thread, 37))


def test_the_database_uses_wal(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    JobStore(path).close()
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        db.close()
