"""STOW-RS (PS3.18 §10.5) as plain functions: a multipart/related body streamed part by part to
the spool, each instance checked, fsynced and recorded in the job store before it is listed in
the answer. The body is never held in memory: one part is read back (one instance) to check it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any, BinaryIO

import anyio
import pydicom
from pydicom.dataset import Dataset

from services.codecs.dicom import is_cut_short, pixel_transfer_syntax, quiet_decoders
from services.dicomweb.multipart import PartData, PartEnd, PartStart, RelatedParts, related_content_type
from services.dicomweb.store_response import (
    CANNOT_UNDERSTAND,
    DOES_NOT_MATCH,
    DUPLICATE_SOP_INSTANCE,
    TRANSFER_SYNTAX_NOT_SUPPORTED,
    FailedRef,
    StoredRef,
    store_response,
    store_status,
)
from services.errors import BadInput, MedsegError, UnsupportedTransferSyntax, reraise_process_exit
from services.jobs.routing import Route, place
from services.jobs.series_assembly import exclusion_reason
from services.jobs.spool import Spool, check_uid
from services.jobs.store import InstanceConflict, JobStore, StoredInstance

log = logging.getLogger("medseg.stow")


@dataclass(frozen=True)
class Inbox:
    """What receiving needs: where files go, where they are recorded, how series are routed, and
    the service's public root for RetrieveURLs (e.g. ``http://host:3000``)."""

    spool: Spool
    store: JobStore
    routes: tuple[Route, ...]


def instance_url(base_url: str, study: str, series: str | None = None, sop: str | None = None) -> str:
    """The WADO-RS URL of a study, series or instance of this service."""
    url = f"{base_url}/dicom-web/studies/{study}"
    if series is not None:
        url += f"/series/{series}"
        if sop is not None:
            url += f"/instances/{sop}"
    return url


class _Rejected(Exception):
    def __init__(self, failure: FailedRef) -> None:
        super().__init__(failure.reason)
        self.failure = failure


class StudyReceiver:
    """Consumes parser events (synchronously, in a worker thread): each part into a file of its
    own, then checked and kept, or refused with a PS3.18 failure reason."""

    def __init__(self, inbox: Inbox, base_url: str, url_study: str | None) -> None:
        self.inbox = inbox
        self.base_url = base_url
        self.url_study = url_study
        self.stored: list[StoredRef] = []
        self.failed: list[FailedRef] = []
        self._temp: Path | None = None
        self._file: BinaryIO | None = None
        self._size = 0

    def apply(self, events: Sequence[PartStart | PartData | PartEnd]) -> None:
        for event in events:
            if isinstance(event, PartStart):
                self._temp = self.inbox.spool.new_part()
                self._file = open(self._temp, "wb")  # noqa: SIM115 - closed at PartEnd or close()
                self._size = 0
            elif isinstance(event, PartData):
                assert self._file is not None
                self._file.write(event.data)
                self._size += len(event.data)
            else:
                self._end_part()

    def _end_part(self) -> None:
        assert self._file is not None and self._temp is not None
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        temp, self._file, self._temp = self._temp, None, None
        try:
            self.stored.append(self._keep(temp))
        except _Rejected as rejected:
            self.failed.append(rejected.failure)
            temp.unlink(missing_ok=True)

    def close(self) -> None:
        """Drop a part left unfinished (the body ended or failed inside it)."""
        if self._file is not None:
            self._file.close()
        if self._temp is not None:
            self._temp.unlink(missing_ok=True)
        self._file = self._temp = None

    def _keep(self, temp: Path) -> StoredRef:
        data = temp.read_bytes()  # one instance
        ds = _read_instance(data)
        sop_class, sop_uid, study, series = _identity(ds)
        if self.url_study is not None and study != self.url_study:
            raise _Rejected(FailedRef(sop_class, sop_uid, DOES_NOT_MATCH))
        if is_cut_short(ds, data):
            raise _Rejected(FailedRef(sop_class, sop_uid, CANNOT_UNDERSTAND))
        if self.inbox.store.location(sop_uid) not in (None, (study, series)):
            raise _Rejected(FailedRef(sop_class, sop_uid, DUPLICATE_SOP_INSTANCE))
        excluded = exclusion_reason(ds) or ("derived_by_medseg" if self.inbox.store.is_result(sop_uid) else None)
        if excluded is None:
            _check_pixels_readable(ds, sop_class, sop_uid)
        path = self.inbox.spool.keep_instance(temp, study, series, sop_uid)
        placement = None if excluded else place(self.inbox.routes, ds)
        instance = StoredInstance(sop_uid, sop_class, study, series, path, len(data), excluded)
        try:
            self.inbox.store.record_instance(instance, placement)
        except InstanceConflict:  # stored elsewhere meanwhile by a concurrent request
            path.unlink(missing_ok=True)
            raise _Rejected(FailedRef(sop_class, sop_uid, DUPLICATE_SOP_INSTANCE)) from None
        if excluded is None and placement is None:
            log.info("stored an image no route takes (modality %s)", str(ds.get("Modality", "?"))[:8])
        return StoredRef(sop_class, sop_uid, instance_url(self.base_url, study, series, sop_uid))


