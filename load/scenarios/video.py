"""video: a surgical / endoscopy video source streaming frames over WS /v1/stream at a set fps.

A custom locust client (websocket-client, cooperative under locust's gevent monkey-patching):
each task opens a stream (handshake ``{"model": LOAD_VIDEO_MODEL, "output": "png"}``, plus
``classes`` from LOAD_VIDEO_CLASSES for surgical_sam), sends a phantom clip's JPEG frames paced
at LOAD_VIDEO_FPS (30) for LOAD_VIDEO_SECONDS (10) while a second greenlet reads the answers (so
slow answers never hold the pacing back), then ends the stream with ``{"end": true}``.

Events (request_type "WS"):
- "video: <model> frame": one per answered frame, response_time = ms from sending the frame to
  receiving its whole answer (header and PNG label map); a failure for a frame answered with an
  error header.
- "video: dropped": one per frame the server reports dropped (latest frame wins), response_time
  0, never a failure: an SLO caps their count or rate on its own.
- "video: connect": connect + handshake until the server's ready message; a failure when the
  stream is refused (1013 past MEDSEG_MAX_STREAMS, 1008 a bad handshake) or cannot connect.
- "video: end": from ``{"end": true}`` to the server's end summary; a failure when the stream
  closed early, no summary came within LOAD_VIDEO_TIMEOUT_S (30 s), or its counts do not add up
  (frames != sent, or frames != answered + errors + dropped: a frame lost).
"""

from __future__ import annotations

from locust import User, constant, tag, task

from load.scenarios.payloads import video_payloads
from load.scenarios.ws_stream import VideoSettings, VideoStream


class VideoUser(User):
    """A video source: one stream at a time, LOAD_VIDEO_SECONDS each."""

    weight = 2
    wait_time = constant(0.5)
    settings = VideoSettings.from_env()
    frames = video_payloads(settings.model)

    @tag("video")
    @task
    def stream(self) -> None:
        VideoStream(self.host, self.settings, self.frames, self.environment.events.request.fire).run()
