"""The STOW-RS Store Instances Response (PS3.18 §10.5.3) as DICOM JSON, and its HTTP status."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# FailureReason (0008,1197) values of PS3.18 Table 10.5.3-3 (and PS3.4 Annex GG).
OUT_OF_RESOURCES = 0xA700
DOES_NOT_MATCH = 0xA900  # data set does not match (used for a study UID other than the URL's)
CANNOT_UNDERSTAND = 0xC000
TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122
PROCESSING_FAILURE = 0x0110
SOP_CLASS_NOT_SUPPORTED = 0x0122
DUPLICATE_SOP_INSTANCE = 0x0111  # PS3.4 status: the SOP instance UID is stored in another study or series


@dataclass(frozen=True)
class StoredRef:
    sop_class: str
    sop_uid: str
    retrieve_url: str


@dataclass(frozen=True)
class FailedRef:
    sop_class: str | None  # None when the part was not readable enough to tell
    sop_uid: str | None
    reason: int


def _uid(value: str) -> dict[str, Any]:
    return {"vr": "UI", "Value": [value]}


def _failed_item(failed: FailedRef) -> dict[str, Any]:
    item: dict[str, Any] = {"00081197": {"vr": "US", "Value": [failed.reason]}}
    if failed.sop_class:
        item["00081150"] = _uid(failed.sop_class)
    if failed.sop_uid:
        item["00081155"] = _uid(failed.sop_uid)
    return item


def store_response(stored: list[StoredRef], failed: list[FailedRef], study_url: str | None) -> dict[str, Any]:
    """The response dataset: ReferencedSOPSequence (one item per stored instance, with its
    RetrieveURL), FailedSOPSequence (one per refused part) and the study's RetrieveURL."""
    body: dict[str, Any] = {}
    if study_url:
        body["00081190"] = {"vr": "UR", "Value": [study_url]}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": [_failed_item(f) for f in failed]}
    if stored:
        body["00081199"] = {
            "vr": "SQ",
            "Value": [
                {"00081150": _uid(s.sop_class), "00081155": _uid(s.sop_uid), "00081190": {"vr": "UR", "Value": [s.retrieve_url]}}
                for s in stored
            ],
        }
    return body


def store_status(stored: int, failed: list[FailedRef]) -> int:
    """200 all stored; 202 some stored, some not; 409 none stored because of a conflict (every
    failure a study mismatch or a SOP instance UID stored elsewhere); 400 none stored otherwise
    (including an empty request)."""
    if not failed:
        return 200 if stored else 400
    if stored:
        return 202
    return 409 if all(f.reason in (DOES_NOT_MATCH, DUPLICATE_SOP_INSTANCE) for f in failed) else 400
