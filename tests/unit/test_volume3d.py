"""3-D sliding-window pipeline: normalisation, window planning, exact stitching, region painting."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from services.contract import Region, SlidingWindow
from services.pipelines.base import labels_from_regions
from services.pipelines.volume3d import (
    ZSCORE_CLIP,
    gaussian_importance,
    pad_to_at_least,
    plan_windows,
    regions_from_labels,
    segment_volume,
    sliding_window_async,
    sliding_window_probabilities,
    window_starts,
    zscore_over_foreground,
)

WT, TC, ET = 0, 1, 2


@pytest.fixture(scope="module")
def regions() -> tuple[Region, ...]:
    """BraTS regions exactly as registered for hnf_net (WT → 2, TC → 1, ET → 4)."""
    from export.registry import get_spec

    registered = get_spec("hnf_net").regions
    assert [(r.name, r.channel, tuple(r.labels), r.paint_label) for r in registered] == [
        ("WT", 0, (1, 2, 4), 2),
        ("TC", 1, (1, 4), 1),
        ("ET", 2, (4,), 4),
    ]
    return registered


def _logit(x: np.ndarray) -> np.ndarray:
    """Inverse sigmoid, clipped so zero padding gives a finite (very negative) logit."""
    x = np.clip(x.astype(np.float64), 1e-7, 1.0 - 1e-7)
    return np.log(x / (1.0 - x)).astype(np.float32)


def _identity_infer(channels: int = 2):
    """An ``infer`` whose sigmoid output reproduces the first ``channels`` input channels."""

    def infer(batch: np.ndarray) -> np.ndarray:
        return _logit(batch[:, :channels])

    return infer


# --- zscore_over_foreground ---------------------------------------------------------------------


def _brain_mask(shape: tuple[int, int, int]) -> np.ndarray:
    """An ellipsoid foreground mask, away from the edges."""
    grid = np.indices(shape).astype(np.float64)
    centre = (np.array(shape) - 1) / 2.0
    radii = np.array(shape) / 2.5
    return (((grid - centre[:, None, None, None]) / radii[:, None, None, None]) ** 2).sum(axis=0) <= 1.0


def test_zscore_standardises_foreground_per_channel() -> None:
    shape = (12, 11, 10)
    mask = _brain_mask(shape)
    rng = np.random.default_rng(0)
    channels = np.zeros((3, *shape), dtype=np.float32)
    for c, (mean, std) in enumerate([(400.0, 60.0), (1200.0, 250.0), (30.0, 4.0)]):
        channels[c][mask] = rng.normal(mean, std, size=int(mask.sum()))
    assert np.all(channels[:, mask] != 0)

    out = zscore_over_foreground(channels)
    assert out.dtype == np.float32
    assert out.shape == channels.shape
    assert np.abs(out).max() < ZSCORE_CLIP  # no clipping in this case
    for c in range(3):
        values = out[c][mask].astype(np.float64)
        assert values.mean() == pytest.approx(0.0, abs=1e-4)
        assert values.std() == pytest.approx(1.0, abs=1e-4)
        # The transform is affine in the raw values (order and ratios of gaps preserved).
        raw = channels[c][mask].astype(np.float64)
        np.testing.assert_allclose(values, (raw - raw.mean()) / raw.std(), atol=1e-4)
    assert np.all(out[:, ~mask] == 0.0)


def test_zscore_foreground_is_union_of_channels() -> None:
    """A voxel non-zero in one channel only is foreground for all channels (its zeros are data)."""
    channels = np.zeros((2, 4, 4, 4), dtype=np.float32)
    channels[0, :2] = 10.0
    channels[0, 0, 0, 0] = 20.0
    channels[1, 1:3] = 5.0
    channels[1, 1, 1, 1] = 7.0
    foreground = np.zeros((4, 4, 4), dtype=bool)
    foreground[:3] = True
    out = zscore_over_foreground(channels)
    assert np.all(out[:, ~foreground] == 0.0)
    for c in range(2):
        raw = channels[c][foreground].astype(np.float64)
        np.testing.assert_allclose(out[c][foreground], (raw - raw.mean()) / raw.std(), atol=1e-5)


def test_zscore_clips_outliers_at_plus_minus_five() -> None:
    channels = np.zeros((2, 10, 10, 10), dtype=np.float32)
    channels[:, 1:9, 1:9, 1:9] = 100.0
    channels[:, 1:9, 1:9, 1:5] = 110.0
    channels[0, 4, 4, 4] = 1e6
    channels[1, 4, 4, 4] = -1e6
    out = zscore_over_foreground(channels)
    assert out[0, 4, 4, 4] == ZSCORE_CLIP == 5.0
    assert out[1, 4, 4, 4] == -ZSCORE_CLIP
    assert out.max() == 5.0 and out.min() == -5.0
    assert np.all(np.isfinite(out))


def test_zscore_constant_channel_is_centred_without_nan() -> None:
    channels = np.zeros((2, 6, 6, 6), dtype=np.float32)
    channels[:, 1:5, 1:5, 1:5] = 7.0
    channels[1, 1:5, 1:5, 1:3] = 3.0
    out = zscore_over_foreground(channels)
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out[0], 0.0, atol=1e-6)
    inner = out[1, 1:5, 1:5, 1:5]
    np.testing.assert_allclose(np.unique(inner), [-1.0, 1.0], atol=1e-5)


def test_zscore_all_zero_volume_gives_zeros() -> None:
    out = zscore_over_foreground(np.zeros((4, 5, 6, 7), dtype=np.int16))
    assert out.dtype == np.float32
    assert out.shape == (4, 5, 6, 7)
    assert np.all(out == 0.0)


# --- window planning ----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [8, 9, 13, 16, 17, 31, 64, 100])
@pytest.mark.parametrize(("patch", "overlap"), [(8, 0.0), (8, 0.5), (8, 0.25), (5, 0.5), (7, 0.0)])
def test_window_starts_cover_every_voxel(size: int, patch: int, overlap: float) -> None:
    step = max(1, int(round(patch * (1.0 - overlap))))
    starts = window_starts(size, patch, step)
    assert starts[0] == 0
    assert starts[-1] == size - patch  # last window flush with the end
    assert starts == sorted(set(starts))  # increasing, no duplicate windows
    assert all(b - a <= step for a, b in zip(starts, starts[1:]))
    assert all(b - a == step for a, b in zip(starts[:-1], starts[1:-1]))  # regular stride before the last
    covered = np.zeros(size, dtype=int)
    for s in starts:
        covered[s : s + patch] += 1
    assert covered.min() >= 1


def test_window_starts_single_window_when_size_equals_patch() -> None:
    assert window_starts(16, 16, 8) == [0]


def test_plan_windows_step_and_coverage() -> None:
    window = SlidingWindow(patch=(8, 6, 4), overlap=0.5)
    shape = (20, 6, 11)
    corners = plan_windows(shape, window)
    xs, ys, zs = (sorted({c[i] for c in corners}) for i in range(3))
    assert xs == [0, 4, 8, 12]  # step 4 = 8 × 0.5
    assert ys == [0]  # size == patch: one window
    assert zs == [0, 2, 4, 6, 7]  # step 2 = 4 × 0.5, last flush with 11 - 4
    assert len(corners) == len(xs) * len(ys) * len(zs) == len(set(corners))
    covered = np.zeros(shape, dtype=int)
    for x, y, z in corners:
        covered[x : x + 8, y : y + 6, z : z + 4] += 1
    assert covered.min() >= 1


def test_plan_windows_no_overlap_tiles_exactly() -> None:
    window = SlidingWindow(patch=(4, 4, 4), overlap=0.0)
    corners = plan_windows((12, 8, 4), window)
    assert sorted(corners) == [(x, y, 0) for x in (0, 4, 8) for y in (0, 4)]


def test_plan_windows_patch_sized_volume_is_one_window() -> None:
    assert plan_windows((8, 8, 8), SlidingWindow(patch=(8, 8, 8), overlap=0.5)) == [(0, 0, 0)]


def test_pad_to_at_least_pads_high_end_only() -> None:
    volume = np.arange(2 * 3 * 9 * 2, dtype=np.float32).reshape(2, 3, 9, 2) + 1
    padded = pad_to_at_least(volume, (4, 4, 4))
    assert padded.shape == (2, 4, 9, 4)
    np.testing.assert_array_equal(padded[:, :3, :, :2], volume)
    assert np.all(padded[:, 3:] == 0) and np.all(padded[:, :, :, 2:] == 0)


# --- gaussian_importance ------------------------------------------------------------------------


@pytest.mark.parametrize("patch", [(9, 7, 5), (8, 8, 8), (6, 9, 4)])
@pytest.mark.parametrize("sigma_scale", [0.125, 0.5, 0.01])
def test_gaussian_importance_shape_peak_positivity_symmetry(patch: tuple[int, int, int], sigma_scale: float) -> None:
    weights = gaussian_importance(patch, sigma_scale)
    assert weights.shape == patch
    assert weights.dtype == np.float32
    assert weights.max() == pytest.approx(1.0, abs=1e-6)
    assert weights.min() > 0.0
    centre = tuple(slice((p - 1) // 2, p // 2 + 1) for p in patch)  # 1 voxel (odd) or 2 (even) per axis
    np.testing.assert_allclose(weights[centre], 1.0, atol=1e-6)
    for axis in range(3):
        np.testing.assert_allclose(weights, np.flip(weights, axis=axis), rtol=1e-6)


def test_gaussian_importance_decreases_away_from_centre() -> None:
    weights = gaussian_importance((9, 9, 9), 0.125)
    profile = weights[4:, 4, 4]
    assert np.all(np.diff(profile) < 0)
    assert weights[0, 0, 0] < weights[4, 4, 0] < weights[4, 4, 4]


# --- sliding window stitching -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "patch"),
    [
        ((13, 11, 9), (8, 8, 8)),  # not multiples of the patch
        ((5, 12, 3), (8, 8, 8)),  # smaller than the patch in X and Z: padded then cropped
        ((10, 10, 10), (5, 6, 7)),  # anisotropic patch
        ((8, 8, 8), (8, 8, 8)),  # exactly one window
    ],
)
@pytest.mark.parametrize("overlap", [0.0, 0.5])
@pytest.mark.parametrize("sigma_scale", [0.125, 0.0], ids=["gaussian", "uniform"])
def test_sliding_window_stitches_exactly(
    shape: tuple[int, int, int], patch: tuple[int, int, int], overlap: float, sigma_scale: float
) -> None:
    rng = np.random.default_rng(sum(shape))
    volume = rng.uniform(0.02, 0.98, size=(3, *shape)).astype(np.float32)
    window = SlidingWindow(patch=patch, overlap=overlap, gaussian_sigma_scale=sigma_scale, batch_size=2)
    probabilities = sliding_window_probabilities(volume, _identity_infer(2), window)
    assert probabilities.shape == (2, *shape)
    assert probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities, volume[:2], atol=1e-5)


@pytest.mark.parametrize("batch_size", [1, 3, 4])
def test_patches_reach_infer_in_bounded_batches(batch_size: int) -> None:
    shape, patch = (13, 9, 6), (6, 6, 6)
    window = SlidingWindow(patch=patch, overlap=0.5, batch_size=batch_size)
    volume = np.random.default_rng(1).uniform(0.1, 0.9, size=(4, *shape)).astype(np.float32)
    seen: list[tuple[int, ...]] = []

    def infer(batch: np.ndarray) -> np.ndarray:
        seen.append(batch.shape)
        assert batch.dtype == np.float32
        return _logit(batch[:, :1])

    probabilities = sliding_window_probabilities(volume, infer, window)
    expected_windows = len(plan_windows(shape, window))
    assert expected_windows > batch_size
    assert all(1 <= s[0] <= batch_size for s in seen)
    assert all(s[1:] == (4, *patch) for s in seen)
    assert sum(s[0] for s in seen) == expected_windows
    assert len(seen) == -(-expected_windows // batch_size)  # batches are full except the last
    np.testing.assert_allclose(probabilities[0], volume[0], atol=1e-5)


def test_sliding_window_async_parallel_batches_same_result() -> None:
    shape = (14, 10, 7)
    window = SlidingWindow(patch=(6, 6, 6), overlap=0.5, batch_size=2)
    volume = np.random.default_rng(2).uniform(0.05, 0.95, size=(2, *shape)).astype(np.float32)
    sizes: list[int] = []

    async def run(batch: np.ndarray) -> np.ndarray:
        sizes.append(batch.shape[0])
        return _logit(batch[:, :2])

    probabilities = asyncio.run(sliding_window_async(volume, run, window, parallel_batches=3))
    assert max(sizes) <= 2
    assert sum(sizes) == len(plan_windows(shape, window))
    np.testing.assert_allclose(probabilities, volume, atol=1e-5)


# --- region painting ----------------------------------------------------------------------------


def test_labels_regions_round_trip(regions: tuple[Region, ...]) -> None:
    labels = np.random.default_rng(3).choice(np.array([0, 1, 2, 4], dtype=np.uint8), size=(6, 5, 4))
    labels[0, 0, :4] = [0, 1, 2, 4]  # every label present
    masks = regions_from_labels(labels, regions)
    assert masks.shape == (3, 6, 5, 4) and masks.dtype == bool
    np.testing.assert_array_equal(masks[WT], np.isin(labels, (1, 2, 4)))
    np.testing.assert_array_equal(masks[TC], np.isin(labels, (1, 4)))
    np.testing.assert_array_equal(masks[ET], labels == 4)
    painted = labels_from_regions(masks, regions)
    assert painted.dtype == np.uint8
    np.testing.assert_array_equal(painted, labels)


@pytest.mark.parametrize(
    ("wt", "tc", "et", "expected"),
    [
        (False, False, False, 0),
        (True, False, False, 2),  # WT only: edema
        (True, True, False, 1),  # TC without ET: necrotic core
        (True, True, True, 4),  # ET inside TC inside WT
        (True, False, True, 4),  # ET only inside WT still paints 4
    ],
)
def test_region_painting_cases(regions: tuple[Region, ...], wt: bool, tc: bool, et: bool, expected: int) -> None:
    masks = np.zeros((3, 2, 2, 2), dtype=bool)
    masks[:, 1, 0, 1] = [wt, tc, et]
    painted = labels_from_regions(masks, regions)
    assert painted.shape == (2, 2, 2)
    assert painted[1, 0, 1] == expected
    assert np.count_nonzero(painted) == (expected != 0)


# --- segment_volume end to end ------------------------------------------------------------------


def _phantom(shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(4, X, Y, Z) raw channels, the true label map and the brain mask of a nested-box tumour."""
    labels = np.zeros(shape, dtype=np.uint8)
    brain = np.zeros(shape, dtype=bool)
    brain[1:-1, 1:-1, 1:-1] = True
    labels[3:9, 2:8, 1:5] = 2
    labels[4:8, 3:7, 2:4] = 1
    labels[5:7, 4:6, 2:4] = 4
    rng = np.random.default_rng(4)
    channels = np.zeros((4, *shape), dtype=np.float32)
    channels[:, brain] = rng.uniform(50.0, 150.0, size=(4, int(brain.sum())))
    level = {0: None, 2: 300.0, 1: 400.0, 4: 500.0}
    for label, value in level.items():
        if value is not None:
            channels[0][labels == label] = value
    return channels, labels, brain


