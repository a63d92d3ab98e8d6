"""The committed MAST demo weights: strict loading, SHA-256 against the record, recorded held-out Dice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from export.hashing import sha256_file
from export.models.mast import build_mast
from export.training.mast import RECORD_FILE, WEIGHTS_DIR, WEIGHTS_FILE
from export.weights_io import load_weights

WEIGHTS = WEIGHTS_DIR / WEIGHTS_FILE
RECORD = WEIGHTS_DIR / RECORD_FILE

pytestmark = pytest.mark.skipif(not WEIGHTS.exists(), reason="demo weights not built (python -m export train-demo mast)")


@pytest.fixture(scope="module")
def record() -> dict:
    return json.loads(RECORD.read_text())


def test_weights_load_strictly_and_run(record: dict) -> None:
    model = load_weights(build_mast("small"), Path(WEIGHTS)).eval()
    assert record["model"] == "mast" and record["variant"] == "small" and record["weights_file"] == WEIGHTS_FILE
    torch.manual_seed(0)
    frame = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        logits = model(frame, frame)
    assert logits.shape == (1, 1, 224, 224) and torch.isfinite(logits).all()


def test_sha256_matches_the_record(record: dict) -> None:
    assert sha256_file(WEIGHTS) == record["sha256"]
    assert WEIGHTS.stat().st_size == record["size_bytes"]


def test_recorded_held_out_dice(record: dict) -> None:
    held_out = record["held_out"]
    assert held_out["dice_self_reference"] >= 0.85
    assert held_out["dice_pair"] >= 0.85
    assert held_out["frames_self_reference"] > 0 and held_out["frames_pair"] > 0
    assert record["wall_time_s"]["total"] > 0
