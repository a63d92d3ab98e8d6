"""Results back to the PACS: a job's SEG instances sent by STOW-RS to ``MEDSEG_PACS_URL`` (a
DICOMweb root such as ``http://pacs:8042/dicom-web``). A delivery counts only when the PACS
answers 2xx with every sent instance in its ReferencedSOPSequence and nothing failed."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator, Sequence

import httpx

from services.dicomweb.multipart import dicom_parts_body
from services.jobs.store import Result

MAX_BACKOFF_S = 300.0


class DeliveryError(Exception):
    """A try that did not store everything; the message (no identifiers) becomes the job's reason."""


def backoff_s(attempt: int, first_s: float) -> float:
    """Delay before try ``attempt + 1`` (``attempt`` ≥ 1 tries done): doubling, capped at 5 min."""
    return min(first_s * 2 ** (attempt - 1), MAX_BACKOFF_S)


def _items(body: dict, tag: str) -> list:
    element = body.get(tag)
    values = element.get("Value") if isinstance(element, dict) else None
    return values if isinstance(values, list) else []


def _referenced_uids(body: object) -> tuple[set[str], int]:
    """(SOP instance UIDs of ReferencedSOPSequence, items of FailedSOPSequence and Other
    Failures Sequence); whatever shape the PACS sent."""
    if not isinstance(body, dict):
        return set(), 0
    uids = set()
    for item in _items(body, "00081199"):
        values = _items(item, "00081155") if isinstance(item, dict) else []
        if values and isinstance(values[0], str):
            uids.add(values[0])
    return uids, len(_items(body, "00081198")) + len(_items(body, "0008119A"))


async def _async(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


async def deliver(client: httpx.AsyncClient, pacs_url: str, results: Sequence[Result]) -> None:
    """STOW ``results`` to the PACS; DeliveryError unless all of them are acknowledged."""
    boundary = uuid.uuid4().hex
    headers = {
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        "Accept": "application/dicom+json",
    }
    try:
        response = await client.post(
            f"{pacs_url.rstrip('/')}/studies", content=_async(dicom_parts_body([r.path for r in results], boundary)), headers=headers
        )
    except (httpx.HTTPError, httpx.InvalidURL) as error:
        raise DeliveryError(f"PACS not reachable ({type(error).__name__})") from None
    if not 200 <= response.status_code < 300:
        raise DeliveryError(f"PACS answered HTTP {response.status_code}")
    try:
        uids, failed = _referenced_uids(response.json())
    except ValueError:
        raise DeliveryError(f"PACS answered HTTP {response.status_code} without a Store Instances Response") from None
    missing = [r for r in results if r.sop_uid not in uids]
    if missing or failed:
        raise DeliveryError(f"PACS stored {len(results) - len(missing)} of {len(results)} instance(s), {failed} failed")
