"""pacs: a modality (or a PACS forwarding one) storing CT series by STOW-RS and waiting for the SEG.

Each task stores a phantom CT series of ``LOAD_PACS_INSTANCES`` (default 12) 256² instances,
rewritten with new Study / Series / SOP instance UIDs, as one multipart/related body to
POST /dicom-web/studies, then polls GET /v1/jobs?study=UID every ``LOAD_PACS_POLL_S`` (0.5 s)
until every job of the study is done or delivered with its results.

Names: "pacs: STOW <n> instances" (the STOW request; a failure unless all n are stored) and
"pacs: time-to-SEG", a custom event per study (request_type "SEG"): response_time = ms from the
STOW's start to the poll that saw the SEG (to within one poll interval), response_length = the
SEGs' bytes; a failure when the STOW failed, a job failed (failed / delivery_failed), or no SEG
existed ``LOAD_PACS_TIMEOUT_S`` (120 s) after the STOW's start. The service's quiet period
(``MEDSEG_SERIES_QUIET_S``, 10 s by default) is part of it.
The polls are not in locust's statistics (they would outnumber the studies and drown their
latency in a per-scenario summary; a failing poll shows in the timeout's message); with
``LOAD_PACS_RECORD_POLLS=1`` they are, as one row "pacs: poll jobs".
"""

from __future__ import annotations

import json
import time
from typing import Any

import gevent
from locust import FastHttpUser, between, tag, task
from locust.contrib.fasthttp import FastHttpSession

from load.scenarios.pacs_checks import POLL, TIME_TO_SEG, PacsFailure, PacsSettings, jobs_outcome, stow_problem
from load.scenarios.payloads import pacs_template


class Unrecorded:
    """A request event that records nothing (for the polls)."""

    def fire(self, **_kwargs: Any) -> None:
        pass


class PacsUser(FastHttpUser):
    """A PACS storing one study at a time and waiting for its SEG before the next."""

    weight = 1
    wait_time = between(0.5, 2.0)
    network_timeout = 130.0
    connection_timeout = 30.0
    settings = PacsSettings.from_env()
    template = pacs_template(settings.instances)

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        event = environment.events.request if self.settings.record_polls else Unrecorded()
        self.jobs_client = FastHttpSession(
            base_url=self.host, request_event=event, user=self,
            network_timeout=30.0, connection_timeout=self.connection_timeout,
        )
        self.last_poll_problem: str | None = None

    @tag("pacs")
    @task
    def study(self) -> None:
        series = self.template.fresh()
        body, content_type = series.stow_body()
        start_time, started = time.time(), time.perf_counter()
        problem: str | None = None
        with self.client.post(
            "/dicom-web/studies",
            data=body,
            headers={"Content-Type": content_type, "Accept": "application/dicom+json"},
            name=self.settings.stow_name,
            catch_response=True,
        ) as response:
            problem = stow_problem(response.status_code, response.content or b"", series.sop_uids)
            if problem:
                response.failure(problem)
        if problem:
            self._time_to_seg(start_time, started, 0, PacsFailure("no SEG: the STOW failed"))
            return
        deadline = started + self.settings.timeout_s
        self.last_poll_problem = None
        while True:
            gevent.sleep(max(0.0, min(self.settings.poll_s, deadline - time.perf_counter())))
            state, why, size = self._poll(series.study_uid)
            if state == "done":
                self._time_to_seg(start_time, started, size, None)
                return
            if state == "failed":
                self._time_to_seg(start_time, started, 0, PacsFailure(why))
                return
            if time.perf_counter() >= deadline:
                last = f" (last poll: {self.last_poll_problem})" if self.last_poll_problem else ""
                failure = PacsFailure(f"no SEG within {self.settings.timeout_s:g} s{last}")
                self._time_to_seg(start_time, started, 0, failure)
                return

    def _poll(self, study_uid: str) -> tuple[str, str | None, int]:
        with self.jobs_client.get(f"/v1/jobs?study={study_uid}", name=POLL, catch_response=True) as response:
            jobs, self.last_poll_problem = None, None
            if response.status_code != 200:
                self.last_poll_problem = f"HTTP {response.status_code}" if response.status_code else "no answer"
            else:
                try:
                    jobs = json.loads(response.content)["jobs"]
                except (ValueError, KeyError, TypeError):
                    self.last_poll_problem = "not a job list"
            if self.last_poll_problem:
                response.failure(self.last_poll_problem)
        return jobs_outcome(jobs) if jobs is not None else ("pending", None, 0)

    def _time_to_seg(self, start_time: float, started: float, size: int, exception: Exception | None) -> None:
        self.environment.events.request.fire(
            request_type="SEG",
            name=TIME_TO_SEG,
            response_time=(time.perf_counter() - started) * 1000.0,
            response_length=size,
            exception=exception,
            context={},
            start_time=start_time,
            url="/v1/jobs",
            response=None,
        )