def test_segment_volume_labels_land_in_source_grid(regions: tuple[Region, ...]) -> None:
    shape = (12, 10, 6)  # Z smaller than the patch, X not a multiple of it
    channels, truth, brain = _phantom(shape)
    raw = channels[0][np.any(channels != 0, axis=0)].astype(np.float64)
    # Thresholds on channel 0's z-score halfway between the raw intensity levels.
    z = {name: (value - raw.mean()) / raw.std() for name, value in {"WT": 225.0, "TC": 350.0, "ET": 450.0}.items()}
    brain_max_z = (150.0 - raw.mean()) / raw.std()  # healthy tissue is uniform in [50, 150)
    assert brain_max_z < z["WT"] < z["TC"] < z["ET"] < ZSCORE_CLIP
    assert z["WT"] > 0.0  # background and padding (z-score 0) stay below the WT threshold
    thresholds = np.array([z["WT"], z["TC"], z["ET"]], dtype=np.float32)[None, :, None, None, None]
    calls: list[tuple[int, ...]] = []

    def infer(batch: np.ndarray) -> np.ndarray:
        calls.append(batch.shape)
        first = batch[:, :1]
        return np.where(first > thresholds, 8.0, -8.0).astype(np.float32)

    window = SlidingWindow(patch=(8, 8, 8), overlap=0.5, batch_size=2)
    result = segment_volume(channels, infer, window, regions, threshold=0.5)
    assert calls and all(c[1:] == (4, 8, 8, 8) and c[0] <= 2 for c in calls)
    assert result.labels.shape == shape
    assert result.labels.dtype == np.uint8
    assert result.probabilities.shape == (3, *shape)
    np.testing.assert_array_equal(result.labels, truth)
    assert np.all(result.labels[~brain] == 0)
