"""Orthanc auto-forward: send every stable CT/MR series to the medseg service by STOW-RS.

This script runs *inside* Orthanc (its python plugin, orthanc-python 4.0, loaded by the top-level
``PythonScript`` configuration key) with Debian's system Python: only the ``orthanc`` module and
the standard library are available. It is started by ``load/orthanc.py``.

Configuration (Orthanc's config.json)::

    "DicomWeb": {"Servers": {"medseg": {"Url": "http://127.0.0.1:3000/dicom-web/", ...}}},
    "MedsegForward": {"Server": "medseg", "Modalities": ["CT", "MR"],
                      "Retries": 5, "RetryDelaySeconds": 2}

Without a ``MedsegForward`` section the script does nothing.

What it does: on ``STABLE_SERIES`` (no new instance for ``StableAge`` seconds) the series id is
queued (the change callback never blocks); one daemon thread reads the series and, when its
Modality is configured and it is not a derived object, POSTs
``/dicom-web/servers/{Server}/stow {"Resources": [id]}``: one chunked STOW request with the
whole series, run as an Orthanc job that the thread polls (``Synchronous: false``, see
``Forwarder._stow`` for why). Series go one at a time, in the order they became stable. A
failed STOW (service down, an answer Orthanc does not accept) is retried with exponential
back-off, ``Retries`` times. A series still queued or being retried when Orthanc stops is not
sent later (Orthanc does not replay STABLE_SERIES after a restart).

Loop guard: SEG / SR / RTSTRUCT / PR / KO series, and any series holding an instance made by the
service (Manufacturer ``medseg-serve``), are never sent: the service stores its SEG back into
the same study, and that must not go back to the service.
Logs carry Orthanc ids, counts and modality only (no patient identifiers).
"""

import json
import queue
import threading
import time

import orthanc

DERIVED_MODALITIES = frozenset({"SEG", "SR", "RTSTRUCT", "PR", "KO"})
SERVICE_MANUFACTURER = "medseg-serve"
PREFIX = "medseg-forward: "
JOB_POLL_S = 0.1


class StowFailed(Exception):
    """The DICOMweb plugin's STOW job failed (service down, or an answer it did not accept)."""


def _settings():
    """The ``MedsegForward`` section (None when absent) with defaults filled in."""
    section = json.loads(orthanc.GetConfiguration()).get("MedsegForward")
    if not isinstance(section, dict):
        return None
    return {
        "Server": str(section.get("Server", "medseg")),
        "Modalities": frozenset(str(m).upper() for m in section.get("Modalities", ["CT", "MR"])),
        "Retries": max(0, int(section.get("Retries", 5))),
        "RetryDelaySeconds": max(0.0, float(section.get("RetryDelaySeconds", 2))),
    }


def _describe(error):
    """An exception's message (an OrthancException's args are (code, description))."""
    return str(error.args[-1]) if error.args else type(error).__name__


def _get_json(uri):
    return json.loads(orthanc.RestApiGet(uri))


def skip_reason(series_id, modalities):
    """Why the series must not be forwarded (None: forward it). Also returns its instance count."""
    series = _get_json("/series/" + series_id)
    tags = series.get("MainDicomTags", {})
    modality = str(tags.get("Modality", "")).upper()
    count = len(series.get("Instances", []))
    if modality in DERIVED_MODALITIES:
        return "derived modality " + modality, modality, count
    if modality not in modalities:
        return "modality " + (modality or "(none)") + " not configured", modality, count
    if str(tags.get("Manufacturer", "")).strip() == SERVICE_MANUFACTURER:
        return "made by " + SERVICE_MANUFACTURER, modality, count
    # The series' main tags come from its first instance: check every instance (the loop guard
    # must hold even if a service-made instance ended up in a source series). One request.
    instances = _get_json("/series/" + series_id + "/instances-tags?simplify")
    for instance_id, instance_tags in instances.items():
        if str(instance_tags.get("Manufacturer", "")).strip() == SERVICE_MANUFACTURER:
            return "instance " + instance_id + " made by " + SERVICE_MANUFACTURER, modality, count
    return None, modality, count


