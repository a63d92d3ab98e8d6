"""load.compare_answers: the fixed request set covers every model and output kind and each
error class, and a difference in any part of an answer is reported."""

from __future__ import annotations

import httpx

from load.compare_answers import OUTPUTS_2D, OUTPUTS_VOLUME, Answer, difference, probes


def test_the_request_set_covers_every_model_output_and_error_class() -> None:
    names = [probe.name for probe in probes()]
    assert len(names) == len(set(names))
    for model in ("swtr_unet", "mast", "surgical_sam"):
        assert {f"{model} {out}" for out in OUTPUTS_2D} <= set(names)
    assert {f"hnf_net {out}" for out in OUTPUTS_VOLUME} <= set(names)
    assert {name.split()[0] for name in names if name[0].isdigit()} == {"400", "404", "415", "422"}


def answer(status: int = 200, body: bytes = b'{"a": 1, "b": [1, 2]}', headers: dict[str, str] | None = None) -> Answer:
    content_type = "application/json" if body.startswith(b"{") else "image/png"
    return Answer.of(httpx.Response(status, content=body, headers={"content-type": content_type, **(headers or {})}))


def test_json_is_compared_parsed_and_everything_else_is_reported() -> None:
    assert difference(answer(), answer(body=b'{"b": [1, 2],   "a": 1}')) == ""
    assert "body differs" in difference(answer(), answer(body=b'{"a": 1, "b": [1, 3]}'))
    assert "body differs" in difference(answer(body=b"\x89PNG1"), answer(body=b"\x89PNG2"))
    assert "status 200 → 400" in difference(answer(), answer(400))
    assert "medseg_headers" in difference(answer(headers={"X-Medseg-Frames": "1"}), answer(headers={"X-Medseg-Frames": "2"}))
    assert difference(answer(headers={"Date": "Mon"}), answer(headers={"Date": "Tue"})) == ""
