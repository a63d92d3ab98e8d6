"""The committed HNF-Net-like demo weights' EMA bases, and the demo trainer's pure helpers (the
weights' quality is measured through HTTP in tests/integration/test_volume_http.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from export.models.hnf_net import build_hnf_net
from export.training.hnf_net import (
    WEIGHTS_DIR,
    WEIGHTS_FILE,
    region_dice,
    region_loss,
    region_targets,
    sample_corner,
)
from export.weights_io import load_weights

torch.set_num_threads(1)


def test_demo_weights_keep_unit_norm_ema_bases() -> None:
    """EMA's bases are L2-normalised in training; the committed weights must keep them so."""
    model = load_weights(build_hnf_net("small"), WEIGHTS_DIR / WEIGHTS_FILE).eval()
    mu = model.head.ema.mu
    torch.testing.assert_close(mu.norm(dim=1), torch.ones(1, mu.shape[2]), atol=1e-4, rtol=0)


def test_sample_corner_stays_inside_and_centres_on_tumour() -> None:
    labels = np.zeros((96, 96, 80), dtype=np.uint8)
    labels[5:9, 85:90, 70:74] = 2  # tumour near a corner: the patch must be shifted inside
    labels[6, 87, 71] = 4
    patch = (64, 64, 64)
    rng = np.random.default_rng(0)
    for _ in range(50):
        corner = sample_corner(rng, labels, patch, tumour_centred=1.0)
        assert all(0 <= c <= s - p for c, s, p in zip(corner, labels.shape, patch))
        crop = labels[corner[0] : corner[0] + 64, corner[1] : corner[1] + 64, corner[2] : corner[2] + 64]
        assert crop.any()
    centred = np.zeros_like(labels)
    centred[50, 40, 35] = 1
    assert sample_corner(rng, centred, patch, 1.0) == (18, 8, 3)
    corners = {sample_corner(rng, np.zeros_like(labels), patch, 1.0) for _ in range(20)}
    assert len(corners) > 1  # no tumour: uniform corners
    with pytest.raises(ValueError):
        sample_corner(rng, labels[:32], patch, 0.5)


def test_region_targets_loss_and_dice() -> None:
    labels = torch.tensor([0, 1, 2, 4], dtype=torch.uint8).reshape(1, 4, 1, 1)
    targets = region_targets(labels)
    assert targets.shape == (1, 3, 4, 1, 1)
    expected = [[0, 1, 1, 1], [0, 1, 0, 1], [0, 0, 0, 1]]  # WT, TC, ET
    assert targets[0, :, :, 0, 0].tolist() == expected
    perfect = region_loss((targets * 2 - 1) * 20.0, targets)
    wrong = region_loss((1 - targets * 2) * 20.0, targets)
    assert float(perfect) < 0.05 < 3.0 < float(wrong)
    truth = labels.numpy()[0]
    scores = region_dice([truth, np.zeros_like(truth)], [truth, truth])
    assert scores["WT"] == pytest.approx(2 * 3 / (3 + 6))
    assert scores["ET_case_median"] == pytest.approx(0.5) and scores["cases"] == 2.0
