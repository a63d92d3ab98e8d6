"""ONNX Runtime sessions as the service opens them (services.runtime.ort_backend.open_session)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from load.bench import request_feeds
from services.contract import discover_cards
from services.runtime.ort_backend import open_session

REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"
SPIN = "session.intra_op.allow_spinning"


@pytest.mark.parametrize("spinning", [False, True])
def test_idle_threads_block_unless_spinning_is_asked_for(spinning: bool) -> None:
    """Blocking is the default: with one session per graph, a spinning idle pool takes the cores
    from the graph that runs next (bench-spinning: SurgicalSAM frame x1.7 faster on 2 cores)."""
    card = discover_cards(REPOSITORY)["swtr_unet"]
    session = open_session(REPOSITORY / card.name / card.graph_file, threads=0, spinning=spinning)
    options = session.get_session_options()
    if spinning:
        with pytest.raises(RuntimeError, match="does not have configuration"):
            options.get_session_config_entry(SPIN)  # unset: ONNX Runtime's default, spin
    else:
        assert options.get_session_config_entry(SPIN) == "0"
    (labels,) = session.run(None, request_feeds(card, np.random.default_rng(0)))
    assert labels.shape == (1, 3, 256, 256)
