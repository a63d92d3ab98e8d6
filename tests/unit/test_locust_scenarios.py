"""The locust scenarios without a server: payload builders, request names, the STOW and job
checks, the WebSocket stream client against a scripted server, and (in a child interpreter:
importing locust here would monkey-patch this one with gevent) the locustfile's user classes,
SCENARIOS and the load shapes."""

from __future__ import annotations

import email.parser
import email.policy
import gzip
import io
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import gevent
import gevent.queue
import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image
from websocket import ABNF

from load.scenarios import ws_stream
from load.scenarios.common import answer_problem, drop_classes_without_tasks, env_int, request_name, scenario_of
from load.scenarios.pacs_checks import POLL, TIME_TO_SEG, PacsSettings, jobs_outcome, stow_problem
from load.scenarios.payloads import (
    BRATS_MODALITIES,
    VOLUME_OUTPUTS,
    ct_series_template,
    multipart_form,
    multipart_related,
    segment_cases,
    segment_request,
    video_frames,
    volume_cases,
    volume_request,
)
from load.scenarios.ws_stream import DROPPED, StreamTally, VideoSettings, VideoStream, end_problem, frame_name, ws_url
from services.dicomweb.multipart import PartData, PartEnd, PartStart, RelatedParts, related_content_type

ROOT = Path(__file__).resolve().parents[2]
SCENARIO_NAMES = ("segment", "volume", "pacs", "video")


def form_parts(body: bytes, content_type: str) -> dict[str, tuple[str | None, str | None, bytes]]:
    """A multipart/form-data body → {field: (file name, media type, content)} (the email parser)."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body
    )
    assert message.is_multipart()
    parts = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        filename = part.get_filename()
        parts[name] = (filename, part.get_content_type() if filename else None, part.get_payload(decode=True))
    return parts


def related_parts(body: bytes, content_type: str, chunk: int = 7001) -> list[tuple[dict[str, str], bytes]]:
    """A STOW-RS body → its parts, through the service's own streaming parser."""
    parser = RelatedParts(related_content_type(content_type).boundary)
    parts: list[tuple[dict[str, str], bytes]] = []
    data: list[bytes] = []
    for start in range(0, len(body), chunk):
        for event in parser.feed(body[start:start + chunk]):
            if isinstance(event, PartStart):
                headers, data = event.headers, []
            elif isinstance(event, PartData):
                data.append(event.data)
            elif isinstance(event, PartEnd):
                parts.append((headers, b"".join(data)))
    parser.finish()
    return parts


# --------------------------------------------------------------------------- names and settings


def test_request_names_carry_their_scenario() -> None:
    assert request_name("pacs", "time-to-SEG") == TIME_TO_SEG == "pacs: time-to-SEG"
    assert POLL == "pacs: poll jobs"
    assert DROPPED == "video: dropped" and frame_name("mast") == "video: mast frame"
    assert PacsSettings(instances=12).stow_name == "pacs: STOW 12 instances"
    assert scenario_of("segment: mast png+ref json") == "segment"
    with pytest.raises(ValueError):
        request_name("a: b", "c")


def test_settings_from_the_environment() -> None:
    assert PacsSettings.from_env({}) == PacsSettings(12, 120.0, 0.5, False)
    pacs = PacsSettings.from_env({"LOAD_PACS_INSTANCES": "3", "LOAD_PACS_TIMEOUT_S": "9.5", "LOAD_PACS_RECORD_POLLS": "1"})
    assert (pacs.instances, pacs.timeout_s, pacs.record_polls) == (3, 9.5, True)
    video = VideoSettings.from_env({"LOAD_VIDEO_MODEL": "surgical_sam", "LOAD_VIDEO_FPS": "15",
                                    "LOAD_VIDEO_SECONDS": "2", "LOAD_VIDEO_CLASSES": "1,4"})
    assert video.frames == 30 and video.handshake() == {"model": "surgical_sam", "output": "png", "classes": "1,4"}
    assert VideoSettings.from_env({}).handshake() == {"model": "mast", "output": "png"}
    with pytest.raises(ValueError, match="LOAD_VIDEO_MODEL"):
        VideoSettings.from_env({"LOAD_VIDEO_MODEL": "hnf_net"})
    with pytest.raises(ValueError, match="LOAD_PACS_INSTANCES"):
        env_int("LOAD_PACS_INSTANCES", 12, {"LOAD_PACS_INSTANCES": "2.5"})
    with pytest.raises(ValueError, match="LOAD_VIDEO_FPS"):
        VideoSettings.from_env({"LOAD_VIDEO_FPS": "fast"})


