"""One job of the DICOMweb inbox as plain functions: its series assembled, segmented by its model
(every slice through the card's 2-D pipeline, or the co-registered channels as one volume), and
the label maps written as a DICOM SEG in the source study.

A 2-D model's slices go through exactly the code of POST /v1/segment, so a SEG frame equals the
PNG route's answer for that instance.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio
import numpy as np
import pydicom
from pydicom.dataset import Dataset

from services.codecs import decode
from services.codecs.dicom import quiet_decoders
from services.codecs.seg import build_segmentation, segmentation_bytes
from services.contract import ModelCard
from services.errors import MedsegError, UnprocessableImage
from services.jobs.series_assembly import SeriesPlan, plan_series, require_same_grid, require_volume
from services.jobs.spool import Spool
from services.jobs.scheduler import TRANSIENT_STATUSES, RunOutput
from services.jobs.store import Job, JobStore, Result
from services.pipelines import FRAME_PIPELINES
from services.pipelines.base import DecodeRunner, FrameRequest
from services.pipelines.ensemble import GraphRunner
from services.usecases.segment_volume import segment_channels

SLICES_IN_FLIGHT = 8  # slices of one job submitted together, so that the worker batches them


@dataclass(frozen=True)
class SeriesInput:
    """One series of a job: its instances' headers (no pixels) and spool paths, in one order."""

    headers: tuple[Dataset, ...]
    paths: tuple[Path, ...]


class Stopwatch:
    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.timings[stage] = round(self.timings.get(stage, 0.0) + now - self._last, 4)
        self._last = now


def read_series(paths: Sequence[Path]) -> SeriesInput:
    """Headers of spooled instances (pixels not read)."""
    quiet_decoders()
    headers = tuple(pydicom.dcmread(path, stop_before_pixels=True) for path in paths)
    return SeriesInput(headers, tuple(paths))


async def segment_slices(
    series: SeriesInput, plan: SeriesPlan, card: ModelCard, run_graph: GraphRunner, decoding: DecodeRunner
) -> list[np.ndarray]:
    """Each planned instance through the card's 2-D pipeline → its (frames, rows, cols) labels,
    in ``plan.instances`` order."""
    pipeline = FRAME_PIPELINES.get(card.task)
    if pipeline is None:
        raise UnprocessableImage(f"model {card.name!r} ({card.task}) does not segment single images")
    gate = anyio.Semaphore(SLICES_IN_FLIGHT)
    labels: dict[int, np.ndarray] = {}

    async def one(index: int) -> None:
        async with gate:
            data = await anyio.to_thread.run_sync(series.paths[index].read_bytes)
            try:
                seg = await pipeline.segment(FrameRequest(data), card, run_graph, decoding)
            except MedsegError as error:
                if error.status in TRANSIENT_STATUSES:
                    raise
                position = plan.instances.index(index) + 1
                raise UnprocessableImage(f"slice {position} of {len(plan.instances)}: {error.message}") from None
            labels[index] = seg.labels

    try:
        async with anyio.create_task_group() as group:
            for index in plan.instances:
                group.start_soon(one, index)
    except BaseExceptionGroup as failures:
        typed = slices_error(failures)
        if typed is None:
            raise
        raise typed from None
    return [labels[index] for index in plan.instances]


def slices_error(failures: BaseExceptionGroup) -> MedsegError | None:
    """The typed error that stands for a job's failed slices, which the task group raises together
    (always as a group, even one): a transient one (429 / 503 / 504: the job runs again later)
    before any other; None when one of them is not a typed error (a bug, reported as it is)."""
    typed, others = failures.split(MedsegError)
    if typed is None or others is not None:
        return None
    errors = list(_leaves(typed))
    return next((e for e in errors if e.status in TRANSIENT_STATUSES), errors[0])


def _leaves(error: BaseException) -> Iterator[MedsegError]:
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            yield from _leaves(inner)
    else:
        assert isinstance(error, MedsegError)
        yield error


async def segment_volume_series(
    channels: dict[str, SeriesInput], card: ModelCard, run_graph: GraphRunner, decoding: DecodeRunner
) -> tuple[SeriesPlan, np.ndarray]:
    """Co-registered channel series (one per card channel, same grid) → the plan of the first
    channel and its (slices, rows, cols) labels in plan order."""
    missing = [name for name in card.channel_names if name not in channels]
    if missing:
        raise UnprocessableImage(f"missing_channels: no series for {', '.join(missing)} ({card.name} takes {', '.join(card.channel_names)})")
    plans = {name: plan_series(channels[name].headers) for name in card.channel_names}
    for plan in plans.values():
        require_volume(plan)
    require_same_grid(plans)
    volumes = []
    for name in card.channel_names:
        series, plan = channels[name], plans[name]
        frames = {}
        for index in plan.instances:
            image = await decoding(decode, await anyio.to_thread.run_sync(series.paths[index].read_bytes))
            frames[index] = image.pixels
        stack = np.stack([frames[s.instance][s.frame] for s in plan.slices]).astype(np.float32)  # (Z, rows, cols)
        volumes.append(stack.transpose(2, 1, 0))  # (X = cols, Y = rows, Z = slices)
    async def run(patches: np.ndarray) -> np.ndarray:
        outputs = await run_graph(card.name, {card.inputs[0].name: patches})
        return outputs[card.outputs[0].name]

    labels = await segment_channels(np.stack(volumes), card, run, parallel_batches=2)
    return plans[card.channel_names[0]], np.ascontiguousarray(labels.transpose(2, 1, 0))


