"""WS /v1/stream protocol pieces without a server: the handshake (parse_handshake, StreamSettings,
ready_message), close reasons, and the open-stream registry (MEDSEG_MAX_STREAMS)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.contract import discover_cards
from services.errors import BadInput
from services.streams.protocol import (
    NORMAL,
    POLICY_VIOLATION,
    TRY_AGAIN_LATER,
    HandshakeError,
    StreamSettings,
    close_reason,
    parse_handshake,
)
from services.streams.registry import StreamRegistry, StreamsFull

ROOT = Path(__file__).resolve().parents[2]
CARDS = discover_cards(ROOT / "model_repository")


def handshake(**fields: object) -> str:
    return json.dumps(fields)


def parse(**fields: object) -> StreamSettings:
    return parse_handshake(handshake(**fields), CARDS)


def test_the_repository_has_the_models_these_tests_name() -> None:
    assert {"mast", "surgical_sam", "swtr_unet", "hnf_net"} <= set(CARDS)
    assert CARDS["mast"].task == "frame_pair" and CARDS["surgical_sam"].task == "class_prompted"
    assert CARDS["swtr_unet"].task == "image2d" and CARDS["hnf_net"].task == "volume3d"


def test_close_codes() -> None:
    assert (NORMAL, POLICY_VIOLATION, TRY_AGAIN_LATER) == (1000, 1008, 1013)


# ---------------------------------------------------------------- accepted handshakes


def test_mast_defaults_reference_previous_and_the_cards_threshold() -> None:
    settings = parse(model="mast")
    assert settings.card is CARDS["mast"] and settings.output == "png"
    assert settings.options.reference == "previous"
    assert settings.options.threshold == CARDS["mast"].threshold
    assert settings.options.classes is None


def test_surgical_sam_defaults_all_classes_and_the_cards_threshold() -> None:
    settings = parse(model="surgical_sam")
    assert settings.card is CARDS["surgical_sam"]
    assert settings.options.classes is None
    assert settings.options.reference is None
    assert settings.options.threshold == CARDS["surgical_sam"].threshold


def test_swtr_unet_takes_no_options() -> None:
    settings = parse(model="swtr_unet", output="rle")
    assert settings.card is CARDS["swtr_unet"] and settings.output == "rle"
    assert (settings.options.threshold, settings.options.classes, settings.options.reference) == (None, None, None)


@pytest.mark.parametrize(("reference", "expected"), [("first", "first"), ("previous", "previous"), (5, 5), (1, 1), (10_000, 10_000)])
def test_mast_explicit_reference(reference: object, expected: object) -> None:
    assert parse(model="mast", reference=reference).options.reference == expected


def test_mast_explicit_threshold() -> None:
    settings = parse(model="mast", threshold=0.3, reference="first", output="rle")
    assert settings.options.threshold == 0.3 and settings.options.reference == "first" and settings.output == "rle"


@pytest.mark.parametrize(
    ("classes", "expected"),
    [
        ("1,4", (1, 4)),
        ([1, "bipolar forceps"], (1,)),
        ([4, "clip applier"], (4, 7)),
        (3, (3,)),
        ("Monopolar Curved Scissors", (4,)),
    ],
)
def test_surgical_sam_explicit_classes(classes: object, expected: tuple[int, ...]) -> None:
    assert parse(model="surgical_sam", classes=classes).options.classes == expected


def test_surgical_sam_explicit_threshold() -> None:
    assert parse(model="surgical_sam", threshold=0.3, classes="2").options.threshold == 0.3


def test_a_null_threshold_is_the_default() -> None:
    assert parse(model="mast", threshold=None).options.threshold == CARDS["mast"].threshold


# ---------------------------------------------------------------- refused handshakes


def refused(text: str) -> str:
    with pytest.raises(HandshakeError) as error:
        parse_handshake(text, CARDS)
    assert isinstance(error.value, BadInput)  # a typed 400-like error with a message
    assert error.value.message
    return error.value.message


@pytest.mark.parametrize("text", ["", "not json", "{'model': 'mast'}", "{", b"\xff".decode("latin-1")])
def test_non_json_is_refused(text: str) -> None:
    assert "JSON" in refused(text)


@pytest.mark.parametrize("text", ['["mast"]', '"mast"', "42", "null", "true"])
def test_a_json_value_that_is_not_an_object_is_refused(text: str) -> None:
    assert "object" in refused(text)


def test_unknown_fields_are_refused_and_named() -> None:
    message = refused(handshake(model="mast", fps=30))
    assert "unknown" in message and "fps" in message


def test_many_long_unknown_fields_give_a_bounded_message() -> None:
    message = refused(json.dumps({"model": "mast", **{f"{'x' * 200}{i}": i for i in range(50)}}))
    assert len(message) < 200


@pytest.mark.parametrize("model", ["nope", "", None, 3, ["mast"], "MAST"])
def test_unknown_model_is_refused(model: object) -> None:
    message = refused(handshake(model=model))
    assert "mast" in message  # names the served models


def test_a_missing_model_is_refused() -> None:
    refused(handshake(output="png"))


def test_a_volume_model_is_refused() -> None:
    message = refused(handshake(model="hnf_net"))
    assert "hnf_net" in message and "frame" in message
    assert "mast" in message and "swtr_unet" in message  # lists the streamable models


@pytest.mark.parametrize("output", ["jpeg", "PNG", "", None, 1, ["png"]])
def test_unknown_output_is_refused(output: object) -> None:
    assert "output" in refused(handshake(model="mast", output=output))


def test_classes_for_mast_are_refused() -> None:
    message = refused(handshake(model="mast", classes="1"))
    assert "classes" in message and "mast" in message


def test_reference_for_surgical_sam_is_refused() -> None:
    message = refused(handshake(model="surgical_sam", reference="first"))
    assert "reference" in message and "surgical_sam" in message


@pytest.mark.parametrize("field", [{"threshold": 0.5}, {"classes": "1"}, {"reference": "first"}])
def test_options_for_swtr_unet_are_refused(field: dict[str, object]) -> None:
    refused(json.dumps({"model": "swtr_unet", **field}))


@pytest.mark.parametrize("threshold", [0, 1, 0.0, 1.0, -0.5, 2, "x", "0.5", True, False, [0.5], {"t": 0.5}])
def test_bad_threshold_is_refused(threshold: object) -> None:
    assert "threshold" in refused(handshake(model="mast", threshold=threshold))


@pytest.mark.parametrize("text", ['{"model": "mast", "threshold": NaN}', '{"model": "mast", "threshold": Infinity}'])
def test_non_finite_threshold_is_refused(text: str) -> None:
    assert "threshold" in refused(text)


@pytest.mark.parametrize("reference", [0, -1, 10_001, "last", "First", "", True, False, 2.0, None, [1]])
def test_bad_reference_is_refused(reference: object) -> None:
    assert "reference" in refused(handshake(model="mast", reference=reference))


@pytest.mark.parametrize("classes", ["0", "8", "scalpel", "1,scalpel", [1, "scalpel"], 99, ",", 1.5, {"1": 1}, True])
def test_unknown_class_is_refused(classes: object) -> None:
    assert "class" in refused(handshake(model="surgical_sam", classes=classes))


# ---------------------------------------------------------------- ready message


def test_ready_message_for_mast() -> None:
    settings = parse(model="mast", reference=5, threshold=0.3)
    message = settings.ready_message("s1")
    assert message == {
        "ready": True,
        "stream": "s1",
        "model": "mast",
        "version": CARDS["mast"].version,
        "task": "frame_pair",
        "output": "png",
        "labels": [{"id": label.id, "name": label.name} for label in CARDS["mast"].labels],
        "threshold": 0.3,
        "reference": 5,
    }
    json.dumps(message)  # sent as text


def test_ready_message_for_surgical_sam_lists_the_prompted_classes() -> None:
    default = parse(model="surgical_sam").ready_message("s2")
    assert default["classes"] == [1, 2, 3, 4, 5, 6, 7] and default["threshold"] == CARDS["surgical_sam"].threshold
    assert "reference" not in default
    chosen = parse(model="surgical_sam", classes="4,1", output="rle").ready_message("s3")
    assert chosen["classes"] == [1, 4] and chosen["output"] == "rle" and chosen["task"] == "class_prompted"
    json.dumps(chosen)


def test_ready_message_for_swtr_unet_has_no_options() -> None:
    message = parse(model="swtr_unet").ready_message("s4")
    assert not {"threshold", "reference", "classes"} & set(message)
    assert message["model"] == "swtr_unet" and message["labels"][0] == {"id": 0, "name": "background"}


# ---------------------------------------------------------------- close reasons


def test_close_reason_keeps_a_short_reason() -> None:
    assert close_reason("no handshake") == "no handshake"


def test_close_reason_truncates_ascii_to_123_bytes() -> None:
    reason = close_reason("x" * 500)
    assert reason == "x" * 123


@pytest.mark.parametrize("prefix", range(4))
def test_close_reason_never_splits_a_multibyte_character(prefix: int) -> None:
    text = "a" * prefix + "é€😀" * 60  # 2-, 3- and 4-byte characters at every alignment
    reason = close_reason(text)
    encoded = reason.encode("utf-8")
    assert len(encoded) <= 123
    assert len(encoded) >= 120  # at most one character (≤ 3 bytes kept out) is lost at the cut
    assert text.startswith(reason)


def test_close_reason_of_a_handshake_message_echoing_a_lone_surrogate() -> None:
    """JSON may carry a lone surrogate (\\ud800) in a key; the unknown-field message echoes it,
    and the close reason must still be encodable UTF-8 (not raise UnicodeEncodeError)."""
    message = refused('{"model": "mast", "\\ud800": 1}')
    reason = close_reason(message)
    assert len(reason.encode("utf-8")) <= 123
    assert reason.startswith("unknown handshake field")


# ---------------------------------------------------------------- registry


def test_registry_admits_up_to_max_streams_then_refuses() -> None:
    seen: list[int] = []
    registry = StreamRegistry(2, seen.append)
    with registry.stream() as first, registry.stream() as second:
        assert first != second and registry.open == {first, second}
        with pytest.raises(StreamsFull, match="2 streams"):
            with registry.stream():
                pass
        assert registry.open == {first, second}
    assert registry.open == set()
    assert seen == [1, 2, 1, 0]
    with registry.stream():  # free again
        assert len(registry.open) == 1


def test_registry_frees_the_slot_when_the_block_raises() -> None:
    seen: list[int] = []
    registry = StreamRegistry(1, seen.append)
    with pytest.raises(RuntimeError):
        with registry.stream():
            raise RuntimeError("the stream failed")
    assert registry.open == set() and seen == [1, 0]
    with registry.stream() as stream_id:
        assert registry.open == {stream_id}
    assert seen == [1, 0, 1, 0]


def test_registry_without_observer_and_with_zero_slots() -> None:
    registry = StreamRegistry(0)
    with pytest.raises(StreamsFull):
        with registry.stream():
            pass
    assert registry.open == set()
