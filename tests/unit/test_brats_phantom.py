"""The BraTS-like phantom: determinism, nested tumour regions, skull-stripped background, MRI
contrasts, physical-unit geometry and the regions ↔ labels conversion."""

from __future__ import annotations

import numpy as np
import pytest

from export.phantoms.brats import (
    BRATS_LABELS,
    EDEMA,
    ENHANCING,
    NECROSIS,
    BratsPhantom,
    brats_regions,
    labels_from_regions,
    make_brats_case,
    smooth_fields,
)

T1, T1CE, T2, FLAIR = range(4)
SEEDS = range(6)


@pytest.fixture(scope="module")
def cases() -> dict[int, BratsPhantom]:
    return {seed: make_brats_case(np.random.default_rng(seed)) for seed in SEEDS}


def test_same_seed_same_case_and_types(cases: dict[int, BratsPhantom]) -> None:
    a, b = cases[0], make_brats_case(np.random.default_rng(0))
    assert a.channels.dtype == np.float32 and a.channels.shape == (4, 96, 96, 80)
    assert a.labels.dtype == np.uint8 and a.labels.shape == (96, 96, 80)
    assert a.brain.dtype == bool and a.brain.shape == (96, 96, 80)
    assert a.spacing_mm == (1.0, 1.0, 1.0)
    np.testing.assert_array_equal(a.channels, b.channels)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert not np.array_equal(a.labels, cases[1].labels)
    rng = np.random.default_rng(0)
    first, second = make_brats_case(rng, (48, 48, 40)), make_brats_case(rng, (48, 48, 40))
    assert not np.array_equal(first.channels, second.channels)


@pytest.mark.parametrize("seed", SEEDS)
def test_labels_nested_inside_the_brain(cases: dict[int, BratsPhantom], seed: int) -> None:
    case = cases[seed]
    assert set(np.unique(case.labels)) <= set(BRATS_LABELS)
    wt, tc, et = brats_regions(case.labels)
    assert wt.sum() > 500 and tc.sum() > 100  # a tumour is always present
    assert not np.any(et & ~tc) and not np.any(tc & ~wt)
    assert not np.any(wt & ~case.brain)
    assert 0.1 < case.brain.mean() < 0.7
    assert not case.brain[0].any() and not case.brain[:, :, -1].any()  # brain inside the field of view


@pytest.mark.parametrize("seed", SEEDS)
def test_skull_stripped_background(cases: dict[int, BratsPhantom], seed: int) -> None:
    case = cases[seed]
    assert np.all(case.channels[:, ~case.brain] == 0.0)
    assert np.all(case.channels[:, case.brain] > 0.0)  # the service's brain mask is "any channel non-zero"
    assert np.isfinite(case.channels).all()
    assert float(case.channels.max()) > 50.0  # scanner units, not normalised


def _mean(case: BratsPhantom, channel: int, mask: np.ndarray) -> float:
    return float(case.channels[channel][mask].mean())


@pytest.mark.parametrize("seed", SEEDS)
def test_modality_contrasts(cases: dict[int, BratsPhantom], seed: int) -> None:
    case = cases[seed]
    normal = case.brain & (case.labels == 0)
    edema, core = case.labels == EDEMA, np.isin(case.labels, (NECROSIS, ENHANCING))
    assert _mean(case, FLAIR, edema) > 1.3 * _mean(case, FLAIR, normal)
    assert _mean(case, T2, edema) > 1.2 * _mean(case, T2, normal)
    assert _mean(case, T1, core) < 0.9 * _mean(case, T1, normal)  # tumour hypo-intense on T1
    necrosis, enhancing = case.labels == NECROSIS, case.labels == ENHANCING
    if enhancing.sum() > 50 and necrosis.sum() > 50:
        assert _mean(case, T1CE, enhancing) > 2.0 * _mean(case, T1CE, necrosis)
        assert _mean(case, T1CE, enhancing) > 1.3 * _mean(case, T1CE, normal)
        assert _mean(case, T2, necrosis) > _mean(case, T2, enhancing)


