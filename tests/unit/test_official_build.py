"""`python -m export build --weights FILE.pth` with an official-format checkpoint (MAST).

The official file cannot be downloaded here; a synthetic file in the official layout (our keys
plus the official file's unused keys) stands in, written from a seeded small network.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from export.__main__ import main
from export.checkpoints.mast import UNUSED_OFFICIAL_KEYS
from export.models.mast import build_mast
from export.weights_io import WeightsMismatch


def official_layout_file(path: Path, drop: str | None = None) -> Path:
    torch.manual_seed(7)
    state = dict(build_mast("small").state_dict())
    state.update({key: torch.zeros(2) for key in UNUSED_OFFICIAL_KEYS})
    if drop:
        del state[drop]
    torch.save(state, path)
    return path


def test_official_format_checkpoint_builds_with_official_provenance(tmp_path: Path) -> None:
    weights = official_layout_file(tmp_path / "Net_epoch_best.pth")
    repository = tmp_path / "repository"
    assert main(["build", "--model", "mast", "--variant", "small", "--weights", str(weights), "--repository", str(repository)]) == 0
    card = json.loads((repository / "mast" / "medseg.json").read_text())
    assert card["weights"]["kind"] == "official" and card["weights"]["source"] == "Net_epoch_best.pth"
    assert len(card["weights"]["sha256"]) == 64
    assert {c["model"] for c in card["components"]} == {"mast_encoder", "mast_pair_head"}
    assert all(c["parity"]["relative"] <= 1e-4 for c in card["components"])


def test_official_checkpoint_with_a_missing_key_is_refused_by_name(tmp_path: Path) -> None:
    weights = official_layout_file(tmp_path / "broken.pth", drop="rfb2_1.branch0.0.conv.weight")
    with pytest.raises(WeightsMismatch, match=r"missing key\(s\):\n  rfb2_1\.branch0\.0\.conv\.weight"):
        main(["build", "--model", "mast", "--variant", "small", "--weights", str(weights), "--repository", str(tmp_path / "r")])