class Forwarder:
    """A queue of stable series ids and the one thread that sends them."""

    def __init__(self, settings):
        self.settings = settings
        self.pending = queue.Queue()
        self.queued = set()  # ids waiting in the queue: a series stable twice before sending goes once
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.current = None  # the series being checked, sent or waiting to be retried
        self.thread = threading.Thread(target=self._run, name="medseg-forward", daemon=True)
        self.thread.start()

    def submit(self, series_id):
        orthanc.LogInfo(PREFIX + "series %s stable" % series_id)
        with self.lock:
            if series_id in self.queued:
                return
            self.queued.add(series_id)
        self.pending.put(series_id)

    def stop(self, timeout_s=5.0):
        """Stop the thread (a STOW job in flight is left to Orthanc, which cancels it on exit)."""
        self.stopping.set()
        with self.lock:
            left = len(self.queued) + (self.current is not None)
        self.pending.put(None)
        self.thread.join(timeout_s)
        orthanc.LogWarning(PREFIX + "stopped; %d stable series not sent (queued or in flight)" % left)

    def _run(self):
        while not self.stopping.is_set():
            series_id = self.pending.get()
            if series_id is None:
                return
            with self.lock:
                self.queued.discard(series_id)
                self.current = series_id
            try:
                self._forward(series_id)
            except Exception as error:  # never let the worker die
                orthanc.LogError(PREFIX + "series %s: unexpected %s" % (series_id, type(error).__name__))
            with self.lock:
                self.current = None

    def _forward(self, series_id):
        try:
            reason, modality, count = skip_reason(series_id, self.settings["Modalities"])
        except orthanc.OrthancException:
            orthanc.LogWarning(PREFIX + "series %s is gone; not forwarded" % series_id)
            return
        if reason is not None:
            orthanc.LogWarning(PREFIX + "series %s (%s, %d instances) not forwarded: %s"
                               % (series_id, modality, count, reason))
            return
        delay = self.settings["RetryDelaySeconds"]
        attempts = self.settings["Retries"] + 1
        for attempt in range(1, attempts + 1):
            started = time.monotonic()
            try:
                done = self._stow(series_id)
            except (orthanc.OrthancException, StowFailed) as error:
                if attempt == attempts or self.stopping.is_set():
                    orthanc.LogError(PREFIX + "series %s (%s, %d instances) not forwarded after %d attempts: %s"
                                     % (series_id, modality, count, attempt, _describe(error)))
                    return
                orthanc.LogWarning(PREFIX + "series %s: STOW attempt %d/%d failed (%s); retrying in %.1fs"
                                   % (series_id, attempt, attempts, _describe(error), delay))
                if self.stopping.wait(delay):
                    return
                delay = min(delay * 2, 300.0)
                continue
            if done:
                orthanc.LogWarning(PREFIX + "series %s (%s, %d instances) forwarded in %.2fs"
                                   % (series_id, modality, count, time.monotonic() - started))
            return

    def _stow(self, series_id):
        """One STOW of the series by the DICOMweb plugin; True once sent, False when Orthanc stops.

        The job is submitted asynchronously and polled: orthanc-python 4.0 holds the GIL during
        an SDK call, so a synchronous POST would stall Orthanc's change callbacks (this script's
        and so every later STABLE_SERIES) for as long as the service takes to answer.
        """
        uri = "/dicom-web/servers/%s/stow" % self.settings["Server"]
        body = json.dumps({"Resources": [series_id], "Synchronous": False})
        job_id = json.loads(orthanc.RestApiPostAfterPlugins(uri, body))["ID"]
        while not self.stopping.wait(JOB_POLL_S):
            job = _get_json("/jobs/" + job_id)
            state = job.get("State")
            if state == "Success":
                return True
            if state == "Failure":
                raise StowFailed(job.get("ErrorDetails") or job.get("ErrorDescription") or "job failed")
        return False


FORWARDER = None


def on_change(change_type, level, resource_id):
    global FORWARDER
    if change_type == orthanc.ChangeType.STABLE_SERIES and FORWARDER is not None:
        FORWARDER.submit(resource_id)
    elif change_type == orthanc.ChangeType.ORTHANC_STOPPED and FORWARDER is not None:
        FORWARDER.stop()
        FORWARDER = None


def _install():
    global FORWARDER
    settings = _settings()
    if settings is None:
        orthanc.LogWarning(PREFIX + "no MedsegForward section: forwarding off")
        return
    FORWARDER = Forwarder(settings)
    orthanc.RegisterOnChangeCallback(on_change)
    orthanc.LogWarning(PREFIX + "stable %s series go to DICOMweb server %s (%d retries)"
                       % ("/".join(sorted(settings["Modalities"])), settings["Server"], settings["Retries"]))


_install()
