"""The surgical-frame phantom: determinism, types, label coverage, occlusion and class looks."""

from __future__ import annotations

import numpy as np
import pytest

from export.phantoms.surgical import STYLES, SurgicalFrame, instrument_mask, make_surgical_frame


def test_same_seed_same_frame_and_types() -> None:
    a = make_surgical_frame(np.random.default_rng(5), (256, 320))
    b = make_surgical_frame(np.random.default_rng(5), (256, 320))
    c = make_surgical_frame(np.random.default_rng(6), (256, 320))
    assert isinstance(a, SurgicalFrame)
    assert a.rgb.dtype == np.uint8 and a.rgb.shape == (256, 320, 3)
    assert a.labels.dtype == np.uint8 and a.labels.shape == (256, 320)
    np.testing.assert_array_equal(a.rgb, b.rgb)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert not np.array_equal(a.rgb, c.rgb)


@pytest.fixture(scope="module")
def frames() -> list[SurgicalFrame]:
    return [make_surgical_frame(np.random.default_rng([9, i]), (256, 320)) for i in range(60)]


def test_one_to_three_distinct_classes_every_class_drawn(frames: list[SurgicalFrame]) -> None:
    seen = set()
    for frame in frames:
        ids = [inst.class_id for inst in frame.instruments]
        assert 1 <= len(ids) <= 3 and len(set(ids)) == len(ids)
        assert set(np.unique(frame.labels)) - {0} <= set(ids)
        seen.update(ids)
    assert seen == set(STYLES) == set(range(1, 8))


def test_instruments_are_visible_but_leave_tissue(frames: list[SurgicalFrame]) -> None:
    coverage = np.array([(f.labels > 0).mean() for f in frames])
    assert coverage.min() > 0.005 and coverage.max() < 0.6 and 0.03 < coverage.mean() < 0.3


def test_later_instruments_occlude_earlier_ones(frames: list[SurgicalFrame]) -> None:
    occluded = 0
    for frame in frames:
        for k, inst in enumerate(frame.instruments):
            full = instrument_mask(frame.labels.shape, inst)
            later = {i.class_id for i in frame.instruments[k + 1 :]}
            shown = frame.labels == inst.class_id
            assert (shown <= full).all(), "a label outside its own instrument"
            hidden = full & ~shown
            assert set(np.unique(frame.labels[hidden])) <= later, "hidden only by instruments drawn later"
            occluded += int(hidden.any())
    assert occluded >= 3  # overlaps happen


def test_classes_differ_in_shade(frames: list[SurgicalFrame]) -> None:
    means = {}
    for c in range(1, 8):
        pixels = np.concatenate([f.rgb[f.labels == c] for f in frames if (f.labels == c).any()])
        means[c] = pixels.mean(axis=0)
    tissue = np.concatenate([f.rgb[f.labels == 0] for f in frames[:10]]).mean(axis=0)
    assert tissue[0] > tissue[1] + 40  # reddish tissue
    distances = [np.abs(means[a] - means[b]).max() for a in means for b in means if a < b]
    assert min(distances) > 8  # no two classes share a shade
