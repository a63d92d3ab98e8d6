"""Locust load test of medseg-serve: one user class per user group (their code: load/scenarios/).

- SegmentUser (scenario "segment", weight 6): POST /v1/segment. swtr_unet with DICOM (pydicom's
  CT_small and phantom CT slices) and a CT PNG; mast with a polyp frame PNG, alone or with a
  reference frame; surgical_sam with a surgical frame PNG and classes. Outputs png, json,
  overlay, and seg for DICOM.
- VideoUser ("video", weight 2): WS /v1/stream, LOAD_VIDEO_SECONDS (10) of a phantom clip's JPEG
  frames at LOAD_VIDEO_FPS (30) through LOAD_VIDEO_MODEL (mast; surgical_sam with
  LOAD_VIDEO_CLASSES; swtr_unet), per-frame latency and dropped frames as locust events.
- PacsUser ("pacs", weight 1): STOW-RS of a phantom CT series of LOAD_PACS_INSTANCES (12) under
  new UIDs, then GET /v1/jobs?study= until its SEG exists (LOAD_PACS_TIMEOUT_S, 120;
  LOAD_PACS_POLL_S, 0.5), reported as "pacs: time-to-SEG".
- VolumeUser ("volume", weight 1): POST /v1/segment/volume, 64³ BraTS-like NIfTI cases (four
  files, or one 4-D file) through hnf_net, nifti and json.

Every request and event name starts with its scenario and ": " ("segment: swtr_unet dicom seg",
"volume: hnf_net nifti", "pacs: STOW 12 instances", "pacs: time-to-SEG", "video: connect",
"video: mast frame", "video: dropped", "video: end"). Choose scenarios by class name
(``... SegmentUser PacsUser``), by tag (``--tags mast``: each task is tagged with its scenario,
segment tasks with their model too; classes left without a task are not started) or by weight.

    .venv/bin/locust -f load/locustfile.py --headless --host http://127.0.0.1:3000 \\
        -u 8 -r 2 -t 60s --csv build/load/run --html build/load/report.html [SegmentUser ...]

Load profiles: add a shape's locustfile, ``-f load/locustfile.py,load/scenarios/step_shape.py``
or ``-f load/locustfile.py,load/scenarios/spike_shape.py`` (settings: load/scenarios/shapes.py).
Payloads are built at import (about a second), from the project's phantoms and pydicom's test
files; nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

if importlib.util.find_spec("load") is None:  # neither installed nor run from the checkout's root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from locust import events

from load.scenarios.common import drop_classes_without_tasks
from load.scenarios.pacs import PacsUser
from load.scenarios.segment import SegmentUser
from load.scenarios.video import VideoUser
from load.scenarios.volume import VolumeUser

SCENARIOS = {"segment": SegmentUser, "volume": VolumeUser, "pacs": PacsUser, "video": VideoUser}

events.test_start.add_listener(drop_classes_without_tasks)  # --tags may leave a class with no task

__all__ = ["SCENARIOS", "PacsUser", "SegmentUser", "VideoUser", "VolumeUser"]
