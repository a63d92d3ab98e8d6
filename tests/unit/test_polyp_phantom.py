"""The polyp colonoscopy phantom: determinism, shapes and dtypes, mask coverage and clip motion."""

from __future__ import annotations

import numpy as np
import pytest

from export.phantoms.polyp import FRAME_SHAPES, PolypClip, make_polyp_clip


def test_same_seed_same_clip_and_types() -> None:
    a = make_polyp_clip(np.random.default_rng(7), 5, (240, 320))
    b = make_polyp_clip(np.random.default_rng(7), 5, (240, 320))
    c = make_polyp_clip(np.random.default_rng(8), 5, (240, 320))
    assert isinstance(a, PolypClip)
    assert a.frames.dtype == np.uint8 and a.frames.shape == (5, 240, 320, 3)
    assert a.masks.dtype == np.bool_ and a.masks.shape == (5, 240, 320)
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.masks, b.masks)
    assert not np.array_equal(a.frames, c.frames)


def test_default_shapes_come_from_the_list() -> None:
    shapes = {make_polyp_clip(np.random.default_rng(seed), 1).frames.shape[1:3] for seed in range(12)}
    assert shapes <= set(FRAME_SHAPES) and len(shapes) >= 2


@pytest.fixture(scope="module")
def clips() -> list[PolypClip]:
    return [make_polyp_clip(np.random.default_rng([3, i]), 6) for i in range(16)]


def test_masks_non_empty_in_most_frames(clips: list[PolypClip]) -> None:
    coverage = np.concatenate([c.masks.mean(axis=(1, 2)) for c in clips])  # per frame, mixed sizes
    assert (coverage > 0).mean() >= 0.9
    assert coverage.max() < 0.5  # a polyp, not the whole frame
    assert (coverage[coverage > 0] < 0.01).any()  # some frames with a small polyp


def test_polyp_looks_different_from_the_mucosa(clips: list[PolypClip]) -> None:
    for clip in clips[:6]:
        frame, mask = clip.frames[0].astype(np.float32), clip.masks[0]
        if mask.sum() < 200:
            continue
        assert 5.0 < frame[mask].mean() < 250.0 and 5.0 < frame[~mask].mean() < 250.0
        assert np.abs(frame[mask].mean(axis=0) - frame[~mask].mean(axis=0)).max() > 3.0


def test_motion_between_k_and_k_plus_3_is_small_but_non_zero(clips: list[PolypClip]) -> None:
    for clip in clips:
        for k in range(clip.masks.shape[0] - 3):
            a, b = clip.masks[k], clip.masks[k + 3]
            if a.sum() < 50 or b.sum() < 50:
                continue
            iou = np.logical_and(a, b).sum() / np.logical_or(a, b).sum()
            assert 0.3 < iou < 1.0  # moved or deformed, but the same polyp nearby
            assert not np.array_equal(clip.frames[k], clip.frames[k + 3])
