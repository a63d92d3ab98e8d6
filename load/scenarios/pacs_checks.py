"""The PACS scenario's protocol side, without locust (unit-tested in-process): its settings,
the Store Instances Response check and a study's job outcome."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from load.scenarios.common import env_int, env_number, request_name

SCENARIO = "pacs"
TIME_TO_SEG = request_name(SCENARIO, "time-to-SEG")
POLL = request_name(SCENARIO, "poll jobs")
FINISHED = ("done", "delivered")
FAILED = ("failed", "delivery_failed")

REFERENCED_SOP_SEQUENCE = "00081199"
FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_INSTANCE_UID = "00081155"
FAILURE_REASON = "00081197"


class PacsFailure(Exception):
    """A study that got no SEG (the message names why, without UIDs, so locust groups them)."""


@dataclass(frozen=True)
class PacsSettings:
    instances: int = 12
    timeout_s: float = 120.0
    poll_s: float = 0.5
    record_polls: bool = False

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> PacsSettings:
        return cls(
            instances=env_int("LOAD_PACS_INSTANCES", cls.instances, environ, minimum=1),
            timeout_s=env_number("LOAD_PACS_TIMEOUT_S", cls.timeout_s, environ, minimum=1.0),
            poll_s=env_number("LOAD_PACS_POLL_S", cls.poll_s, environ, minimum=0.05),
            record_polls=env_int("LOAD_PACS_RECORD_POLLS", 0, environ) > 0,
        )

    @property
    def stow_name(self) -> str:
        return request_name(SCENARIO, f"STOW {self.instances} instances")


def stow_problem(status: int, body: bytes, sop_uids: tuple[str, ...]) -> str | None:
    """Why a Store Instances Response does not store every instance sent (None when it does).
    The message names statuses, error codes and failure reasons, never UIDs (locust groups
    failures by message)."""
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        return f"STOW answered HTTP {status}, not DICOM JSON" if status != 200 else "STOW answer is not JSON"
    failed = answer.get(FAILED_SOP_SEQUENCE, {}).get("Value", [])
    if failed:
        reasons = sorted({hex(item.get(FAILURE_REASON, {}).get("Value", [0])[0]) for item in failed})
        return f"STOW answered HTTP {status}: {len(failed)} instance(s) refused, reasons {', '.join(reasons)}"
    if status != 200:
        error = answer.get("error")
        return f"STOW answered HTTP {status}" + (f" ({str(error)[:40]})" if error else "")
    stored = {
        uid
        for item in answer.get(REFERENCED_SOP_SEQUENCE, {}).get("Value", [])
        for uid in item.get(REFERENCED_SOP_INSTANCE_UID, {}).get("Value", [])
    }
    missing = len(set(sop_uids) - stored)
    if missing:
        return f"STOW answer lists {len(sop_uids) - missing} of {len(sop_uids)} instances"
    return None


def jobs_outcome(jobs: list[dict[str, Any]]) -> tuple[str, str | None, int]:
    """A study's jobs → ("pending" | "done" | "failed", why it failed, bytes of SEG).

    "done" once there is at least one job and every one is done / delivered with results;
    "failed" as soon as one is failed / delivery_failed, or done without any result."""
    for job in jobs:
        state = job.get("state")
        if state in FAILED:
            reason = str(job.get("reason") or "no reason given")[:80]
            return "failed", f"job {state}: {reason}", 0
        if state in FINISHED and not job.get("results"):
            return "failed", f"job {state} without results", 0
    if jobs and all(job.get("state") in FINISHED for job in jobs):
        return "done", None, sum(int(r.get("bytes") or 0) for job in jobs for r in job["results"])
    return "pending", None, 0
