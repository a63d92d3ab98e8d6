"""CI exports SurgicalSAM with the SAM ViT-B image encoder at its real 1024x1024 input.

Random weights (the SAM files cannot be downloaded here): this proves that the full-size encoder
and the 64x64 prompt stage trace, pass onnx.checker and match PyTorch in ONNX Runtime, with the
same command that takes `--sam-checkpoint sam_vit_b_01ec64.pth --weights ...`. ViT-L and ViT-H go
through the same code with their parameters in an external-data file (tested on the small model
in test_surgical_sam.py); they are built on demand, not in every CI run.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from export.repository import MAX_RELATIVE_PARITY_FP32, build_model_folder
from export.registry import get_spec
from export.triton.config import parse_config


@pytest.fixture(scope="module")
def vit_b_build(tmp_path_factory: pytest.TempPathFactory):
    repository = tmp_path_factory.mktemp("vit_b")
    return repository, build_model_folder(get_spec("surgical_sam"), "vit_b", repository, say=lambda _: None)


def test_vit_b_encoder_and_prompt_stage_export_with_parity(vit_b_build) -> None:
    repository, card = vit_b_build
    encoder, prompt = card.component("image_encoder"), card.component("prompt_decoder")
    assert encoder.inputs[0].shape == (-1, 3, 1024, 1024) and encoder.outputs[0].shape == (-1, 256, 64, 64)
    assert prompt.inputs[0].shape == (1, 256, 64, 64) and prompt.outputs[0].shape == (-1, 1, 256, 256)
    for component in (encoder, prompt):
        assert component.parity.relative <= MAX_RELATIVE_PARITY_FP32, component.model
    graph = repository / encoder.model / encoder.graph_file
    assert 330e6 < graph.stat().st_size < 1 << 30  # ViT-B: ~90 M fp32 parameters, inside the file
    assert not (graph.parent / "model.onnx.data").exists()
    assert card.weights.kind == "random" and card.preprocessing.size == (1024, 1024)


def test_vit_b_configs_parse_with_tritons_schema(vit_b_build) -> None:
    repository, card = vit_b_build
    for folder in (card.name, *(c.model for c in card.components)):
        config = parse_config((repository / folder / "config.pbtxt").read_text())
        assert config.name == folder
    assert Path(repository / card.name / card.version).is_dir()
