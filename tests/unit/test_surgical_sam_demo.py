"""The committed SurgicalSAM demo weights: strict loading, SHA-256 against the record, recorded held-out IoU."""

from __future__ import annotations

import json

import pytest
import torch

from export.hashing import sha256_file
from export.models.surgical_sam import build_surgical_sam
from export.training.surgical_sam import RECORD_FILE, WEIGHTS_DIR, WEIGHTS_FILE
from export.weights_io import load_weights

WEIGHTS = WEIGHTS_DIR / WEIGHTS_FILE
RECORD = WEIGHTS_DIR / RECORD_FILE

pytestmark = pytest.mark.skipif(
    not WEIGHTS.exists(), reason="demo weights not built (python -m export train-demo surgical_sam)"
)


@pytest.fixture(scope="module")
def record() -> dict:
    return json.loads(RECORD.read_text())


def test_weights_load_strictly_and_run(record: dict) -> None:
    model = load_weights(build_surgical_sam("small"), WEIGHTS).eval()
    assert record["model"] == "surgical_sam" and record["variant"] == "small" and record["dataset"] == "endovis2018"
    torch.manual_seed(0)
    with torch.no_grad():
        logits, iou = model(torch.randn(1, 3, 256, 256), torch.tensor([2, 5], dtype=torch.int64))
    assert logits.shape == (2, 1, 64, 64) and iou.shape == (2, 1) and torch.isfinite(logits).all()


def test_sha256_matches_the_record(record: dict) -> None:
    assert sha256_file(WEIGHTS) == record["sha256"]
    assert WEIGHTS.stat().st_size == record["size_bytes"]


def test_recorded_held_out_iou(record: dict) -> None:
    held_out = record["held_out"]
    assert held_out["mean_iou_present_present_prompted"] >= 0.80
    assert held_out["pairs_present_prompted"] >= 100
    assert record["wall_time_s"]["total"] > 0
