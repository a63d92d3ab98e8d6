"""Load test of POST /v1/segment with a real DICOM slice (pydicom's bundled CT_small.dcm).

Headless run against a service on 127.0.0.1:3000 (``make serve`` in another shell):

    .venv/bin/locust -f load/locustfile.py --host http://127.0.0.1:3000 --headless \
        -u 8 -r 2 -t 60s --csv build/load --exit-code-on-error 1

``MEDSEG_LOAD_FILE`` replaces the payload (any DICOM / PNG / JPEG), ``MEDSEG_LOAD_MODEL`` the model.
"""

from __future__ import annotations

import os
from pathlib import Path

import pydicom
from locust import FastHttpUser, between, task

PAYLOAD_PATH = Path(os.environ.get("MEDSEG_LOAD_FILE", Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm"))
MODEL = os.environ.get("MEDSEG_LOAD_MODEL", "swtr_unet")
PAYLOAD = PAYLOAD_PATH.read_bytes()


class SegmentUser(FastHttpUser):
    wait_time = between(0.0, 0.2)

    @task(10)
    def segment_png(self) -> None:
        self.client.post(
            "/v1/segment",
            files={"file": (PAYLOAD_PATH.name, PAYLOAD, "application/octet-stream")},
            data={"model": MODEL, "output": "png"},
            name="/v1/segment png",
        )

    @task(1)
    def models(self) -> None:
        self.client.get("/v1/models")
