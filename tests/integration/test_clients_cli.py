"""The client command line against a real service: ``python -m clients stow DIR`` (a folder sent
by STOW-RS, its jobs awaited, the SEGs saved) and ``python -m clients stream video.mp4`` (a video
streamed over WS /v1/stream, written back as an overlay video or mask PNGs)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from PIL import Image

from export.phantoms.ct_liver import make_ct_slice
from export.phantoms.dicom_writer import write_series
from clients.video import open_video
from export.phantoms.video import polyp_video
from load.local_service import ROOT, local_service

pytestmark = pytest.mark.integration


def test_stream_a_video_writes_masks_and_an_overlay_video_and_prints_latency(tmp_path: Path) -> None:
    video, truth = polyp_video(3002, 24, (240, 320), tmp_path / "clip.mp4")
    with local_service(ROOT / "model_repository", tmp_path / "service") as service:
        runs = {
            out: subprocess.run(
                [sys.executable, "-m", "clients", "--url", service.url, "stream", str(video), "--model", "mast",
                 "--out", str(tmp_path / out), *extra],
                capture_output=True, text=True, timeout=300, cwd=ROOT,
            )
            for out, extra in (("masks", ["--no-pacing"]), ("overlay.mp4", []))
        }
    for run in runs.values():
        assert run.returncode == 0, run.stdout + run.stderr
        assert "24 frames sent" in run.stdout and "latency ms: p50" in run.stdout and "achieved" in run.stdout
    masks = sorted((tmp_path / "masks").glob("frame_*.png"))
    answered = int(runs["masks"].stdout.split("answered ")[1].split(",")[0])
    dropped = int(runs["masks"].stdout.split("dropped ")[1].split(",")[0])
    assert len(masks) == answered and answered + dropped == 24 and answered >= 1
    inter = total = 0
    for path in masks:
        index = int(path.stem.split("_")[1])
        labels = np.asarray(Image.open(path))
        assert labels.shape == truth[index].shape and set(np.unique(labels)) <= {0, 1}
        inter += int(np.logical_and(labels == 1, truth[index]).sum())
        total += int((labels == 1).sum() + truth[index].sum())
    assert 2 * inter / total >= 0.7  # one 24-frame clip whose answered frames vary with timing (measured 0.80)
    overlay = open_video(tmp_path / "overlay.mp4")
    assert overlay.size == (240, 320) and sum(1 for _ in overlay) == 24  # dropped frames written plain


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