def test_answer_checks() -> None:
    png = b"\x89PNG\r\n\x1a\n..."
    assert answer_problem("png", 200, "image/png", png) is None
    assert answer_problem("overlay", 200, "image/png; charset=binary", png) is None
    assert answer_problem("json", 200, "application/json", b'{"a": 1}') is None
    assert answer_problem("seg", 200, "application/dicom", b"\0" * 128 + b"DICM") is None
    assert answer_problem("nifti", 200, "application/gzip", gzip.compress(b"x")) is None
    assert "HTTP 503" in answer_problem("png", 503, "application/json", b'{"error": "not_ready"}')
    assert "content-type" in answer_problem("png", 200, "application/json", b"{}")
    assert answer_problem("seg", 200, "application/dicom", b"\0" * 200) is not None
    assert answer_problem("png", 200, "image/png", b"GIF89a") is not None


# --------------------------------------------------------------------------- segment and volume


def test_segment_requests_cover_every_model_input_and_output() -> None:
    cases = segment_cases()
    assert set(cases) == {"swtr_unet dicom", "swtr_unet png", "mast png", "mast png+ref", "surgical_sam png"}
    assert cases["swtr_unet dicom"].outputs == ("png", "json", "overlay", "seg")
    assert all(case.outputs == ("png", "json", "overlay") for key, case in cases.items() if key != "swtr_unet dicom")
    sources = set()
    for case in cases.values():
        for variant in range(len(case.variants)):
            for output in case.outputs:
                name, body, content_type = segment_request(case, output, variant)
                assert name == f"segment: {case.model} {case.kind} {output}"
                parts = form_parts(body, content_type)
                assert parts["model"][2].decode() == case.model and parts["output"][2].decode() == output
                for field, value in case.fields.items():
                    assert parts[field][2].decode() == value
            files = case.variants[variant]
            assert set(files) == ({"file", "reference"} if case.kind == "png+ref" else {"file"})
            for filename, content, media_type in files.values():
                sources.add(filename)
                assert form_parts(*multipart_form({}, files))["file"][2] == files["file"][1]
                if media_type == "application/dicom":
                    ds = pydicom.dcmread(io.BytesIO(content))
                    assert ds.Modality == "CT" and ds.pixel_array.ndim == 2
                else:
                    image = Image.open(io.BytesIO(content))
                    assert image.format == "PNG"
    assert "CT_small.dcm" in sources  # pydicom's own file next to the phantoms
    assert cases["surgical_sam png"].fields == {"classes": "1,4"}
    with pytest.raises(ValueError):
        segment_request(cases["mast png"], "seg", 0)


def test_volume_requests_are_brats_nifti() -> None:
    (case,) = volume_cases(count=1, shape=(24, 20, 16))
    assert set(case.channels) == set(BRATS_MODALITIES) and set(case.stacked) == {"file"}
    for name, (_, content, _) in case.channels.items():
        image = nib.Nifti1Image.from_bytes(gzip.decompress(content))
        assert image.shape == (24, 20, 16) and image.get_data_dtype() == np.int16, name
    stacked = nib.Nifti1Image.from_bytes(gzip.decompress(case.stacked["file"][1]))
    assert stacked.shape == (24, 20, 16, 4)
    for output in VOLUME_OUTPUTS:
        name, body, content_type = volume_request(case, output)
        assert name == f"volume: hnf_net {output}"
        assert set(form_parts(body, content_type)) == {"model", "output", *BRATS_MODALITIES}
        name, body, content_type = volume_request(case, output, stacked=True)
        assert name == f"volume: hnf_net 4d {output}"
        assert set(form_parts(body, content_type)) == {"model", "output", "file"}


# --------------------------------------------------------------------------- pacs


def test_every_stow_is_a_new_study_that_the_service_parser_reads_back() -> None:
    template = ct_series_template(3)
    first, second = template.fresh(), template.fresh()
    uids = lambda s: {s.study_uid, s.series_uid, *s.sop_uids}  # noqa: E731
    assert len(uids(first)) == 5 and not uids(first) & uids(second)
    pixels = []
    for series in (first, second):
        body, content_type = series.stow_body()
        assert content_type.startswith('multipart/related; type="application/dicom"; boundary=')
        parts = related_parts(body, content_type)
        assert len(parts) == 3
        datasets = [pydicom.dcmread(io.BytesIO(data)) for headers, data in parts]
        assert all(headers["content-type"] == "application/dicom" for headers, _ in parts)
        assert {ds.StudyInstanceUID for ds in datasets} == {series.study_uid}
        assert {ds.SeriesInstanceUID for ds in datasets} == {series.series_uid}
        assert len({ds.FrameOfReferenceUID for ds in datasets}) == 1
        assert tuple(ds.SOPInstanceUID for ds in datasets) == series.sop_uids
        assert all(ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID for ds in datasets)
        assert all(len(uid) <= 64 and set(uid) <= set("0123456789.") for uid in uids(series))
        assert [int(ds.InstanceNumber) for ds in datasets] == [1, 2, 3]
        pixels.append(np.stack([ds.pixel_array for ds in datasets]))
    np.testing.assert_array_equal(pixels[0], pixels[1])  # the same images, only the UIDs change


