"""The OpenVINO back end (bf16 where this CPU has it) against ONNX Runtime fp32, through HTTP on
the demo weights and every model's phantom cases (load/quality.py): each score (Dice, IoU) within
0.01 and the label maps agreeing on at least 99.5 % of pixels (voxels)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from export.registry import REGISTRY
from load.local_service import ROOT, local_service
from load.quality import CASES, compare, measure

pytestmark = pytest.mark.integration

MAX_SCORE_CHANGE = 0.01
MIN_AGREEMENT = 0.995


@pytest.fixture(scope="module")
def urls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    work = tmp_path_factory.mktemp("backends")
    repository = ROOT / "model_repository"
    with local_service(repository, work / "ort", env={"MEDSEG_BACKEND": "embedded"}) as ort, \
            local_service(repository, work / "ov", env={"MEDSEG_BACKEND": "openvino"}) as ov:
        yield {"embedded": ort.url, "openvino": ov.url}


def test_every_registered_model_has_quality_cases() -> None:
    assert set(CASES) == set(REGISTRY)


@pytest.mark.parametrize("model", sorted(REGISTRY))
def test_openvino_keeps_the_quality_of_onnx_runtime(urls: dict[str, str], model: str) -> None:
    cases = CASES[model][0]()
    verdict = compare(measure(urls["embedded"], model, cases), measure(urls["openvino"], model, cases))
    assert verdict["largest_score_change"] <= MAX_SCORE_CHANGE, verdict
    assert verdict["agreement"] >= MIN_AGREEMENT, verdict
