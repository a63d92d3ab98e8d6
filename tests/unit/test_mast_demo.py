"""The committed MAST demo weights' recorded held-out Dice (strict loading, SHA-256 and shapes:
test_registry_models.py, for every model)."""

from __future__ import annotations

import json

import pytest

from export.training.mast import RECORD_FILE, WEIGHTS_DIR, WEIGHTS_FILE

WEIGHTS = WEIGHTS_DIR / WEIGHTS_FILE
RECORD = WEIGHTS_DIR / RECORD_FILE

pytestmark = pytest.mark.skipif(not WEIGHTS.exists(), reason="demo weights not built (python -m export train-demo mast)")


@pytest.fixture(scope="module")
def record() -> dict:
    return json.loads(RECORD.read_text())


def test_recorded_held_out_dice(record: dict) -> None:
    held_out = record["held_out"]
    assert held_out["dice_self_reference"] >= 0.85
    assert held_out["dice_pair"] >= 0.85
    assert held_out["frames_self_reference"] > 0 and held_out["frames_pair"] > 0
    assert record["wall_time_s"]["total"] > 0
