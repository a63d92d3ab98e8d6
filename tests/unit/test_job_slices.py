"""A DICOMweb job's slices failing: the job gets one typed error, transient ones first.

Found by ``python -m load faults --kill tritonserver --scenarios pacs,segment``: the slices of a
job run in an anyio task group, which raises every failure as an ExceptionGroup (even one), so a
503 while Triton restarted was no MedsegError to the scheduler: the job failed for good with
"internal_error" instead of running again once the back end was back.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from export.phantoms.dicom_writer import write_series
from services.contract import discover_cards
from services.errors import BackendUnavailable, BadInput, MedsegError, Overloaded, UnprocessableImage
from services.jobs.scheduler import RunOutput, Scheduler, SchedulerSettings
from services.jobs.series_assembly import plan_series
from services.jobs.store import Job, JobStore, Placement, StoredInstance
from services.usecases.run_job import read_series, segment_slices, slices_error

REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"
CARD = discover_cards(REPOSITORY)["swtr_unet"]


async def inline(function, *args):  # noqa: ANN001, ANN202 - the decoder pool's call, in this thread
    return function(*args)


def failing(error: Exception):  # noqa: ANN201 - a GraphRunner
    async def run_graph(model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        await asyncio.sleep(0.01)  # every slice is in flight when the first fails
        raise error

    return run_graph


def slices(tmp_path: Path, count: int = 3):  # noqa: ANN201 - (SeriesInput, SeriesPlan)
    files = write_series(np.full((count, 64, 64), 40.0), (0.8, 0.8), 2.0)
    paths = []
    for i, data in enumerate(files):
        paths.append(tmp_path / f"{i}.dcm")
        paths[-1].write_bytes(data)
    series = read_series(paths)
    return series, plan_series(series.headers)


@pytest.mark.parametrize("error", [BackendUnavailable("down"), Overloaded("busy")])
def test_a_transient_slice_failure_is_that_typed_error(tmp_path: Path, error: MedsegError) -> None:
    series, plan = slices(tmp_path)
    with pytest.raises(type(error)) as raised:
        asyncio.run(segment_slices(series, plan, CARD, failing(error), inline))
    assert raised.value.status == error.status


def test_a_slice_the_model_refuses_is_unprocessable_and_named(tmp_path: Path) -> None:
    series, plan = slices(tmp_path)
    with pytest.raises(UnprocessableImage, match=r"slice \d of 3: odd"):
        asyncio.run(segment_slices(series, plan, CARD, failing(BadInput("odd")), inline))


def test_a_bug_in_a_slice_stays_a_bug(tmp_path: Path) -> None:
    series, plan = slices(tmp_path)
    with pytest.raises(BaseExceptionGroup) as raised:
        asyncio.run(segment_slices(series, plan, CARD, failing(ValueError("bug")), inline))
    assert raised.value.subgroup(ValueError) is not None


def test_of_several_failures_the_transient_one_stands_for_the_job() -> None:
    refused, away = UnprocessableImage("slice 1 of 3: odd"), BackendUnavailable("down")
    assert slices_error(ExceptionGroup("slices", [refused, ExceptionGroup("inner", [away])])) is away
    assert slices_error(ExceptionGroup("slices", [refused])) is refused
    assert slices_error(ExceptionGroup("slices", [away, ValueError("bug")])) is None


def test_a_job_whose_slices_meet_a_503_runs_again_instead_of_failing(tmp_path: Path) -> None:
    series, plan = slices(tmp_path)
    store = JobStore(tmp_path / "jobs.sqlite3")
    try:
        for header, path in zip(series.headers, series.paths):
            stored = StoredInstance(header.SOPInstanceUID, header.SOPClassUID, header.StudyInstanceUID,
                                    header.SeriesInstanceUID, path, path.stat().st_size, None)
            assert store.record_instance(stored, Placement("ct-mr-slices", "swtr_unet"), now=1.0)
        store.promote_quiet(0.0, now=2.0)
        job = store.claim_next(now=3.0)
        assert job is not None

        async def run(job: Job) -> RunOutput:  # the service's run_inbox_job while Triton is away
            await segment_slices(series, plan, CARD, failing(BackendUnavailable("down")), inline)
            raise AssertionError("the slices cannot succeed")

        settings = SchedulerSettings(quiet_s=0.0, delivery_attempts=1, delivery_backoff_s=1.0, max_run_attempts=3)
        asyncio.run(Scheduler(store, settings, run, None).run_job(job))
        after = store.job(job.id)
        assert after is not None and (after.state, after.reason) == ("queued", "backend_unavailable: retrying")
    finally:
        store.close()
