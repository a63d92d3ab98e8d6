"""Every file of pydicom's bundled test set, posted to /v1/segment: 200 or a clear 4xx.

Never a 5xx, never a dead worker, and never a patient identifier of the file in the answer.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pydicom
import pytest

pytestmark = pytest.mark.integration

CORPUS = Path(pydicom.__file__).parent / "data" / "test_files"
FILES = sorted(p for p in CORPUS.rglob("*") if p.is_file())


def identifiers(path: Path) -> list[str]:
    """PatientName / PatientID of a DICOM file (long enough to be meaningful), else []."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        values = [str(ds.get("PatientName", "") or ""), str(ds.get("PatientID", "") or "")]
    except Exception:  # noqa: BLE001 - not DICOM: nothing to leak
        return []
    return [v for v in values if len(v) >= 6]


def test_corpus_is_present() -> None:
    assert len(FILES) > 50


def test_every_corpus_file_gets_200_or_a_typed_4xx(client, service) -> None:
    outcomes: Counter[str] = Counter()
    failures = []
    for path in FILES:
        response = client.post(
            "/v1/segment",
            files={"file": (path.name, path.read_bytes(), "application/octet-stream")},
            data={"model": "swtr_unet", "output": "json"},
        )
        if response.status_code == 200:
            outcomes["200"] += 1
        elif 400 <= response.status_code < 500:
            body = response.json()
            outcomes[f"{response.status_code} {body['error']}"] += 1
        else:
            failures.append(f"{path.name}: {response.status_code} {response.text[:200]}")
            continue
        leaked = [value for value in identifiers(path) if value in response.text]
        if leaked:
            failures.append(f"{path.name}: response contains a patient identifier")
    print("\npydicom corpus outcomes:", dict(sorted(outcomes.items())))
    assert not failures, "\n".join(failures)
    assert outcomes["200"] >= 40, outcomes
    # The workers are all still alive and serving.
    assert client.get("/livez").status_code == 200
    assert client.get("/readyz").status_code == 200
    assert "Traceback" not in service.log_text()
