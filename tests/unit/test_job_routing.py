"""Unit tests of series routing: services/jobs/routing.py and services/jobs/default_routes.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from services.jobs.routing import DEFAULT_ROUTES, load_routes, parse_routes, place
from services.jobs.store import Placement

ROOT = Path(__file__).resolve().parents[2]
BRATS = ("t1", "t1ce", "t2", "flair")
MODELS = {"swtr_unet": (), "hnf_net": BRATS, "mast": (), "surgical_sam": ()}
SLICES = Placement("ct-mr-slices", "swtr_unet")


def header(modality: str, description: str | None = None, protocol: str | None = None, body_part: str | None = None) -> Dataset:
    ds = Dataset()
    ds.Modality = modality
    if description is not None:
        ds.SeriesDescription = description
    if protocol is not None:
        ds.ProtocolName = protocol
    if body_part is not None:
        ds.BodyPartExamined = body_part
    return ds


def brats(name: str) -> Placement:
    return Placement("brats-mr", "hnf_net", name)


@pytest.fixture(scope="module")
def routes():
    return load_routes(None, MODELS)


def test_the_default_file_matches_the_shipped_model_cards() -> None:
    """The service builds ``models`` from the cards: channel names of sliding-window models."""
    served = {}
    for card in sorted((ROOT / "model_repository").glob("*/medseg.json")):
        data = json.loads(card.read_text())
        served[data["name"]] = tuple(data.get("channel_names", ())) if data.get("sliding_window") else ()
    assert served["hnf_net"] == BRATS
    routes = load_routes(None, served)
    assert [(r.name, r.model) for r in routes] == [("brats-mr", "hnf_net"), ("ct-mr-slices", "swtr_unet")]
    assert place(routes, header("MR", "T2 FLAIR")) == brats("flair")


@pytest.mark.parametrize("body_part", [None, "ABDOMEN", "HEAD"])
def test_ct_goes_to_swtr_unet(routes, body_part: str | None) -> None:
    assert place(routes, header("CT", "Abdomen 5mm", "CT ABD", body_part)) == SLICES
    assert place(routes, header("CT")) == SLICES


@pytest.mark.parametrize(
    ("description", "expected"),
    [
        ("T1", "t1"),
        ("t1_mprage_sag", "t1"),
        ("T1 post contrast", "t1ce"),
        ("T1CE", "t1ce"),
        ("T1 Gd", "t1ce"),
        ("T1+C", "t1ce"),
        ("Ax T1 post gad", "t1ce"),
        ("T2", "t2"),
        ("Ax T2 FSE", "t2"),
        ("FLAIR", "flair"),
        ("T2 FLAIR", "flair"),  # flair is tried before t2
        ("t2_flair_tra", "flair"),
    ],
)
def test_brain_mr_series_descriptions_pick_hnf_net_channels(routes, description: str, expected: str) -> None:
    assert place(routes, header("MR", description)) == brats(expected)


def test_channel_order_is_the_files_t1ce_flair_t2_t1(routes) -> None:
    (route, _) = routes
    assert [name for name, _ in route.channels] == ["t1ce", "flair", "t2", "t1"]


@pytest.mark.parametrize("description", ["DWI", "ADC", "localizer", "", None])
def test_other_mr_series_fall_through_to_swtr_unet(routes, description: str | None) -> None:
    assert place(routes, header("MR", description)) == SLICES


@pytest.mark.parametrize("modality", ["US", "SEG", "SR", "MRI", "XCT", "PT"])
def test_no_route_for_other_modalities(routes, modality: str) -> None:
    assert place(routes, header(modality, "T1 post contrast")) is None


@pytest.mark.parametrize(
    ("protocol", "expected"),
    [("T1", "t1"), ("t1_post_gd", "t1ce"), ("T2", "t2"), ("FLAIR", "flair"), ("dwi", None)],
)
@pytest.mark.parametrize("description", ["", None])
def test_protocol_name_is_used_when_series_description_is_empty(routes, description, protocol, expected) -> None:
    assert place(routes, header("MR", description, protocol)) == (SLICES if expected is None else brats(expected))


def test_an_exam_level_protocol_name_does_not_override_the_series_description(routes) -> None:
    """Regression (fixed): every channel is tried against both attributes before the next channel, so a
    ProtocolName naming the whole exam ("BRAIN W/WO CONTRAST", the same on every series of the
    study, as many sites name protocols) puts the T1, T2 and FLAIR series all in t1ce."""
    protocol = "BRAIN TUMOR W/WO CONTRAST"
    placed = {d: place(routes, header("MR", d, protocol)) for d in ("T1", "T1 post contrast", "T2", "FLAIR")}
    assert placed == {"T1": brats("t1"), "T1 post contrast": brats("t1ce"), "T2": brats("t2"), "FLAIR": brats("flair")}


@pytest.mark.parametrize(
    ("description", "expected"),
    [("AX_T2_FSE", "t2"), ("SAG_T1", "t1"), ("T1 CORONAL", "t1"), ("T1_COR", "t1")],
)
def test_common_series_names_pick_the_right_channel(routes, description: str, expected: str) -> None:
    """Regression (fixed): ``\\bt2`` / ``\\bt1`` need a word boundary, and ``_`` is a word character, so
    "AX_T2_FSE" and "SAG_T1" match no channel (they fall through to swtr_unet and the BraTS job
    misses a channel); ``t1.?(ce|c|...)`` reads "T1 C(ORONAL)" as contrast-enhanced."""
    assert place(routes, header("MR", description)) == brats(expected)


# --- which routes a file gives --------------------------------------------------------------------------


def write(tmp_path: Path, document: dict) -> Path:
    path = tmp_path / "routes.json"
    path.write_text(json.dumps(document))
    return path


def test_the_default_file_drops_routes_to_models_not_served() -> None:
    routes = load_routes(None, {"swtr_unet": ()})
    assert [r.name for r in routes] == ["ct-mr-slices"]
    assert place(routes, header("MR", "T1 post contrast")) == SLICES
    assert load_routes(None, {"mast": ()}) == ()


def test_a_given_file_naming_a_model_not_served_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, {"routes": [{"name": "xr", "model": "chest_net", "match": {"Modality": "^DX$"}}]})
    with pytest.raises(ValueError, match=r"xr.*chest_net"):
        load_routes(path, MODELS)
    # the default file itself, given explicitly, is strict too
    with pytest.raises(ValueError, match="hnf_net"):
        load_routes(DEFAULT_ROUTES, {"swtr_unet": ()})


def test_a_given_file_routes_as_written(tmp_path: Path) -> None:
    path = write(tmp_path, {"routes": [
        {"name": "abdomen", "model": "swtr_unet", "match": {"Modality": ["^CT$", "^MR$"], "BodyPartExamined": "abd|liver"}},
    ]})
    routes = load_routes(path, MODELS)
    assert place(routes, header("CT", body_part="ABDOMEN")) == Placement("abdomen", "swtr_unet")
    assert place(routes, header("MR", body_part="LIVER")) == Placement("abdomen", "swtr_unet")
    assert place(routes, header("CT", body_part="HEAD")) is None  # every attribute must match
    assert place(routes, header("CT")) is None
    assert place(routes, header("US", body_part="ABDOMEN")) is None


def _channel_route(channels: dict, model: str = "hnf_net") -> dict:
    return {"routes": [{"name": "mr4", "model": model, "match": {"Modality": "MR"}, "channels": channels}]}


@pytest.mark.parametrize(
    "channels",
    [
        {"t1": "t1", "t1ce": "ce", "t2": "t2"},  # one missing
        {"t1": "t1", "t1ce": "ce", "t2": "t2", "flair": "flair", "dwi": "dwi"},  # one extra
        {"t1": "t1", "t1c": "ce", "t2": "t2", "flair": "flair"},  # one misnamed
    ],
)
@pytest.mark.parametrize("strict", [True, False])
def test_channels_other_than_the_models_are_an_error(channels: dict, strict: bool) -> None:
    with pytest.raises(ValueError, match="mr4"):
        parse_routes(_channel_route(channels), MODELS, strict=strict)


def test_channels_are_needed_for_a_multi_series_model_and_refused_for_a_single_series_one() -> None:
    with pytest.raises(ValueError, match="mr4"):
        parse_routes({"routes": [{"name": "mr4", "model": "hnf_net", "match": {"Modality": "MR"}}]}, MODELS)
    with pytest.raises(ValueError, match="mr4"):
        parse_routes(_channel_route({"a": "x"}, model="swtr_unet"), MODELS)
    good = parse_routes(_channel_route({"flair": "fl", "t2": "t2", "t1ce": "ce", "t1": "t1"}), MODELS)
    assert place(good, header("MR", "ce")) == Placement("mr4", "hnf_net", "t1ce")


@pytest.mark.parametrize(
    "document",
    [
        {"routes": [{"name": "broken-match", "model": "swtr_unet", "match": {"Modality": "^(CT"}}]},
        {"routes": [{"name": "broken-match", "model": "swtr_unet", "match": {"Modality": ["CT", "[MR"]}}]},
        _channel_route({"t1": "t1", "t1ce": "ce(", "t2": "t2", "flair": "flair"}) | {},
    ],
)
def test_a_bad_regular_expression_is_an_error_naming_the_route(document: dict) -> None:
    name = document["routes"][0]["name"]
    with pytest.raises(ValueError, match=name):
        parse_routes(document, MODELS)
    with pytest.raises(ValueError, match=name):
        parse_routes(document, MODELS, strict=False)


@pytest.mark.parametrize("pattern", [[], 5, [5], None])
def test_a_pattern_that_is_not_a_regular_expression_is_an_error(pattern) -> None:
    with pytest.raises(ValueError, match="bad-type"):
        parse_routes({"routes": [{"name": "bad-type", "model": "swtr_unet", "match": {"Modality": pattern}}]}, MODELS)


def test_route_names_must_be_unique() -> None:
    entry = {"name": "same", "model": "swtr_unet", "match": {"Modality": "CT"}}
    with pytest.raises(ValueError, match="unique"):
        parse_routes({"routes": [entry, entry]}, MODELS)


def test_routes_are_tried_in_order() -> None:
    routes = parse_routes({"routes": [
        {"name": "first", "model": "swtr_unet", "match": {"Modality": "CT"}},
        {"name": "second", "model": "mast", "match": {"Modality": "CT|MR"}},
    ]}, MODELS)
    assert place(routes, header("CT")) == Placement("first", "swtr_unet")
    assert place(routes, header("MR")) == Placement("second", "mast")


def test_channel_attributes_given_as_one_string_is_refused_or_understood() -> None:
    """Regression (fixed): ``tuple("ProtocolName")`` is a tuple of letters, so every channel silently
    misses (header.get("P") is empty) and the route places nothing."""
    document = _channel_route({"t1": "t1", "t1ce": "ce", "t2": "t2", "flair": "flair"})
    document["routes"][0]["channel_attributes"] = "ProtocolName"
    try:
        routes = parse_routes(document, MODELS)
    except ValueError:
        return
    assert place(routes, header("MR", None, "flair")) == Placement("mr4", "hnf_net", "flair")
