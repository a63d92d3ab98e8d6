"""volume: POST /v1/segment/volume, BraTS-like phantom cases (64³ NIfTI) through hnf_net.

Request names: "volume: hnf_net <output>" for the four modalities as separate files (t1, t1ce,
t2, flair), "volume: hnf_net 4d <output>" for one 4-D file; outputs nifti and json.
"""

from __future__ import annotations

import random

from locust import FastHttpUser, between, tag, task

from load.scenarios.common import answer_problem
from load.scenarios.payloads import VOLUME_OUTPUTS, volume_payloads, volume_request

CASES = volume_payloads()


class VolumeUser(FastHttpUser):
    """A research workstation sending whole MR studies."""

    weight = 1
    wait_time = between(0.2, 1.0)
    network_timeout = 130.0
    connection_timeout = 30.0

    def _post(self, stacked: bool) -> None:
        output = random.choice(VOLUME_OUTPUTS)
        name, body, content_type = volume_request(random.choice(CASES), output, stacked)
        with self.client.post(
            "/v1/segment/volume", data=body, headers={"Content-Type": content_type}, name=name, catch_response=True
        ) as response:
            content_type = response.headers.get("content-type")
            problem = answer_problem(output, response.status_code, content_type, response.content)
            if problem:
                response.failure(problem)

    @tag("volume")
    @task(3)
    def channels(self) -> None:
        self._post(stacked=False)

    @tag("volume")
    @task(1)
    def stacked(self) -> None:
        self._post(stacked=True)
