"""The committed SurgicalSAM demo weights' recorded held-out IoU (strict loading, SHA-256 and
shapes: test_registry_models.py, for every model)."""

from __future__ import annotations

import json

import pytest

from export.training.surgical_sam import RECORD_FILE, WEIGHTS_DIR, WEIGHTS_FILE

WEIGHTS = WEIGHTS_DIR / WEIGHTS_FILE
RECORD = WEIGHTS_DIR / RECORD_FILE

pytestmark = pytest.mark.skipif(
    not WEIGHTS.exists(), reason="demo weights not built (python -m export train-demo surgical_sam)"
)


@pytest.fixture(scope="module")
def record() -> dict:
    return json.loads(RECORD.read_text())


def test_recorded_held_out_iou(record: dict) -> None:
    assert record["dataset"] == "endovis2018"
    held_out = record["held_out"]
    assert held_out["mean_iou_present_present_prompted"] >= 0.80
    assert held_out["pairs_present_prompted"] >= 100
    assert record["wall_time_s"]["total"] > 0
