"""segment: POST /v1/segment, every 2-D model, DICOM and PNG uploads, every output kind.

Request names: "segment: <model> <upload> <output>", upload "dicom" (pydicom's CT_small and
phantom CT slices), "png", or "png+ref" (mast with a reference frame); outputs png, json,
overlay, and seg for DICOM uploads. Each answer is checked (status 200, media type, signature).
"""

from __future__ import annotations

import random

from locust import FastHttpUser, between, tag, task

from load.scenarios.common import answer_problem
from load.scenarios.payloads import segment_payloads, segment_request

CASES = segment_payloads()


class SegmentUser(FastHttpUser):
    """A PACS viewer or a script posting single images: most of any mixed run."""

    weight = 6
    wait_time = between(0.0, 0.2)
    network_timeout = 130.0  # past the service's own 120 s deadline (504)
    connection_timeout = 30.0

    def _post(self, key: str) -> None:
        case = CASES[key]
        output = random.choice(case.outputs)
        name, body, content_type = segment_request(case, output, random.randrange(len(case.variants)))
        with self.client.post(
            "/v1/segment", data=body, headers={"Content-Type": content_type}, name=name, catch_response=True
        ) as response:
            content_type = response.headers.get("content-type")
            problem = answer_problem(output, response.status_code, content_type, response.content)
            if problem:
                response.failure(problem)

    @tag("segment", "swtr_unet")
    @task(4)
    def swtr_unet_dicom(self) -> None:
        self._post("swtr_unet dicom")

    @tag("segment", "swtr_unet")
    @task(1)
    def swtr_unet_png(self) -> None:
        self._post("swtr_unet png")

    @tag("segment", "mast")
    @task(1)
    def mast_png(self) -> None:
        self._post("mast png")

    @tag("segment", "mast")
    @task(2)
    def mast_png_reference(self) -> None:
        self._post("mast png+ref")

    @tag("segment", "surgical_sam")
    @task(2)
    def surgical_sam_png(self) -> None:
        self._post("surgical_sam png")