def test_multipart_related_parts_survive_crlf_and_dashes_in_the_data() -> None:
    data = [b"\r\n--\r\n" * 3, b"--" + b"x" * 100 + b"\r\n"]
    body, content_type = multipart_related(data)
    assert [part for _, part in related_parts(body, content_type, chunk=5)] == data


def stow_answer(stored: list[str], failed: list[int] = ()) -> bytes:
    answer = {"00081199": {"vr": "SQ", "Value": [{"00081155": {"vr": "UI", "Value": [uid]}} for uid in stored]}}
    if failed:
        answer["00081198"] = {"vr": "SQ", "Value": [{"00081197": {"vr": "US", "Value": [r]}} for r in failed]}
    return json.dumps(answer).encode()


def test_stow_answer_must_store_every_instance() -> None:
    sops = ("1.2.3", "1.2.4")
    assert stow_problem(200, stow_answer(list(sops)), sops) is None
    assert "1 of 2" in stow_problem(200, stow_answer(["1.2.3"]), sops)
    assert stow_problem(202, stow_answer(["1.2.3"], [0xC000]), sops) == (
        "STOW answered HTTP 202: 1 instance(s) refused, reasons 0xc000")
    assert stow_problem(503, b'{"error": "not_ready", "message": "..."}', sops) == "STOW answered HTTP 503 (not_ready)"
    assert stow_problem(502, b"<html>", sops) == "STOW answered HTTP 502, not DICOM JSON"
    assert stow_problem(200, b"<html>", sops) == "STOW answer is not JSON"
    assert stow_problem(202, stow_answer(list(sops)), sops) == "STOW answered HTTP 202"


def test_job_outcomes() -> None:
    result = {"sop_instance_uid": "1.2", "bytes": 1000}
    assert jobs_outcome([]) == ("pending", None, 0)
    assert jobs_outcome([{"state": "waiting", "results": []}]) == ("pending", None, 0)
    assert jobs_outcome([{"state": "done", "results": [result]}]) == ("done", None, 1000)
    assert jobs_outcome([{"state": "delivered", "results": [result, result]}]) == ("done", None, 2000)
    assert jobs_outcome([{"state": "done", "results": [result]}, {"state": "running", "results": []}])[0] == "pending"
    state, why, _ = jobs_outcome([{"state": "failed", "reason": "mixed_size: two sizes", "results": []}])
    assert state == "failed" and why == "job failed: mixed_size: two sizes"
    assert jobs_outcome([{"state": "delivery_failed", "reason": None, "results": [result]}])[0] == "failed"
    assert jobs_outcome([{"state": "done", "results": []}])[0] == "failed"


# --------------------------------------------------------------------------- video


def test_video_frames_and_url() -> None:
    for model, mode in (("mast", "RGB"), ("surgical_sam", "RGB"), ("swtr_unet", "L")):
        frames = video_frames(model, count=3)
        image = Image.open(io.BytesIO(frames[0]))
        assert image.format == "JPEG" and image.mode == mode and image.size[::-1] in ((240, 320), (256, 256)), model
    with pytest.raises(ValueError):
        video_frames("hnf_net")
    assert ws_url("http://127.0.0.1:3000") == "ws://127.0.0.1:3000/v1/stream"
    assert ws_url("https://seg.example/") == "wss://seg.example/v1/stream"


