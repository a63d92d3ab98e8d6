"""Post-processing: RLE, statistics, activations and the geometry of letterbox round trips."""

from __future__ import annotations

import numpy as np
import pytest

from services.contract import IntensityRule
from load.bench_pipeline import pillow_label_map
from services.postprocess import activate, label_map_from_logits, label_statistics, rle_decode, rle_encode
from services.preprocess import apply_intensity, letterbox, plan_letterbox, unletterbox


@pytest.mark.parametrize("seed", range(5))
def test_rle_round_trip(seed: int) -> None:
    rng = np.random.default_rng(seed)
    mask = rng.random((37, 53)) > rng.random()
    counts = rle_encode(mask)
    assert sum(counts) == mask.size
    np.testing.assert_array_equal(rle_decode(counts, mask.shape), mask)


def test_rle_conventions() -> None:
    assert rle_encode(np.array([[0, 1, 1, 0]])) == [1, 2, 1]
    assert rle_encode(np.array([[1, 1, 0]])) == [0, 2, 1]
    assert rle_encode(np.zeros((2, 2))) == [4]


def test_statistics_area_and_volume() -> None:
    labels = np.zeros((3, 10, 10), dtype=np.uint8)
    labels[:, :4, :5] = 1  # 20 pixels per frame
    stats = label_statistics(labels, [1, 2], (0.5, 2.0), 3.0)
    assert stats[1]["pixel_count"] == 60
    assert stats[1]["area_mm2"] == pytest.approx(60.0)
    assert stats[1]["volume_ml"] == pytest.approx(60.0 * 3.0 / 1000.0)
    assert stats[2] == {"pixel_count": 0, "area_mm2": 0.0, "volume_ml": 0.0}
    single = label_statistics(labels[:1], [1], None, None)[1]
    assert single == {"pixel_count": 20, "area_mm2": None, "volume_ml": None}


def test_softmax_and_sigmoid() -> None:
    logits = np.random.default_rng(0).normal(size=(3, 4, 4)).astype(np.float32)
    probs = activate(logits, "softmax")
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, rtol=1e-6)
    np.testing.assert_allclose(activate(np.zeros((1, 2, 2)), "sigmoid"), 0.5)


def test_ct_window_scales_to_unit_range() -> None:
    hu = np.array([[-1000.0, -140.0, 60.0, 260.0, 3000.0]])
    out = apply_intensity(hu, IntensityRule("window", center=60.0, width=400.0))
    np.testing.assert_allclose(out, [[0.0, 0.0, 0.5, 1.0, 1.0]])


def numpy_intensity(pixels: np.ndarray, rule: IntensityRule) -> np.ndarray:
    """The rule as numpy wrote it before: ``clip((x - low) / width, 0, 1)`` in float32."""
    x = pixels.astype(np.float32)
    if rule.kind == "window":
        return np.clip((x - np.float32(rule.center - rule.width / 2.0)) / np.float32(rule.width), 0.0, 1.0)
    return np.clip(x / np.float32(rule.high), 0.0, 1.0)


@pytest.mark.parametrize("dtype", [np.int16, np.uint16, np.uint8, np.float32, np.float64])
@pytest.mark.parametrize("rule", [IntensityRule("window", center=60.0, width=400.0),
                                  IntensityRule("range", high=255.0)])
def test_intensity_rules_give_the_float32_values_the_models_were_trained_on(dtype, rule) -> None:
    """The in-place OpenCV clip gives exactly numpy's values, for any memory layout a decoder
    hands over (Fortran order, transposed, strided), and never writes into the caller's slice."""
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else None
    low, high = (max(info.min, -3000), min(info.max, 4000)) if info else (-3000, 4000)
    pixels = np.random.default_rng(7).integers(low, high, (64, 48)).astype(dtype)
    kept = pixels.copy()
    for layout in (pixels, np.asfortranarray(pixels), pixels.T, pixels[::2, ::3]):
        out = apply_intensity(layout, rule)
        assert out.dtype == np.float32
        np.testing.assert_array_equal(out, numpy_intensity(layout, rule))
    np.testing.assert_array_equal(pixels, kept)