def test_csf_dark_on_flair_bright_on_t2(cases: dict[int, BratsPhantom]) -> None:
    case = cases[0]
    ratio = case.channels[T2] / np.maximum(case.channels[FLAIR], 1e-3)
    normal = case.brain & (case.labels == 0)
    csf_like = normal & (ratio > np.percentile(ratio[normal], 95))
    assert _mean(case, FLAIR, csf_like) < 0.6 * _mean(case, FLAIR, normal)
    assert _mean(case, T2, csf_like) > 1.5 * _mean(case, T2, normal)


def test_the_generated_cases_cover_the_label_variety(cases: dict[int, BratsPhantom]) -> None:
    counts = np.array([[np.sum(c.labels == k) for k in (NECROSIS, EDEMA, ENHANCING)] for c in cases.values()])
    assert np.all(counts[:, 1] > 0)
    assert np.sum(counts[:, 2] > 0) >= 4 and np.sum(counts[:, 0] > 0) >= 4
    assert counts[:, 1].max() > 3 * counts[:, 1].min()  # sizes vary


def test_geometry_in_millimetres() -> None:
    """The same seed at 1 mm and 2 mm voxels draws a brain of the same physical volume."""
    fine = make_brats_case(np.random.default_rng(3), (96, 96, 80), (1.0, 1.0, 1.0))
    coarse = make_brats_case(np.random.default_rng(3), (48, 48, 40), (2.0, 2.0, 2.0))
    assert coarse.channels.shape == (4, 48, 48, 40) and coarse.spacing_mm == (2.0, 2.0, 2.0)
    assert abs(coarse.brain.sum() * 8.0 / fine.brain.sum() - 1.0) < 0.05
    wt_fine, wt_coarse = (brats_regions(c.labels)[0].sum() for c in (fine, coarse))
    assert abs(wt_coarse * 8.0 / wt_fine - 1.0) < 0.25
    anisotropic = make_brats_case(np.random.default_rng(3), (64, 64, 32), (1.5, 1.5, 2.5))
    assert anisotropic.channels.shape == (4, 64, 64, 32)
    assert np.all(anisotropic.channels[:, ~anisotropic.brain] == 0.0)


def test_smooth_fields_are_normalised_and_smooth() -> None:
    fields = smooth_fields(np.random.default_rng(0), 2, (40, 40, 32), (1.0, 1.0, 1.0), 4.0)
    assert fields.shape == (2, 40, 40, 32) and fields.dtype == np.float32
    assert np.all(np.abs(fields.mean(axis=(1, 2, 3))) < 0.05)
    assert np.all(np.abs(fields.std(axis=(1, 2, 3)) - 1.0) < 0.1)
    step = np.abs(np.diff(fields, axis=1)).mean()
    assert step < 0.4  # neighbouring voxels are strongly correlated (white noise: ~1.13)


def test_regions_and_labels_round_trip() -> None:
    labels = np.array([[0, 1, 2, 4], [4, 2, 1, 0]], dtype=np.uint8)
    regions = brats_regions(labels)
    assert regions.dtype == bool and regions.shape == (3, 2, 4)
    np.testing.assert_array_equal(regions[0], labels > 0)
    np.testing.assert_array_equal(regions[1], np.isin(labels, (1, 4)))
    np.testing.assert_array_equal(regions[2], labels == 4)
    back = labels_from_regions(regions)
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, labels)


def test_labels_from_regions_paints_in_order() -> None:
    """Non-nested predictions: ET wins over TC, TC over WT."""
    wt = np.array([1, 0, 0, 1], bool)
    tc = np.array([0, 1, 0, 1], bool)
    et = np.array([0, 0, 1, 0], bool)
    np.testing.assert_array_equal(labels_from_regions(np.stack([wt, tc, et])), [EDEMA, NECROSIS, ENHANCING, NECROSIS])
    with pytest.raises(ValueError):
        labels_from_regions(np.zeros((2, 4), bool))


def test_round_trip_on_a_case(cases: dict[int, BratsPhantom]) -> None:
    labels = cases[2].labels
    np.testing.assert_array_equal(labels_from_regions(brats_regions(labels)), labels)