def _read_instance(data: bytes) -> Dataset:
    """A PS3.10 file (preamble, DICM, file meta) → its dataset; refused (0xC000) otherwise."""
    quiet_decoders()
    try:
        return pydicom.dcmread(BytesIO(data))
    except BaseException as error:  # noqa: BLE001 - any parser failure: the part is not a DICOM file
        reraise_process_exit(error)
        raise _Rejected(FailedRef(None, None, CANNOT_UNDERSTAND)) from None


def _identity(ds: Dataset) -> tuple[str, str, str, str]:
    """SOP class, SOP instance, study and series UIDs; 0xC000 when one is missing or malformed."""
    meta = getattr(ds, "file_meta", Dataset())
    values = (
        ds.get("SOPClassUID") or meta.get("MediaStorageSOPClassUID"),
        ds.get("SOPInstanceUID") or meta.get("MediaStorageSOPInstanceUID"),
        ds.get("StudyInstanceUID"),
        ds.get("SeriesInstanceUID"),
    )
    try:
        sop_class, sop_uid, study, series = (
            check_uid(v, k) for v, k in zip(values, ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"))
        )
    except BadInput:
        known = [str(v) if v else None for v in values[:2]]
        raise _Rejected(FailedRef(known[0], known[1], CANNOT_UNDERSTAND)) from None
    return sop_class, sop_uid, study, series


def _check_pixels_readable(ds: Dataset, sop_class: str, sop_uid: str) -> None:
    """An image to segment whose compression no installed decoder reads is refused (0xC122)."""
    try:
        pixel_transfer_syntax(ds)
    except UnsupportedTransferSyntax:
        raise _Rejected(FailedRef(sop_class, sop_uid, TRANSFER_SYNTAX_NOT_SUPPORTED)) from None
    except MedsegError:
        raise _Rejected(FailedRef(sop_class, sop_uid, CANNOT_UNDERSTAND)) from None
    except StopIteration:  # no pixel data element at all
        raise _Rejected(FailedRef(sop_class, sop_uid, CANNOT_UNDERSTAND)) from None


@dataclass(frozen=True)
class StoreAnswer:
    status: int
    body: dict[str, Any]


async def receive_study(
    chunks: AsyncIterator[bytes], content_type: str | None, url_study: str | None, inbox: Inbox, base_url: str
) -> StoreAnswer:
    """POST /dicom-web/studies[/{study}]: store every part of the body; the Store Instances
    Response and its status. 415 (not multipart/related application/dicom) and 400 (malformed
    body with nothing stored) are raised as typed errors."""
    boundary = related_content_type(content_type).boundary
    if url_study is not None:
        url_study = check_uid(url_study, "the study UID in the URL")
    parser = RelatedParts(boundary)
    receiver = StudyReceiver(inbox, base_url, url_study)
    try:
        async for chunk in chunks:
            events = parser.feed(chunk)
            if events:
                await anyio.to_thread.run_sync(receiver.apply, events)
        parser.finish()
    except BadInput:
        if not receiver.stored and not receiver.failed:
            raise
        receiver.failed.append(FailedRef(None, None, CANNOT_UNDERSTAND))  # the malformed rest of the body
    finally:
        await anyio.to_thread.run_sync(receiver.close)
    study_url = instance_url(base_url, url_study) if url_study else None
    body = store_response(receiver.stored, receiver.failed, study_url)
    return StoreAnswer(store_status(len(receiver.stored), receiver.failed), body)
