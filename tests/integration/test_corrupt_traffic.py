"""Traffic as a hospital sends it, against a real `bentoml serve`: compressed DICOM files with
random bytes changed (fixed seeds), many clients at once, and a decode that runs past its budget.

Every answer is a 200 or a typed 4xx, quickly; nothing is a 5xx, nothing is lost.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest

from load.local_service import ROOT, LocalService, local_service
from load.burst import burst_uploads, corpus_files, corrupt, post_all, summarise

pytestmark = pytest.mark.integration

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
# pydicom's bundled files, one or more per compressed transfer syntax the service decodes.
COMPRESSED = {
    "RLE": ["MR_small_RLE.dcm", "SC_rgb_rle_16bit_2frame.dcm", "SC_rgb_rle_32bit.dcm"],
    "JPEG baseline": ["SC_rgb_jpeg_dcmtk.dcm", "SC_jpeg_no_color_transform.dcm", "examples_ybr_color.dcm"],
    "JPEG extended": ["JPEG-lossy.dcm"],
    "JPEG lossless": ["SC_rgb_jpeg_gdcm.dcm"],
    "JPEG-LS": ["MR_small_jpeg_ls_lossless.dcm", "JPEGLSNearLossless_16.dcm", "SC_rgb_jls_lossy_line.dcm"],
    "JPEG 2000": ["MR_small_jp2klossless.dcm", "693_J2KI.dcm", "GDCMJ2K_TextGBR.dcm", "examples_jpeg2k.dcm"],
    "deflate": ["image_dfl.dcm"],
}
SEEDS = range(12)
ANSWER_WITHIN_S = 5.0  # "a few seconds": a corrupt file must never hold a request to the timeout


def test_corrupted_compressed_files_get_200_or_a_typed_4xx_within_seconds(client: httpx.Client) -> None:
    """Fuzz: every compressed file of the list with 20 random bytes changed, 12 seeds each; the
    RLE file's seeds include the ones whose segments made pylibjpeg-rle panic."""
    outcomes: Counter[str] = Counter()
    failures = []
    for syntax, names in COMPRESSED.items():
        for name in names:
            source = (TEST_FILES / name).read_bytes()
            for seed in SEEDS:
                began = time.monotonic()
                response = client.post(
                    "/v1/segment",
                    files={"file": (f"{name}~{seed}", corrupt(source, seed), "application/octet-stream")},
                    data={"model": "swtr_unet", "output": "json"},
                )
                took = time.monotonic() - began
                if response.status_code >= 500 or response.status_code not in (200, 400, 413, 415, 422):
                    failures.append(f"{name}~{seed}: {response.status_code} {response.text[:120]}")
                elif response.status_code != 200 and set(response.json()) != {"error", "message"}:
                    failures.append(f"{name}~{seed}: {response.status_code} off the contract: {response.text[:120]}")
                if took > ANSWER_WITHIN_S:
                    failures.append(f"{name}~{seed}: answered after {took:.1f} s")
                outcomes[f"{syntax} {response.status_code}"] += 1
    print("\nfuzz outcomes:", dict(sorted(outcomes.items())))
    assert not failures, "\n".join(failures)
    assert sum(n for key, n in outcomes.items() if key.endswith(" 200")) >= 10  # not everything refused
    assert client.get("/readyz").status_code == 200


@pytest.fixture(scope="module")
def full_size_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalService]:
    """The embedded service with the default upload limit (the shared one takes 4 MiB; the burst
    has 7 MB radiographs and a 6 MB 120-frame ultrasound)."""
    with local_service(ROOT / "model_repository", tmp_path_factory.mktemp("burst"), env={"MEDSEG_REQUEST_TIMEOUT_S": "90"}) as running:
        yield running


def test_a_burst_of_mixed_valid_and_corrupt_real_files_gets_no_5xx_and_loses_nothing(full_size_service: LocalService) -> None:
    """160 uploads of real DICOM files (pydicom's and pydicom-data's: every transfer syntax,
    1955x1841 radiographs, a 120-frame colour ultrasound), one in three corrupted, to every model
    and output kind, from 16 clients at once. A lost inference call would end as a 504."""
    files = corpus_files()
    assert any(p.name == "color3d_jpeg_baseline.dcm" for p in files), "pydicom-data is not installed"
    uploads = burst_uploads(files, count=160, seed=1)
    outcomes, wall_s = asyncio.run(post_all(full_size_service.url, uploads, concurrency=16, timeout_s=120))
    report = summarise(outcomes, wall_s)
    print("\nburst:", report.statuses, report.codes, f"wall {report.wall_s} s, p95 {report.p95_s} s, max {report.max_s} s")
    assert report.requests == len(uploads)
    assert not report.off_contract, report.off_contract
    assert report.statuses.get("200", 0) >= 40
    assert httpx.get(f"{full_size_service.url}/readyz", timeout=10).status_code == 200
    log = full_size_service.log_text()
    assert "Traceback" not in log


def test_a_decode_past_its_budget_is_a_422_at_the_budget_and_the_service_goes_on(tmp_path: Path) -> None:
    """MEDSEG_DECODE_BUDGET_S=0.3: the 120-frame JPEG ultrasound takes seconds to decode here, so
    its decode is stopped (its process killed) and answered 422 at once; the next upload decodes."""
    big = next(p for p in corpus_files() if p.name == "color3d_jpeg_baseline.dcm").read_bytes()
    env = {"MEDSEG_DECODE_BUDGET_S": "0.3", "MEDSEG_DECODE_WORKERS": "1"}
    with local_service(ROOT / "model_repository", tmp_path, env=env) as running, httpx.Client(base_url=running.url, timeout=60) as http:
        began = time.monotonic()
        response = http.post("/v1/segment", files={"file": ("us.dcm", big)}, data={"model": "mast", "output": "json"})
        took = time.monotonic() - began
        assert response.status_code == 422, response.text
        assert response.json()["error"] == "unprocessable_image"
        assert "decoding budget" in response.json()["message"]
        assert took < 5.0
        small = (TEST_FILES / "CT_small.dcm").read_bytes()
        after = http.post("/v1/segment", files={"file": ("ct.dcm", small)}, data={"model": "swtr_unet", "output": "json"})
        assert after.status_code == 200, after.text