def test_a_letterbox_without_padding_is_a_new_array() -> None:
    """The trainer and the pipelines may write into what ``letterbox`` returns."""
    plane = np.random.default_rng(3).random((256, 256), dtype=np.float32)
    box = plan_letterbox(plane.shape, (256, 256), None, "letterbox")
    assert box.scaled == box.size
    out = letterbox(plane, box, 0.0)
    np.testing.assert_array_equal(out, plane)
    assert not np.shares_memory(out, plane)


@pytest.mark.parametrize(
    ("shape", "spacing"),
    [((512, 512), (0.7, 0.9)), ((400, 512), None), ((512, 300), (1.0, 1.0)), ((97, 131), (2.0, 0.5))],
)
def test_letterbox_round_trip_returns_the_source_grid(shape, spacing) -> None:
    """A square drawn in the source comes back in the same place after letterbox + undo."""
    box = plan_letterbox(shape, (256, 256), spacing, "letterbox")
    assert max(box.scaled) == 256 and all(s <= 256 for s in box.scaled)
    if spacing:  # physical aspect ratio is kept
        physical = (shape[0] * spacing[0]) / (shape[1] * spacing[1])
        assert box.scaled[0] / box.scaled[1] == pytest.approx(physical, rel=0.02)
    mask = np.zeros(shape, dtype=np.float32)
    r0, c0 = shape[0] // 4, shape[1] // 3
    mask[r0 : r0 + shape[0] // 2, c0 : c0 + shape[1] // 3] = 1.0
    logits = np.stack([1.0 - letterbox(mask, box, 0.0), letterbox(mask, box, 0.0)])
    back = label_map_from_logits(logits, box)
    assert back.shape == shape
    agreement = (back == mask.astype(np.uint8)).mean()
    assert agreement > 0.98
    np.testing.assert_array_equal(unletterbox(logits, box).shape, (2, *shape))


@pytest.mark.parametrize("source", [(256, 320), (480, 640), (1080, 1920), (200, 150), (37, 91), (256, 256)])
def test_upsample_unletterbox_equals_the_two_resizes_it_composes(source: tuple[int, int]) -> None:
    """SurgicalSAM's low-res logits to the source grid in one composed step: the same maps as
    upsampling to the canvas, cropping and resizing back, up to float32 round-off, and the same
    masks at any threshold away from that round-off."""
    from services.preprocess import plan_letterbox, resize_maps, unletterbox, upsample_unletterbox

    logits = np.random.default_rng(sum(source)).normal(0, 4, (7, 64, 64)).astype(np.float32)
    box = plan_letterbox(source, (256, 256), None, "longest")
    composed = upsample_unletterbox(logits, box)
    reference = unletterbox(resize_maps(logits, box.size), box)
    assert composed.shape == (7, *source) and composed.dtype == np.float32
    np.testing.assert_allclose(composed, reference, atol=1e-4)
    assert ((composed >= 0) == (reference >= 0)).mean() > 0.9999


@pytest.mark.parametrize(("source", "spacing"), [
    ((512, 512), None), ((400, 512), (0.75, 0.75)), ((512, 512), (0.7, 0.9)), ((300, 700), None),
    ((250, 257), None), ((128, 128), None), ((100, 900), None), ((1024, 96), (0.5, 2.0)),
])
def test_label_maps_equal_pillows_bilinear_resize_and_argmax(source, spacing) -> None:
    """The OpenCV resize (enlarging) and the comparison argmax change no label: the same maps as
    Pillow's resize and numpy's argmax, for enlarging, shrinking and mixed letterboxes."""
    rng = np.random.default_rng(sum(source))
    box = plan_letterbox(source, (256, 256), spacing, "letterbox")
    for classes in (2, 3, 5):
        logits = (rng.standard_normal((classes, 256, 256)) * 3).astype(np.float32)
        expected = pillow_label_map(logits, box)
        got = label_map_from_logits(logits, box)
        assert got.shape == source and got.dtype == np.uint8
        assert (got == expected).mean() >= 0.9999, (source, classes)


def test_argmax_planes_takes_the_first_of_equal_scores() -> None:
    from services.postprocess import argmax_planes

    maps = np.array([[[1.0, 2.0, 3.0]], [[1.0, 3.0, 3.0]], [[0.0, 3.0, 3.0]]], dtype=np.float32)
    assert argmax_planes(maps).tolist() == np.argmax(maps, axis=0).tolist() == [[0, 1, 0]]
