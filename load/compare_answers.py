"""Two builds of the service, one fixed request set, answers compared byte for byte.

For changes that must not change behaviour (a redesign, a dependency bump): every model with
every output kind, and one request per error class, are posted to both services; statuses,
content types, the ``X-Medseg-*`` headers and bodies must be equal (JSON compared parsed, so
key order and whitespace do not count; everything else byte for byte).

    python -m load.compare_answers --before http://127.0.0.1:3000 --after http://127.0.0.1:3001
    python -m load.compare_answers --before-checkout /tmp/old --after-checkout .   # starts both

A checkout is a folder with the service's code and a built ``model_repository/``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pydicom

from export.sample_requests import Files, requests_per_model

OUTPUTS_2D = ("png", "json", "overlay")
OUTPUTS_VOLUME = ("nifti", "json")
TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


@dataclass(frozen=True)
class Probe:
    name: str
    method: str
    route: str
    files: Files | None = None
    form: dict[str, str] | None = None


@dataclass(frozen=True)
class Answer:
    status: int
    content_type: str
    medseg_headers: dict[str, str]
    body: Any  # parsed JSON, or bytes

    @classmethod
    def of(cls, response: httpx.Response) -> Answer:
        content_type = response.headers.get("content-type", "")
        body: Any = response.content
        if content_type.startswith("application/json"):
            body = response.json()
        headers = {k.lower(): v for k, v in response.headers.items() if k.lower().startswith("x-medseg-")}
        return cls(response.status_code, content_type, headers, body)


def probes() -> list[Probe]:
    """Every model × output kind, the listing, and one request per error class."""
    samples = requests_per_model()
    listed = [Probe("GET /v1/models", "GET", "/v1/models")]
    for model, (route, files, form) in samples.items():
        outputs = OUTPUTS_VOLUME if route.endswith("/volume") else OUTPUTS_2D
        listed += [Probe(f"{model} {out}", "POST", route, files, {**form, "model": model, "output": out}) for out in outputs]
    ct = samples["swtr_unet"][1]
    frame = samples["mast"][1]
    volume = samples["hnf_net"][1]
    sr = {"file": ("sr.dcm", (TEST_FILES / "reportsi.dcm").read_bytes(), "application/dicom")}
    truncated = {"file": ("cut.dcm", (TEST_FILES / "CT_small.dcm").read_bytes()[:20000], "application/dicom")}
    text = {"file": ("notes.txt", b"not an image", "text/plain")}
    segment, volume_route = "/v1/segment", "/v1/segment/volume"
    listed += [
        Probe("404 unknown model", "POST", segment, ct, {"model": "no_such_model"}),
        Probe("400 missing model", "POST", segment, ct, {}),
        Probe("400 unknown output", "POST", segment, ct, {"model": "swtr_unet", "output": "tiff"}),
        Probe("400 truncated DICOM", "POST", segment, truncated, {"model": "swtr_unet"}),
        Probe("400 reference on image2d", "POST", segment, {**ct, "reference": frame["file"]}, {"model": "swtr_unet"}),
        Probe("400 classes on image2d", "POST", segment, ct, {"model": "swtr_unet", "classes": "1"}),
        Probe("400 threshold outside (0, 1)", "POST", segment, frame, {"model": "mast", "threshold": "1.5"}),
        Probe("400 unknown class", "POST", segment, frame, {"model": "surgical_sam", "classes": "nope"}),
        Probe("400 missing NIfTI channel", "POST", volume_route, {"t1": volume["t1"]}, {"model": "hnf_net"}),
        Probe("415 not an image", "POST", segment, text, {"model": "swtr_unet"}),
        Probe("415 image on the volume route", "POST", volume_route, {"t1": frame["file"]}, {"model": "hnf_net"}),
        Probe("422 structured report", "POST", segment, sr, {"model": "swtr_unet"}),
        Probe("422 volume model on a slice", "POST", segment, ct, {"model": "hnf_net"}),
        Probe("422 slice model on volumes", "POST", volume_route, volume, {"model": "swtr_unet"}),
    ]
    return listed


def ask(http: httpx.Client, probe: Probe) -> Answer:
    if probe.method == "GET":
        return Answer.of(http.get(probe.route))
    return Answer.of(http.post(probe.route, files=probe.files, data=probe.form))


def difference(before: Answer, after: Answer) -> str:
    """'' when equal, else what differs (without the bodies themselves)."""
    parts = [
        f"{field} {getattr(before, field)!r} → {getattr(after, field)!r}"
        for field in ("status", "content_type", "medseg_headers")
        if getattr(before, field) != getattr(after, field)
    ]
    if before.body != after.body:
        size = lambda body: len(body) if isinstance(body, bytes) else len(json.dumps(body))  # noqa: E731
        parts.append(f"body differs ({size(before.body)} → {size(after.body)} bytes)")
    return "; ".join(parts)


def compare(before_url: str, after_url: str) -> list[tuple[str, str]]:
    """(probe name, difference or '') for every probe, in order."""
    rows = []
    with httpx.Client(base_url=before_url, timeout=300) as old, httpx.Client(base_url=after_url, timeout=300) as new:
        for probe in probes():
            rows.append((probe.name, difference(ask(old, probe), ask(new, probe))))
    return rows


@contextmanager
def served(checkout: Path, workdir: Path) -> Iterator[str]:
    """``bentoml serve`` of ``checkout``'s code and model repository; its URL."""
    from load.local_service import local_service

    with local_service(checkout.resolve() / "model_repository", workdir, cwd=checkout.resolve()) as service:
        yield service.url


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m load.compare_answers", description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", help="URL of the service before the change")
    parser.add_argument("--after", help="URL of the service after the change")
    parser.add_argument("--before-checkout", type=Path, help="start the service of this checkout as 'before'")
    parser.add_argument("--after-checkout", type=Path, help="start the service of this checkout as 'after'")
    args = parser.parse_args(argv)
    with ExitStack() as stack:
        urls = {}
        for side in ("before", "after"):
            checkout = getattr(args, f"{side}_checkout")
            if checkout is not None:
                workdir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
                urls[side] = stack.enter_context(served(checkout, workdir))
            elif getattr(args, side):
                urls[side] = getattr(args, side)
            else:
                parser.error(f"give --{side} or --{side}-checkout")
        rows = compare(urls["before"], urls["after"])
    width = max(len(name) for name, _ in rows)
    for name, diff in rows:
        print(f"{name:<{width}}  {'same' if not diff else 'DIFFERENT: ' + diff}")
    different = sum(1 for _, diff in rows if diff)
    print(f"{len(rows) - different} same, {different} different")
    return 1 if different else 0


if __name__ == "__main__":
    sys.exit(main())
