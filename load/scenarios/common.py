"""What every scenario shares: request names, settings from the environment, answer checks."""

from __future__ import annotations

import os
from collections.abc import Mapping

SEPARATOR = ": "


def request_name(scenario: str, detail: str) -> str:
    """A locust request / event name: the scenario, ": ", then what was sent ("segment: mast png json").
    ``make load`` groups locust's rows by the part before ": "."""
    if not scenario or SEPARATOR in scenario:
        raise ValueError(f"bad scenario name {scenario!r}")
    return f"{scenario}{SEPARATOR}{detail}"


def scenario_of(name: str) -> str:
    """The scenario of a request name ("pacs: time-to-SEG" → "pacs")."""
    return name.split(SEPARATOR, 1)[0]


def env_number(name: str, default: float, environ: Mapping[str, str] | None = None, minimum: float = 0.0) -> float:
    """A number from the environment (``default`` when unset or empty); ValueError names the variable."""
    text = (os.environ if environ is None else environ).get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{name} must be a number, not {text!r}") from None
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum:g}, not {text!r}")
    return value


def env_int(name: str, default: int, environ: Mapping[str, str] | None = None, minimum: int = 0) -> int:
    value = env_number(name, default, environ, minimum)
    if value != int(value):
        raise ValueError(f"{name} must be a whole number, not {value:g}")
    return int(value)


def env_text(name: str, default: str, environ: Mapping[str, str] | None = None) -> str:
    return (os.environ if environ is None else environ).get(name, "").strip() or default


# The answer each output kind must have: (media type, leading bytes).
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EXPECTED_ANSWERS: dict[str, tuple[str, bytes | None]] = {
    "png": ("image/png", PNG_SIGNATURE),
    "overlay": ("image/png", PNG_SIGNATURE),
    "json": ("application/json", b"{"),
    "seg": ("application/dicom", None),  # DICM at offset 128, checked below
    "nifti": ("application/gzip", b"\x1f\x8b"),
}


def answer_problem(output: str, status: int, content_type: str | None, body: bytes | None) -> str | None:
    """Why an answer is not what ``output`` promises (None when it is): status 200, the media type,
    the format's signature."""
    body = body or b""
    if status != 200:
        snippet = body[:160].decode("utf-8", errors="replace").replace("\n", " ")
        return f"HTTP {status}: {snippet}"
    media_type, signature = EXPECTED_ANSWERS[output]
    got = (content_type or "").split(";", 1)[0].strip().lower()
    if got != media_type:
        return f"{output}: content-type {got or 'none'}, expected {media_type}"
    if signature is not None and not body.startswith(signature):
        return f"{output}: the body is not {media_type} ({len(body)} bytes)"
    if output == "seg" and body[128:132] != b"DICM":
        return f"seg: the body is not a DICOM Part-10 file ({len(body)} bytes)"
    return None


def drop_classes_without_tasks(environment, **_kwargs) -> None:  # noqa: ANN001 - a locust Environment
    """A ``test_start`` listener: leave out the user classes that ``--tags`` / ``--exclude-tags``
    left without a task (locust would start them and fail "No tasks defined"), so a tag picks
    scenarios across every class: ``--tags mast`` runs SegmentUser's mast tasks only."""
    kept = [user_class for user_class in environment.user_classes if user_class.tasks]
    if kept and len(kept) < len(environment.user_classes):
        environment.user_classes[:] = kept
