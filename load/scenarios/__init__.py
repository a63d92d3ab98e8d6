"""Locust scenarios of medseg-serve, one module per user group (load/locustfile.py gathers them):

- segment.py: SegmentUser, POST /v1/segment (every 2-D model, DICOM and PNG, every output kind)
- volume.py:  VolumeUser, POST /v1/segment/volume (BraTS-like NIfTI through hnf_net)
- pacs.py:    PacsUser, STOW-RS of a CT series, then GET /v1/jobs until the SEG exists
              (pacs_checks.py: its settings, the STOW answer and job checks, without locust)
- video.py:   VideoUser, WS /v1/stream at a set fps (ws_stream.py: the websocket-client custom
              client and its settings, without locust)
- shapes.py:  StepShape, SpikeShape; step_shape.py / spike_shape.py hold one each, to add to -f
- payloads.py: what they send, built once per process from phantoms and pydicom's test files
- common.py:  request names ("<scenario>: ..."), LOAD_* settings, answer checks

Only the user-class modules (and shapes.py) import locust, which monkey-patches the process with
gevent: the rest is imported by the unit tests (tests/unit/test_locust_scenarios.py) as it is.
A scenario module builds its payloads when imported.
"""