def seg_sources(series: SeriesInput, plan: SeriesPlan, labels: Sequence[np.ndarray]) -> tuple[list[Dataset], np.ndarray]:
    """The SEG's source images and their label frames, aligned: the planned single-frame
    instances in slice order, or the one multi-frame instance with its frames in frame order."""
    instances = plan.instances
    multi = [i for i in instances if int(series.headers[i].get("NumberOfFrames", 1) or 1) > 1]
    if multi and len(instances) > 1:
        raise UnprocessableImage(f"mixed_multiframe: the series has {len(multi)} multi-frame instance(s) among {len(instances)}")
    return [series.headers[i] for i in instances], np.concatenate(list(labels)).astype(np.uint8)


def volume_labels_by_instance(plan: SeriesPlan, volume: np.ndarray) -> list[np.ndarray]:
    """(slices, rows, cols) labels in plan order → one (frames, rows, cols) array per instance of
    ``plan.instances``, each in its own frame order."""
    frames: dict[int, dict[int, np.ndarray]] = {}
    for s, frame_labels in zip(plan.slices, volume):
        frames.setdefault(s.instance, {})[s.frame] = frame_labels
    return [np.stack([frames[i][f] for f in sorted(frames[i])]) for i in plan.instances]


def write_seg(
    spool: Spool, card: ModelCard, sources: list[Dataset], labels: np.ndarray, others: Sequence[Dataset], job_id: str
) -> Result:
    """Build the SEG (UIDs derived from the job id: a re-run writes the same instance), write it
    durably; its result row."""
    seg = build_segmentation(sources, labels, card, other_references=others, uid_seed=job_id)
    data = segmentation_bytes(seg)
    path = spool.write_result(data, str(seg.StudyInstanceUID), str(seg.SeriesInstanceUID), str(seg.SOPInstanceUID))
    return Result(str(seg.SOPInstanceUID), str(seg.SOPClassUID), str(seg.StudyInstanceUID),
                  str(seg.SeriesInstanceUID), "SEG", path, len(data))


async def load_job_series(store: JobStore, job: Job) -> dict[str, SeriesInput]:
    """The headers of a job's instances, by series UID."""
    paths: dict[str, list[Path]] = {}
    for series_uid, path in await anyio.to_thread.run_sync(store.job_instances, job.id):
        paths.setdefault(series_uid, []).append(path)
    return {uid: await anyio.to_thread.run_sync(read_series, items) for uid, items in paths.items()}


async def run_job(
    job: Job, series: dict[str, SeriesInput], card: ModelCard, spool: Spool, run_graph: GraphRunner, decoding: DecodeRunner
) -> RunOutput:
    """Segment a job's series (by series UID) and write its SEG. Typed errors (422 with a named
    reason for what cannot be assembled) fail the job; 429 / 503 / 504 mean "try again later"."""
    watch = Stopwatch()
    others: list[Dataset] = []
    if card.sliding_window is not None:
        by_channel = {job.series[uid]: series[uid] for uid in series if job.series.get(uid)}
        duplicated = sorted({c for c in job.series.values() if c and list(job.series.values()).count(c) > 1})
        if duplicated:
            raise UnprocessableImage(f"ambiguous_channels: more than one series matched {', '.join(duplicated)}")
        watch.lap("assembly")
        plan, volume = await segment_volume_series(by_channel, card, run_graph, decoding)
        reference = by_channel[card.channel_names[0]]
        labels = volume_labels_by_instance(plan, volume)
        others = [h for name in card.channel_names[1:] for h in by_channel[name].headers]
    else:
        if len(series) != 1:
            raise UnprocessableImage(f"one series per job expected; got {len(series)}")
        (reference,) = series.values()
        plan = await anyio.to_thread.run_sync(plan_series, reference.headers)
        watch.lap("assembly")
        labels = await segment_slices(reference, plan, card, run_graph, decoding)
    watch.lap("inference")
    sources, frames = seg_sources(reference, plan, labels)
    result = await anyio.to_thread.run_sync(write_seg, spool, card, sources, frames, others, job.id)
    watch.lap("seg")
    return RunOutput((result,), watch.timings)