class ScriptedServer:
    """A WebSocket stand-in that answers like WS /v1/stream: frames in ``drop`` are dropped,
    frames in ``errors`` get an error header, ``lose`` vanishes without a trace, the rest a header
    and a PNG; ``refuse`` closes the handshake with that code."""

    def __init__(self, drop=(), errors=(), lose=(), refuse: int | None = None) -> None:
        self.drop, self.errors, self.lose, self.refuse = set(drop), set(errors), set(lose), refuse
        self.inbox: gevent.queue.Queue = gevent.queue.Queue()
        self.received = self.answered = self.refused = self.dropped = 0
        self.handshake: dict | None = None
        self.closed = False

    def close_frame(self, code: int, reason: str) -> tuple[int, bytes]:
        return ABNF.OPCODE_CLOSE, code.to_bytes(2, "big") + reason.encode()

    def send(self, text: str) -> None:
        message = json.loads(text)
        if self.handshake is None:
            self.handshake = message
            if self.refuse:
                self.inbox.put(self.close_frame(self.refuse, "too many streams"))
            else:
                self.inbox.put((ABNF.OPCODE_TEXT, json.dumps({"ready": True, "stream": "s1"}).encode()))
        elif message == {"end": True}:
            end = {"end": True, "frames": self.received, "answered": self.answered, "errors": self.refused,
                   "dropped": self.dropped}
            self.inbox.put((ABNF.OPCODE_TEXT, json.dumps(end).encode()))
            self.inbox.put(self.close_frame(1000, ""))

    def send_binary(self, data: bytes) -> None:
        index = self.received
        self.received += 1
        if index in self.drop:
            self.dropped += 1
        elif index in self.errors:
            self.refused += 1
            header = {"frame": index, "error": "unsupported_media_type", "message": "?", "dropped": self.dropped}
            self.inbox.put((ABNF.OPCODE_TEXT, json.dumps(header).encode()))
        elif index not in self.lose:
            self.answered += 1
            header = {"frame": index, "dropped": self.dropped, "size": [2, 2]}
            self.inbox.put((ABNF.OPCODE_TEXT, json.dumps(header).encode()))
            self.inbox.put((ABNF.OPCODE_BINARY, b"\x89PNG\r\n\x1a\nlabels"))

    def recv_data(self) -> tuple[int, bytes]:
        return self.inbox.get(timeout=5)

    def close(self, timeout: float = 1) -> None:
        self.closed = True

    def shutdown(self) -> None:
        self.closed = True


def run_stream(monkeypatch: pytest.MonkeyPatch, server: ScriptedServer, frames: int = 20) -> tuple[list[dict], object]:
    events: list[dict] = []
    monkeypatch.setattr(ws_stream.websocket, "create_connection", lambda url, **kwargs: server)
    settings = VideoSettings(model="mast", fps=400.0, seconds=frames / 400.0, timeout_s=5.0)
    tally = VideoStream("http://127.0.0.1:1", settings, [b"jpeg-0", b"jpeg-1"], lambda **event: events.append(event))
    return events, tally.run()


def by_name(events: list[dict]) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = {}
    for event in events:
        assert event["request_type"] == "WS" and scenario_of(event["name"]) == "video"
        grouped.setdefault(event["name"], []).append(event)
    return grouped


def test_stream_reports_frames_drops_and_the_end(monkeypatch: pytest.MonkeyPatch) -> None:
    server = ScriptedServer(drop={3, 7}, errors={5})
    events, tally = run_stream(monkeypatch, server)
    assert server.handshake == {"model": "mast", "output": "png"} and server.received == 20 and server.closed
    named = by_name(events)
    assert set(named) == {"video: connect", "video: mast frame", "video: dropped", "video: end"}
    frames = named["video: mast frame"]
    assert len(frames) == 18 and sum(e["exception"] is not None for e in frames) == 1
    assert all(e["response_time"] >= 0 and (e["exception"] or e["response_length"] > 0) for e in frames)
    assert len(named["video: dropped"]) == 2
    assert all(e["response_time"] == 0 and e["exception"] is None for e in named["video: dropped"])
    (end,) = named["video: end"]
    assert end["exception"] is None and named["video: connect"][0]["exception"] is None
    assert (tally.answered, tally.errors, tally.dropped_seen) == (17, 1, 2)


def test_drops_after_the_last_answer_count_from_the_end_summary(monkeypatch: pytest.MonkeyPatch) -> None:
    events, _ = run_stream(monkeypatch, ScriptedServer(drop={18, 19}))
    named = by_name(events)
    assert len(named["video: dropped"]) == 2 and named["video: end"][0]["exception"] is None


def test_a_lost_frame_or_a_refused_stream_is_a_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    events, _ = run_stream(monkeypatch, ScriptedServer(lose={4}))
    assert "lost" in str(by_name(events)["video: end"][0]["exception"])

    events, tally = run_stream(monkeypatch, ScriptedServer(refuse=1013))
    assert tally is None
    (connect,) = by_name(events)["video: connect"]
    assert "refused (1013): too many streams" in str(connect["exception"])
    assert len(events) == 1


def test_end_problems() -> None:
    tally = StreamTally(answered=2, errors=0, end={"frames": 3, "answered": 2, "errors": 0, "dropped": 1})
    assert end_problem(tally, sent=3) is None
    assert "4 were sent" in end_problem(tally, sent=4)
    assert "closed (1011)" in end_problem(StreamTally(closed=(1011, "internal")), sent=3)
    assert end_problem(StreamTally(failure="no message for 30 s"), sent=3) == "no message for 30 s"


