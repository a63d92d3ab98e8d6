"""``python -m clients stow DIR``: a folder sent by STOW-RS, its jobs awaited, the SEGs saved."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from export.phantoms.ct_liver import make_ct_slice
from export.phantoms.dicom_writer import write_series
from load.local_service import ROOT, local_service

pytestmark = pytest.mark.integration


def test_stow_a_folder_waits_for_the_job_and_saves_its_seg(tmp_path: Path) -> None:
    rng = np.random.default_rng(41)
    files = write_series(np.stack([make_ct_slice(rng, shape=(128, 128)).hu for _ in range(4)]), (2.0, 2.0), 3.0)
    folder = tmp_path / "study"
    (folder / "nested").mkdir(parents=True)
    for index, data in enumerate(files):
        (folder / ("nested" if index % 2 else "") / f"{index}.dcm").write_bytes(data)
    (folder / "notes.txt").write_text("not a DICOM file")
    with local_service(ROOT / "model_repository", tmp_path / "service", env={"MEDSEG_SERIES_QUIET_S": "0.5"}) as service:
        run = subprocess.run(
            [sys.executable, "-m", "clients", "--url", service.url, "stow", str(folder), "-o", str(tmp_path / "seg"),
             "--timeout", "120"],
            capture_output=True, text=True, timeout=300, cwd=ROOT,
        )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "stored 4 instance(s) in 1 study(ies); refused 1" in run.stdout
    assert "done (swtr_unet, 4 instance(s))" in run.stdout
    (seg_path,) = (tmp_path / "seg").glob("*.dcm")
    seg = hd.seg.segread(seg_path)
    sources = {str(pydicom.dcmread(f"{folder}/{p}", stop_before_pixels=True).SOPInstanceUID)
               for p in ("0.dcm", "nested/1.dcm", "2.dcm", "nested/3.dcm")}
    assert {uid for _, _, uid in seg.get_source_image_uids()} == sources
