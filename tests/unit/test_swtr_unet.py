"""The SWTR-Unet-like network (two sizes) and its demo trainer's targets."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from export.models.swtr_unet import SWTR_UNET_CONFIGS, build_swtr_unet
from export.training.swtr_unet import demo_preprocessing, letterbox_targets
from services.preprocess import plan_letterbox


def _torchvision_resnet50_keys(blocks: tuple[int, ...]) -> set[str]:
    """State-dict keys of torchvision's resnet50 stem and layer1..layer3 (written out by hand)."""
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    keys = {"conv1.weight", *(f"bn1.{p}" for p in bn)}
    for stage, count in enumerate(blocks, start=1):
        for block in range(count):
            prefix = f"layer{stage}.{block}"
            for i in (1, 2, 3):
                keys.add(f"{prefix}.conv{i}.weight")
                keys.update(f"{prefix}.bn{i}.{p}" for p in bn)
            if block == 0:
                keys.add(f"{prefix}.downsample.0.weight")
                keys.update(f"{prefix}.downsample.1.{p}" for p in bn)
    return keys


def test_configs() -> None:
    assert set(SWTR_UNET_CONFIGS) == {"paper", "small"}
    paper, small = SWTR_UNET_CONFIGS["paper"], SWTR_UNET_CONFIGS["small"]
    assert paper.input_size == (512, 512) and small.input_size == (256, 256)
    assert (paper.hidden, paper.layers, paper.heads, paper.mlp) == (768, 12, 12, 3072)
    assert paper.stage_blocks == (3, 4, 6) and paper.stage_widths == (256, 512, 1024) and paper.stem_channels == 64
    assert paper.grid == (32, 32) and small.grid == (16, 16)
    with pytest.raises(KeyError):
        build_swtr_unet("huge")


def test_small_forward_shape() -> None:
    torch.manual_seed(0)
    model = build_swtr_unet("small").eval()
    with torch.no_grad():
        logits = model(torch.rand(2, 1, 256, 256))
    assert logits.shape == (2, 3, 256, 256) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    assert 0.5e6 < sum(p.numel() for p in model.parameters()) < 3e6


def test_paper_structure_and_resnet50_key_names() -> None:
    started = time.perf_counter()
    model = build_swtr_unet("paper")
    assert time.perf_counter() - started < 10.0
    assert 95e6 < sum(p.numel() for p in model.parameters()) < 110e6
    assert set(model.resnet.state_dict()) == _torchvision_resnet50_keys((3, 4, 6))
    assert "resnet.layer3.5.conv3.weight" in model.state_dict()
    assert tuple(model.resnet.layer3[5].conv3.weight.shape) == (1024, 256, 1, 1)
    blocks = model.transformer.blocks
    assert len(blocks) == 12
    assert blocks[0].attn.heads == 12 and blocks[0].attn.qkv.in_features == 768
    assert blocks[0].mlp.fc1.out_features == 3072
    assert tuple(model.transformer.pos_embed.shape) == (1, 32 * 32, 768)


def test_demo_targets_follow_the_input_letterbox() -> None:
    pre = demo_preprocessing()
    labels = np.zeros((512, 400), dtype=np.uint8)
    labels[100:300, 50:200] = 1
    labels[150:200, 80:120] = 2
    box = plan_letterbox(labels.shape, pre.size, (0.8, 0.8), pre.resize)
    target = letterbox_targets(labels, box)
    assert target.shape == (3, 256, 256)
    np.testing.assert_allclose(target.sum(axis=0), 1.0, atol=1e-5)
    assert box.scaled == (256, 200)
    assert np.all(target[0, :, 200:] == 1.0)  # padding is background
    assert abs(float(target[1].sum()) - (200 * 150 - 50 * 40) / 4) < 30