def test_tags_leave_out_classes_without_tasks() -> None:
    with_tasks, without = SimpleNamespace(tasks=[print]), SimpleNamespace(tasks=[])
    environment = SimpleNamespace(user_classes=[with_tasks, without])
    drop_classes_without_tasks(environment)
    assert environment.user_classes == [with_tasks]
    nothing = SimpleNamespace(user_classes=[without])
    drop_classes_without_tasks(nothing)  # locust's own error then, not an empty run
    assert nothing.user_classes == [without]


# --------------------------------------------------------------------------- the locustfile, in locust

LOCUST_CHILD = r"""
import json, sys, types
from locust.util.load_locustfile import load_locustfile

users, shapes = load_locustfile("load/locustfile.py")
module = sys.modules["locustfile"]
out = {
    "users": sorted(users),
    "shapes": [type(s).__name__ for s in shapes],
    "scenarios": {k: v.__name__ for k, v in module.SCENARIOS.items()},
    "weights": {k: v.weight for k, v in module.SCENARIOS.items()},
    "tags": {k: sorted(sorted(t.locust_tag_set) for t in v.tasks) for k, v in module.SCENARIOS.items()},
}
ticks = {}
times = {"step_shape": (0, 9.9, 10, 20, 25, 35, 39.9, 40), "spike_shape": (0, 4.9, 5, 8.9, 9, 18.9, 19)}
for stem, moments in times.items():
    _, (shape,) = load_locustfile(f"load/scenarios/{stem}.py")
    options = types.SimpleNamespace(num_users=1, spawn_rate=1, run_time=None)
    shape.runner = types.SimpleNamespace(environment=types.SimpleNamespace(parsed_options=options))
    shape.environ = {"LOAD_USERS": "8", "LOAD_STEP_USERS": "3", "LOAD_STEP_S": "10",
                     "LOAD_SPIKE_USERS": "20", "LOAD_SPIKE_AT_S": "5", "LOAD_SPIKE_S": "4"}
    series = []
    for t in moments:
        shape.get_run_time = lambda t=t: t
        series.append(shape.tick())
    options.run_time = 12
    shape.get_run_time = lambda: 12
    series.append(shape.tick())
    ticks[type(shape).__name__] = series
out["ticks"] = ticks
print(json.dumps(out))
"""


def test_locustfile_user_classes_scenarios_and_shapes() -> None:
    result = subprocess.run([sys.executable, "-c", LOCUST_CHILD], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    classes = ["SegmentUser", "VolumeUser", "PacsUser", "VideoUser"]
    assert out["users"] == sorted(classes) and out["shapes"] == []  # no shape unless one is added with -f
    assert list(out["scenarios"]) == list(SCENARIO_NAMES) and list(out["scenarios"].values()) == classes
    weights = out["weights"]
    assert weights["segment"] > sum(w for k, w in weights.items() if k != "segment")  # mostly segment users
    for scenario, task_tags in out["tags"].items():
        assert task_tags and all(scenario in tags for tags in task_tags), (scenario, task_tags)
    assert ["mast", "segment"] in out["tags"]["segment"]
    # step: 3 users every 10 s up to 8, the top held one period; then -t (12 s) ends it
    step = out["ticks"]["StepShape"]
    assert [s and s[0] for s in step] == [3, 3, 6, 8, 8, 8, 8, None, None]
    assert step[0][1] == 3.0  # each step spawned within a second
    # spike: 8 users, 20 from 5 s for 4 s, 8 again for 10 s; then -t ends it
    spike = out["ticks"]["SpikeShape"]
    assert [s and s[0] for s in spike] == [8, 8, 20, 20, 8, 8, None, None]
    assert spike[2][1] >= 12  # the spike arrives within about a second


def test_a_stream_closed_by_the_server_midway_names_its_close(monkeypatch: pytest.MonkeyPatch) -> None:
    class ClosingServer(ScriptedServer):
        def send_binary(self, data: bytes) -> None:
            if self.received == 5:
                self.inbox.put(self.close_frame(1011, "internal error"))
                raise ws_stream.websocket.WebSocketConnectionClosedException("socket is already closed.")
            super().send_binary(data)

    events, tally = run_stream(monkeypatch, ClosingServer())
    named = by_name(events)
    assert len(named["video: mast frame"]) == 5
    (end,) = named["video: end"]
    assert "closed (1011) before the end: internal error" in str(end["exception"])
