"""BentoML glue: the public ``Segmenter`` service and its batched ``InferenceWorker``.

``bentoml serve services.service:Segmenter`` starts both. Segmenter decodes, preprocesses and
post-processes (its workers scale with I/O); InferenceWorker owns the backend and merges
concurrent calls to the same graph into one run (GraphBatcher). All logic lives in plain modules.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection
from dataclasses import asdict
from http import HTTPStatus
from pathlib import Path
from typing import Annotated, Any, Optional, Union

import anyio
import bentoml
import httpx
import numpy as np
from bentoml.exceptions import BentoMLException
from bentoml.validators import TensorSchema
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from services.codecs.decoder_pool import DecoderPool
from services.codecs.nifti import label_map_nifti
from services.contract import ModelCard, discover_cards
from services.dicomweb.routes import JOB_ROUTES, dicomweb_app
from services.errors import BadInput, MedsegError, ModelNotFound, UnsupportedMediaType
from services.http.concurrency_limit import ConcurrencyLimit
from services.http.framework_errors import FrameworkErrors, scrub_client_error_logs
from services.http.responses import typed_errors
from services.http.upload_limit import UploadLimit
from services.http.worker_calls import call_worker
from services.jobs.outbox import deliver
from services.jobs.routing import load_routes
from services.jobs.scheduler import RunOutput, Scheduler, SchedulerSettings
from services.jobs.spool import Spool
from services.jobs.store import Job, JobStore
from services.memory import tune_malloc
from services.pipelines import FRAME_PIPELINES
from services.pipelines.base import FrameRequest
from services.pipelines.ensemble import GraphTiming
from services.runtime import InferenceBackend
from services.runtime.graph_batcher import BatchObserver, GraphBatcher, row_limits
from services.settings import load_settings
from services.streams.registry import StreamRegistry
from services.usecases.run_job import load_job_series, run_job
from services.usecases.segment import (
    check_output_kind,
    frame_headers,
    segment_upload,
    segmentation_dicom,
    segmentation_json,
    segmentation_overlay,
    segmentation_png,
)
from services.usecases.segment_volume import SINGLE_FILE_FIELD, check_volume_output, segment_volume_uploads, volume_json
from services.usecases.stow import Inbox
from services.usecases.stream import StreamLimits, run_stream

SETTINGS = load_settings()
log = logging.getLogger("medseg.api")
tune_malloc()  # before the thread pools start: see services.memory


def make_backend(models: Collection[str] | None = None) -> InferenceBackend:
    """The backend named by MEDSEG_BACKEND (an in-process one: only ``models``, None for all)."""
    if SETTINGS.backend == "embedded":
        from services.runtime.ort_backend import OrtBackend

        return OrtBackend(SETTINGS.repository, SETTINGS.ort_threads, models)
    if SETTINGS.backend == "openvino":
        from services.runtime.ov_backend import OvBackend

        return OvBackend(SETTINGS.repository, SETTINGS.ov_threads, models, SETTINGS.ov_precision, SETTINGS.ov_cache_dir)
    from services.runtime.triton_backend import TritonBackend

    return TritonBackend(SETTINGS.repository, list(SETTINGS.triton_urls), SETTINGS.triton_timeout_s)


Tensor = Annotated[np.ndarray, TensorSchema("numpy-array")]  # any dtype: float32 images, int64 class ids


class GraphCall(BaseModel):
    """One call to one graph (a Triton model name), its inputs by tensor name. Batched graphs:
    axis 0 of every input is the rows (slices, patches, frames...); the worker may merge the call
    with concurrent calls to the same graph. Unbatched graphs (``batched`` False): full shapes,
    always run alone."""

    model: str
    inputs: dict[str, Tensor]
    batched: bool = True


class GraphResult(BaseModel):
    """The outputs of one call by tensor name (the call's rows only, for a batched graph), and
    where its time went in the worker (ms): waiting for a run slot, and the run that carried it."""

    outputs: dict[str, Tensor]
    queue_ms: float = 0.0
    run_ms: float = 0.0


def batch_observer() -> BatchObserver:
    """Histograms of calls and rows per backend run, by graph (on /metrics). prometheus_client is
    imported here, in the worker, after BentoML has set up its multiprocess directory."""
    from prometheus_client import Histogram

    calls = Histogram(
        "medseg_inference_batch_calls", "Calls merged into one backend run", ["graph"], buckets=(1, 2, 3, 4, 6, 8, 16, 32)
    )
    rows = Histogram(
        "medseg_inference_batch_rows", "Rows in one backend run", ["graph"], buckets=(1, 2, 4, 8, 16, 32, 64)
    )

    def observe(graph: str, call_count: int, row_count: int) -> None:
        calls.labels(graph=graph).observe(call_count)
        rows.labels(graph=graph).observe(row_count)

    return observe


# BentoML's client to a dependency replaces its connection pool every 100 requests or 300 s and
# closes the old one with calls still in flight on it: those fail (ServerDisconnectedError, which
# call_worker retries) or, now and then, never return until the request timeout (504). The pool
# is kept for the life of the process instead; stale keep-alive connections are retried.
NEVER_REFRESH = {"max_requests": 2**62, "max_age": 1e12}


@bentoml.service(
    name="medseg-inference",
    workers=1,
    traffic={"timeout": SETTINGS.request_timeout_s},
    runner_connection=NEVER_REFRESH,
)
class InferenceWorker:
    """Owns the inference backend and merges concurrent calls per graph (services.runtime.graph_batcher)."""

    def __init__(self) -> None:
        self.backend = make_backend()
        in_flight = 1 if SETTINGS.in_process else len(SETTINGS.triton_urls)
        self.batcher = GraphBatcher(
            self.backend.infer,
            row_limits(self.backend.cards),
            max_in_flight=in_flight,
            max_queue_s=SETTINGS.max_queue_ms / 1000,
            observe=batch_observer(),
        )

    @bentoml.on_startup
    async def start_backend(self) -> None:
        """Triton: probe the servers now and keep probing (readiness follows their models)."""
        start = getattr(self.backend, "start", None)
        if start is not None:
            await start()

    def __is_ready__(self) -> bool:
        return self.backend.is_ready()

    @bentoml.api
    async def infer_graph(self, call: GraphCall) -> GraphResult:
        try:
            outputs, timing = await self.batcher.run_timed(call.model, call.inputs, call.batched)
        except MedsegError as error:  # sent by its status; services.http.worker_calls types it again
            raise BentoMLException(error.message, error_code=HTTPStatus(error.status)) from None
        return GraphResult(outputs=outputs, queue_ms=timing.queue_s * 1000, run_ms=timing.run_s * 1000)


def job_counts_observer() -> Callable[[dict[str, int]], None]:
    """A gauge of DICOMweb jobs per state (``medseg_jobs`` on /metrics), created once BentoML has
    set up its multiprocess metrics directory."""
    from prometheus_client import Gauge

    gauge = Gauge("medseg_jobs", "DICOMweb jobs per state", ["state"], multiprocess_mode="livemax")

    def observe(counts: dict[str, int]) -> None:
        for state, count in counts.items():
            gauge.labels(state=state).set(count)

    return observe


def stream_metrics() -> tuple[Callable[[int], None], Any]:
    """``medseg_streams`` (open video streams) and ``medseg_stream_frames_total{outcome}``
    (answered, error, dropped) on /metrics."""
    from prometheus_client import Counter, Gauge

    gauge = Gauge("medseg_streams", "Open WebSocket video streams", multiprocess_mode="livesum")
    frames = Counter("medseg_stream_frames", "Stream frames by outcome", ["outcome"])
    return gauge.set, frames


def _log_end_of_job_loop(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("the DICOMweb job loop stopped: %s", type(task.exception()).__name__, exc_info=task.exception())


def model_listing(cards: dict[str, ModelCard]) -> dict[str, Any]:
    """The body of GET /v1/models."""
    return {
        "models": [
            {
                "name": card.name,
                "display_name": card.display_name,
                "task": card.task,
                "variant": card.variant,
                "version": card.version,
                "labels": [{"id": l.id, "name": l.name, "color": list(l.color)} for l in card.labels],
                "weights": asdict(card.weights),
                "input": {
                    "size": list(card.preprocessing.size),
                    "channels": card.preprocessing.channels,
                    "channel_names": list(card.channel_names),
                },
                "regions": [{"name": r.name, "labels": list(r.labels)} for r in card.regions],
                "threshold": card.threshold if card.activation == "sigmoid" else None,
                "graphs": sorted(card.graphs()),
            }
            for card in cards.values()
        ]
    }


async def list_models(request: Request) -> JSONResponse:
    service = bentoml.get_current_service()
    return JSONResponse(model_listing(service.cards))


async def read_volume_form(request: Request, channel_names: tuple[str, ...]) -> tuple[dict[str, str], dict[str, bytes]]:
    """Multipart body → (text fields, file bytes by field name). 415 unless multipart, 400 for
    unparseable bodies and for file fields the route does not take (nothing is silently dropped)."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise UnsupportedMediaType("send multipart/form-data with NIfTI files and a 'model' field")
    try:
        async with request.form(max_files=len(channel_names) + 2, max_fields=16) as form:
            keys = [k for k, _ in form.multi_items()]
            repeated = sorted({k for k in keys if keys.count(k) > 1})
            if repeated:
                raise BadInput(f"form field(s) sent more than once: {', '.join(k[:32] for k in repeated)}")
            fields = {k: v for k, v in form.items() if isinstance(v, str)}
            uploads = {k: await v.read() for k, v in form.items() if isinstance(v, UploadFile)}
    except MultiPartException as error:
        raise BadInput(f"the multipart body could not be parsed: {error.message[:120]}") from None
    unexpected = sorted(set(uploads) - {*channel_names, SINGLE_FILE_FIELD})
    if unexpected:
        raise BadInput(
            f"unexpected file field(s) {', '.join(f[:32] for f in unexpected)}; "
            f"send {', '.join(channel_names)} or one 4-D volume in '{SINGLE_FILE_FIELD}'"
        )
    return fields, uploads


@typed_errors
async def segment_volume(request: Request) -> Response:
    """POST /v1/segment/volume: multipart NIfTI channels (or one 4-D file), ``model``, ``output`` nifti | json."""
    service = bentoml.get_current_service()
    names = tuple(dict.fromkeys(n for c in service.cards.values() if c.sliding_window is not None for n in c.channel_names))
    fields, uploads = await read_volume_form(request, names)
    card = service.card(fields.get("model", ""))
    output = check_volume_output(fields.get("output", "nifti"))

    async def run(patches: np.ndarray) -> np.ndarray:
        return await service.run_single(card, patches)

    seg = await segment_volume_uploads(
        uploads, card, run, service.decoders.run, SETTINGS.max_volume_bytes, parallel_batches=2
    )
    headers = {"X-Medseg-Model": card.name, "X-Medseg-Model-Version": card.version}
    if output == "json":
        return await anyio.to_thread.run_sync(lambda: JSONResponse(volume_json(seg), headers=headers))
    body = await anyio.to_thread.run_sync(label_map_nifti, seg.labels, seg.reference)
    headers["Content-Disposition"] = 'attachment; filename="labels.nii.gz"'
    return Response(content=body, media_type="application/gzip", headers=headers)


async def stream(websocket: WebSocket) -> None:
    """WS /v1/stream: a video stream, one mask per frame (protocol: services.streams.protocol)."""
    service = bentoml.get_current_service()
    await websocket.accept()
    limits = StreamLimits(SETTINGS.stream_max_pixels, SETTINGS.stream_idle_s)
    await run_stream(websocket, service.cards, service.run_stream_graph, service.streams, limits, service.count_stream_frame)


routes_v1 = Starlette(
    routes=[
        Route("/models", list_models, methods=["GET"]),
        Route("/segment/volume", segment_volume, methods=["POST"]),
        *JOB_ROUTES,
        WebSocketRoute("/stream", stream),
    ]
)


@bentoml.asgi_app(dicomweb_app, path="/dicom-web")
@bentoml.asgi_app(routes_v1, path="/v1")
@bentoml.service(
    name="medseg",
    workers=1,
    # No max_concurrency here: BentoML's answers from outside the contract (ConcurrencyLimit below).
    traffic={"timeout": FrameworkErrors.bentoml_timeout_s(SETTINGS.request_timeout_s)},
)
class Segmenter:
    """Public routes: POST /v1/segment, POST /v1/segment/volume, GET /v1/models, /livez, /readyz,
    /metrics; DICOMweb (STOW-RS in, QIDO/WADO-RS of results) under /dicom-web and its jobs under /v1/jobs."""

    inference = bentoml.depends(InferenceWorker)

    def __init__(self) -> None:
        self.cards = discover_cards(SETTINGS.repository)
        self.unbatched_graphs = frozenset().union(*(card.unbatched_graphs() for card in self.cards.values()))
        self.decoders = DecoderPool(SETTINGS.decode_workers, SETTINGS.decode_budget_s, SETTINGS.decode_memory_bytes)
        channels = {name: card.channel_names if card.sliding_window else () for name, card in self.cards.items()}
        self.inbox = Inbox(
            Spool(SETTINGS.data_dir), JobStore(SETTINGS.data_dir / "jobs.sqlite3"), load_routes(SETTINGS.routes_path, channels)
        )
        self.pacs_url = SETTINGS.pacs_url
        self.scheduler = Scheduler(
            self.inbox.store,
            SchedulerSettings(SETTINGS.series_quiet_s, SETTINGS.delivery_attempts, SETTINGS.delivery_backoff_s),
            self.run_inbox_job,
            self.deliver_results if self.pacs_url else None,
        )
        self.streams = StreamRegistry(SETTINGS.max_streams)
        self._stream_graphs: GraphBatcher | None = None
        self._stream_lock = anyio.Lock()
        self._frame_counter: Any = None
        self._jobs_task: asyncio.Task[None] | None = None
        self._pacs_client: httpx.AsyncClient | None = None
        log.info("serving %s from %s", ", ".join(self.cards) or "no model", SETTINGS.repository)

    def __is_ready__(self) -> bool:
        return bool(self.cards)

    @bentoml.on_startup
    async def start_jobs(self) -> None:
        """The DICOMweb job loop, in this process's event loop (one API worker: one loop)."""
        self.scheduler.observe_counts = job_counts_observer()
        self.streams.observe, self._frame_counter = stream_metrics()
        self.streams.observe(0)
        if SETTINGS.in_process and SETTINGS.stream_graphs == "api":
            # loaded now, off the event loop, so that the first stream's first frame does not wait
            self._stream_preload = asyncio.get_running_loop().create_task(self._stream_batcher())
        self._jobs_task = asyncio.get_running_loop().create_task(self.scheduler.run_forever())
        self._jobs_task.add_done_callback(_log_end_of_job_loop)

    @bentoml.on_shutdown
    async def stop(self) -> None:
        if self._jobs_task is not None:
            self._jobs_task.cancel()
        if self._pacs_client is not None:
            await self._pacs_client.aclose()
        self.decoders.close()
        self.inbox.store.close()

    async def run_stream_graph(self, model: str, inputs: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], GraphTiming]:
        """A stream's graph call. With an in-process back end (and MEDSEG_STREAM_GRAPHS=api) it
        runs in this process: the API-worker round trip (about 2 ms a call, two calls a frame)
        was most of a stream frame's non-graph time. Concurrent streams share this batcher."""
        if not SETTINGS.in_process or SETTINGS.stream_graphs == "worker":
            return await self.run_graph_timed(model, inputs)
        batcher = self._stream_graphs or await self._stream_batcher()
        outputs, timing = await batcher.run_timed(model, inputs, model not in self.unbatched_graphs)
        return outputs, GraphTiming(timing.queue_s * 1000, timing.run_s * 1000, 0.0)

    async def _stream_batcher(self) -> GraphBatcher:
        """The in-process sessions of the 2-D frame models, loaded at the first stream."""
        async with self._stream_lock:
            if self._stream_graphs is None:
                frame_models = [name for name, card in self.cards.items() if card.task in FRAME_PIPELINES]
                backend = await anyio.to_thread.run_sync(make_backend, frame_models)
                self._stream_graphs = GraphBatcher(
                    backend.infer, row_limits(backend.cards), max_in_flight=1, max_queue_s=SETTINGS.max_queue_ms / 1000,
                    observe=batch_observer(),  # this process's runs, on the same /metrics histograms as the worker's
                )
            return self._stream_graphs

    def count_stream_frame(self, outcome: str) -> None:
        if self._frame_counter is not None:
            self._frame_counter.labels(outcome=outcome).inc()

    async def run_inbox_job(self, job: Job) -> RunOutput:
        card = self.card(job.model)
        series = await load_job_series(self.inbox.store, job)
        return await run_job(job, series, card, self.inbox.spool, self.run_graph, self.decoders.run)

    async def deliver_results(self, job: Job) -> None:
        assert self.pacs_url is not None
        if self._pacs_client is None:
            self._pacs_client = httpx.AsyncClient(timeout=httpx.Timeout(120.0, connect=10.0))
        await deliver(self._pacs_client, self.pacs_url, job.results)

    def card(self, model: str) -> ModelCard:
        if not model:
            raise BadInput(f"form field 'model' is required; served models: {', '.join(self.cards)}")
        if model not in self.cards:
            raise ModelNotFound(f"model {model[:64]!r} is not served; served models: {', '.join(self.cards)}")
        return self.cards[model]

    async def run_graph(self, model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Batched inputs of one graph → its batched outputs (an unbatched graph: the whole call)."""
        outputs, _ = await self.run_graph_timed(model, inputs)
        return outputs

    async def run_graph_timed(self, model: str, inputs: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], GraphTiming]:
        """``run_graph`` and where the call's time went: worker queue, graph run, and the rest
        of the round trip (serialisation and transport between this process and the worker)."""
        call = GraphCall(model=model, inputs=inputs, batched=model not in self.unbatched_graphs)
        started = time.perf_counter()
        result = await call_worker(lambda: self.inference.to_async.infer_graph(call))
        total_ms = (time.perf_counter() - started) * 1000
        return dict(result.outputs), GraphTiming(result.queue_ms, result.run_ms, max(0.0, total_ms - result.queue_ms - result.run_ms))

    async def run_single(self, card: ModelCard, tensors: np.ndarray) -> np.ndarray:
        """(N, ...) into the card's only input → (N, ...) of its first output."""
        outputs = await self.run_graph(card.name, {card.inputs[0].name: tensors})
        return outputs[card.outputs[0].name]

    @bentoml.api(route="/v1/segment")
    @typed_errors
    async def segment(  # noqa: ANN201 - returns a starlette Response
        self,
        file: list[Path],  # exactly one; a list so that a repeated field is refused, not dropped
        model: str = "",
        output: str = "png",
        reference: list[Path] = [],  # noqa: B006 - BentoML takes an optional file field as a list (0 or 1 file)
        threshold: Optional[float] = None,  # noqa: UP007 - BentoML's form parsing needs the typing form
        classes: Optional[Union[int, str]] = None,  # noqa: UP007 - a lone "3" arrives parsed as a number
    ):
        """Segment a PNG, JPEG or DICOM image (single- or multi-frame); output png | json | overlay |
        seg (DICOM input: a DICOM Segmentation of the instance).

        Frame-pair models (MAST) take an optional ``reference`` frame and sigmoid ``threshold``;
        class-prompted models (SurgicalSAM) an optional ``classes`` list ("1,4" or names) and ``threshold``.
        """
        card = self.card(model)
        check_output_kind(output)
        if len(file) != 1:
            raise BadInput(f"send exactly one 'file'; got {len(file)}")
        data = file[0].read_bytes()
        if len(reference) > 1:
            raise BadInput("send at most one 'reference' file")
        reference_data = reference[0].read_bytes() if reference else None
        request = FrameRequest(data, reference_data, threshold, None if classes is None else str(classes))
        seg = await segment_upload(request, card, self.run_graph, self.decoders.run)
        # Encoding a 120-frame answer takes seconds: off the event loop, which serves every request.
        if output == "seg":
            body = await anyio.to_thread.run_sync(segmentation_dicom, seg, data)
            return Response(content=body, media_type="application/dicom", headers=frame_headers(seg))
        if output == "json":
            return await anyio.to_thread.run_sync(lambda: JSONResponse(segmentation_json(seg), headers=frame_headers(seg)))
        render = segmentation_png if output == "png" else segmentation_overlay
        body = await anyio.to_thread.run_sync(render, seg)
        return Response(content=body, media_type="image/png", headers=frame_headers(seg))


Segmenter.add_asgi_middleware(FrameworkErrors, deadline_s=SETTINGS.request_timeout_s)  # first added: outermost
Segmenter.add_asgi_middleware(ConcurrencyLimit, max_in_flight=SETTINGS.max_concurrency)
Segmenter.add_asgi_middleware(
    UploadLimit, max_bytes=SETTINGS.max_upload_bytes, path_limits={"/dicom-web/": SETTINGS.max_study_bytes}
)
scrub_client_error_logs()
