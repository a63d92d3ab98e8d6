"""Starlette glue of the DICOMweb routes (mounted at /dicom-web) and the job routes (under /v1).

STOW-RS in; QIDO-RS (series of a study) and WADO-RS (series, instance) over the objects this
service produced. Handlers only translate HTTP; the work is in services.usecases.stow and the job
store. ``Pacs`` is what the routes need from the service instance.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any, Protocol

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from services.dicomweb.multipart import dicom_parts_body
from services.errors import BadInput, NotAcceptable, NotFound
from services.http.responses import typed_errors
from services.jobs.spool import check_uid
from services.jobs.store import Job, JobStore, Result
from services.usecases.stow import Inbox, instance_url, receive_study

DICOM_JSON = "application/dicom+json"


class Pacs(Protocol):
    """The service state the routes use."""

    inbox: Inbox
    pacs_url: str | None


def current() -> Pacs:
    import bentoml  # imported here: this module stays importable (and testable) without a service

    return bentoml.get_current_service()


def base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


# --- STOW-RS ------------------------------------------------------------------------------------


@typed_errors
async def store_instances(request: Request) -> Response:
    """POST /dicom-web/studies[/{study}]."""
    study = request.path_params.get("study")
    answer = await receive_study(
        request.stream(), request.headers.get("content-type"), study, current().inbox, base_url(request)
    )
    return JSONResponse(answer.body, status_code=answer.status, media_type=DICOM_JSON)


# --- QIDO-RS / WADO-RS over results -------------------------------------------------------------


def _series_attributes(results: list[Result], study: str, url: str) -> dict[str, Any]:
    first = results[0]
    return {
        "0020000D": {"vr": "UI", "Value": [study]},
        "0020000E": {"vr": "UI", "Value": [first.series_uid]},
        "00080060": {"vr": "CS", "Value": [first.modality]},
        "00201209": {"vr": "IS", "Value": [len(results)]},
        "00081190": {"vr": "UR", "Value": [url]},
    }


@typed_errors
async def search_series(request: Request) -> Response:
    """GET /dicom-web/studies/{study}/series: the series this service produced in the study
    (``Modality`` filter supported); DICOM JSON, 200 with [] when there are none."""
    study = check_uid(request.path_params["study"], "the study UID in the URL")
    results = await anyio.to_thread.run_sync(current().inbox.store.results, study)
    modality = request.query_params.get("Modality") or request.query_params.get("00080060")
    by_series: dict[str, list[Result]] = {}
    for result in results:
        if modality is None or result.modality == modality.upper():
            by_series.setdefault(result.series_uid, []).append(result)
    body = [
        _series_attributes(items, study, instance_url(base_url(request), study, series))
        for series, items in by_series.items()
    ]
    return JSONResponse(body, media_type=DICOM_JSON)


def accepts_dicom_parts(accept: str | None) -> bool:
    """Whether an Accept header admits ``multipart/related; type="application/dicom"``: absent,
    ``*/*``, ``multipart/*``, ``multipart/related`` without a type or with that type, or a bare
    ``application/dicom`` (what several clients send for "DICOM files, please")."""
    if not accept or not accept.strip():
        return True
    for media_range in accept.split(","):
        media, *params = [part.strip() for part in media_range.split(";")]
        options = dict(p.split("=", 1) for p in params if "=" in p)
        kind = options.get("type", "").strip('"').lower()
        if options.get("q", "1").strip() in ("0", "0.0", "0.00", "0.000"):
            continue
        if media.lower() in ("*/*", "multipart/*", "application/dicom") or (media.lower() == "multipart/related" and kind in ("", "application/dicom")):
            return True
    return False


async def _retrieve(request: Request) -> Response:
    """WADO-RS of a study, series or instance (received or produced), multipart/related."""
    params = request.path_params
    study = check_uid(params["study"], "the study UID in the URL")
    series = check_uid(params["series"], "the series UID in the URL") if "series" in params else None
    sop = check_uid(params["sop"], "the SOP instance UID in the URL") if "sop" in params else None
    if not accepts_dicom_parts(request.headers.get("accept")):
        raise NotAcceptable('this service answers multipart/related; type="application/dicom"')
    paths = await anyio.to_thread.run_sync(current().inbox.store.stored_files, study, series, sop)
    if not paths:
        raise NotFound("no such study, series or instance in this service")
    boundary = uuid.uuid4().hex

    async def body() -> AsyncIterator[bytes]:
        for chunk in dicom_parts_body(paths, boundary):
            yield chunk

    return StreamingResponse(body(), media_type=f'multipart/related; type="application/dicom"; boundary={boundary}')


@typed_errors
async def retrieve(request: Request) -> Response:
    """GET /dicom-web/studies/{study}[/series/{series}[/instances/{sop}]]."""
    return await _retrieve(request)


dicomweb_app = Starlette(
    routes=[
        Route("/studies", store_instances, methods=["POST"]),
        Route("/studies/{study}", store_instances, methods=["POST"]),
        Route("/studies/{study}/series", search_series, methods=["GET"]),
        Route("/studies/{study}", retrieve, methods=["GET"]),
        Route("/studies/{study}/series/{series}", retrieve, methods=["GET"]),
        Route("/studies/{study}/series/{series}/instances/{sop}", retrieve, methods=["GET"]),
    ]
)


# --- jobs -----------------------------------------------------------------------------------------


def job_body(job: Job, base: str) -> dict[str, Any]:
    """A job as JSON: state, model, series and instance counts, timings, reason, results.
    UIDs and counts only: no patient identifiers."""
    return {
        "id": job.id,
        "state": job.state,
        "model": job.model,
        "route": job.route,
        "study": job.study_uid,
        "series": [{"uid": uid, "channel": channel} for uid, channel in job.series.items()],
        "series_count": len(job.series),
        "instance_count": job.instance_count,
        "reason": job.reason,
        "created_at": job.created_at,
        "last_instance_at": job.last_instance_at,
        "queued_at": job.queued_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "delivered_at": job.delivered_at,
        "timings_s": job.timings,
        "run_attempts": job.run_attempts,
        "delivery_attempts": job.delivery_attempts,
        "next_delivery_at": job.next_delivery_at,
        "results": [
            {
                "sop_instance_uid": r.sop_uid,
                "series_uid": r.series_uid,
                "modality": r.modality,
                "bytes": r.bytes,
                "url": instance_url(base, r.study_uid, r.series_uid, r.sop_uid),
            }
            for r in job.results
        ],
    }


def _store() -> JobStore:
    return current().inbox.store


@typed_errors
async def list_jobs(request: Request) -> Response:
    """GET /v1/jobs[?study=UID&limit=N]: newest first."""
    study = request.query_params.get("study")
    if study is not None:
        study = check_uid(study, "'study'")
    limit_text = request.query_params.get("limit", "100")
    if not limit_text.isdigit() or not 1 <= int(limit_text) <= 1000:
        raise BadInput("limit must be an integer from 1 to 1000")
    jobs = await anyio.to_thread.run_sync(_store().jobs, study, int(limit_text))
    return JSONResponse({"jobs": [job_body(job, base_url(request)) for job in jobs]})


async def _job_or_404(job_id: str) -> Job:
    job = await anyio.to_thread.run_sync(_store().job, job_id[:64])
    if job is None:
        raise NotFound("no such job")
    return job


@typed_errors
async def get_job(request: Request) -> Response:
    """GET /v1/jobs/{id}."""
    return JSONResponse(job_body(await _job_or_404(request.path_params["id"]), base_url(request)))


@typed_errors
async def retry_job(request: Request) -> Response:
    """POST /v1/jobs/{id}/retry: a delivery_failed job is delivered again, a failed one runs again."""
    job = await _job_or_404(request.path_params["id"])
    updated = await anyio.to_thread.run_sync(_store().retry, job.id, current().pacs_url is not None)
    assert updated is not None
    return JSONResponse(job_body(updated, base_url(request)), status_code=202 if updated.state != job.state else 200)


JOB_ROUTES = [
    Route("/jobs", list_jobs, methods=["GET"]),
    Route("/jobs/{id}", get_job, methods=["GET"]),
    Route("/jobs/{id}/retry", retry_job, methods=["POST"]),
]
