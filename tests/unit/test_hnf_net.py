"""The HNF-Net-like network (two sizes), its EMA unit and ONNX Runtime parity of the small size."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from export.models.ema import EMAUnit, em_iterations, l2_normalise, one_group_norm
from export.models.hnf_net import (
    HNF_NET_CHOICES,
    HNF_NET_CONFIGS,
    HnfNet,
    HnfNetConfig,
    build_hnf_net,
    check_input_size,
    upsample,
)
from export.weights_io import load_weights

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def small() -> HnfNet:
    torch.manual_seed(0)
    return build_hnf_net("small").eval()


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_configs() -> None:
    assert set(HNF_NET_CONFIGS) == {"paper", "small"}
    paper, small_cfg = HNF_NET_CONFIGS["paper"], HNF_NET_CONFIGS["small"]
    assert paper.num_branches == 4 and paper.widths == (32, 64, 128, 256) and paper.stride == 16
    assert paper.patch_size == (128, 128, 128)
    assert small_cfg.num_branches == 3 and small_cfg.widths == (8, 16, 32) and small_cfg.stride == 8
    assert small_cfg.patch_size == (64, 64, 64)
    for cfg in (paper, small_cfg):
        assert (cfg.in_channels, cfg.out_channels) == (4, 3)
        assert (cfg.ema_bases, cfg.ema_iterations) == (64, 3)
    assert "our choices" in HNF_NET_CHOICES and "InstanceNorm3d" in HNF_NET_CHOICES
    with pytest.raises(KeyError):
        build_hnf_net("huge")
    with pytest.raises(ValueError):
        HnfNetConfig(patch_size=(60, 64, 64), base_width=8, num_branches=3, blocks=1, stage_modules=(1, 1), head_width=8)
    with pytest.raises(ValueError):
        HnfNetConfig(patch_size=(64, 64, 64), base_width=8, num_branches=3, blocks=1, stage_modules=(1,), head_width=8)


def test_paper_structure_without_forward() -> None:
    model = build_hnf_net("paper")
    assert 15e6 < _params(model) < 18e6
    assert len(model.transitions) == 3 and len(model.stages) == 3
    last = model.stages[-1][-1]
    assert [b[0].conv1[0].in_channels for b in last.branches] == [32, 64, 128, 256]
    assert len(last.fuse.paths) == 4 and all(len(row) == 4 for row in last.fuse.paths)
    assert [t[0].stride for t in model.transitions] == [(2, 2, 2)] * 3
    assert model.stem[0][0].stride == (2, 2, 2) and model.stem[0][0].in_channels == 4
    assert model.head.ema.mu.shape == (1, 64, 64)
    assert model.head.classifier.out_channels == 3


def test_small_forward_shape_and_branch_resolutions(small: HnfNet) -> None:
    p = HNF_NET_CONFIGS["small"].patch_size[0]
    image = torch.randn(1, 4, p, p, p)
    with torch.no_grad():
        feats = small.features(image)
        logits = small(image)
    assert [tuple(f.shape) for f in feats] == [(1, 8, 32, 32, 32), (1, 16, 16, 16, 16), (1, 32, 8, 8, 8)]
    assert logits.shape == (1, 3, p, p, p) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    assert 0.1e6 < _params(small) < 0.3e6


def test_input_size_check() -> None:
    cfg = HNF_NET_CONFIGS["small"]
    check_input_size(cfg, (64, 48, 96))
    for bad in ((64, 64, 60), (64, 64), (0, 64, 64)):
        with pytest.raises(ValueError):
            check_input_size(cfg, bad)


def test_head_sum_of_projections_equals_concat_then_conv(small: HnfNet) -> None:
    """Our head computes concat(upsampled branches) → 1×1×1 conv as a sum of per-branch convs."""
    torch.manual_seed(1)
    xs = [torch.randn(1, w, 16 // 2**j, 16 // 2**j, 16 // 2**j) for j, w in enumerate(small.cfg.widths)]
    head = small.head
    weight = torch.cat([p.weight for p in head.proj], dim=1)
    concat = torch.cat([xs[0]] + [upsample(x, 2**j) for j, x in enumerate(xs) if j], dim=1)
    expected = F.relu(head.norm(F.conv3d(concat, weight, head.proj[0].bias)))
    with torch.no_grad():
        torch.testing.assert_close(head.fused(xs), expected, atol=1e-5, rtol=1e-5)


def test_ema_bases_are_a_normalised_buffer(small: HnfNet) -> None:
    ema = small.head.ema
    assert "head.ema.mu" in small.state_dict()
    assert "head.ema.mu" not in dict(small.named_parameters())
    mu = small.state_dict()["head.ema.mu"]
    assert mu.shape == (1, 16, 64)
    torch.testing.assert_close(mu.norm(dim=1), torch.ones(1, 64), atol=1e-5, rtol=0)
    assert ema.iterations == 3


def test_em_iterations_properties() -> None:
    torch.manual_seed(2)
    x = torch.randn(2, 8, 100)
    mu = l2_normalise(torch.randn(1, 8, 5), dim=1)
    z, bases = em_iterations(x, mu, 3)
    assert z.shape == (2, 100, 5) and bases.shape == (2, 8, 5)
    torch.testing.assert_close(z.sum(dim=2), torch.ones(2, 100))
    torch.testing.assert_close(bases.norm(dim=1), torch.ones(2, 5), atol=1e-5, rtol=0)
    with pytest.raises(ValueError):
        em_iterations(x, mu, 0)


def test_ema_training_updates_bases_eval_does_not() -> None:
    torch.manual_seed(3)
    ema = EMAUnit(8, bases=4)
    x = torch.randn(2, 8, 6, 6, 6)
    before = ema.mu.clone()
    ema.eval()
    with torch.no_grad():
        ema(x)
    torch.testing.assert_close(ema.mu, before)
    ema.train()
    out = ema(x)
    out.sum().backward()  # gradients flow despite the in-place buffer update
    assert not torch.allclose(ema.mu, before)
    torch.testing.assert_close(ema.mu.norm(dim=1), torch.ones(1, 4), atol=1e-5, rtol=0)


def test_one_group_norm_matches_group_norm() -> None:
    torch.manual_seed(4)
    x = torch.randn(2, 6, 5, 4, 3) * 3 + 1
    w, b = torch.randn(6), torch.randn(6)
    torch.testing.assert_close(one_group_norm(x, w, b, 1e-5), F.group_norm(x, 1, w, b, 1e-5), atol=1e-5, rtol=1e-5)


def test_weights_round_trip_includes_bases(small: HnfNet, tmp_path: Path) -> None:
    path = tmp_path / "hnf_small.safetensors"
    save_file({k: v.contiguous() for k, v in small.state_dict().items()}, str(path))
    torch.manual_seed(99)
    other = load_weights(build_hnf_net("small"), path)
    torch.testing.assert_close(other.head.ema.mu, small.head.ema.mu)


def test_onnx_runtime_parity_small(small: HnfNet, tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    p = HNF_NET_CONFIGS["small"].patch_size
    path = tmp_path / "hnf_small.onnx"
    torch.manual_seed(5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            small,
            (torch.randn(1, 4, *p),),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
        )
    image = torch.randn(2, 4, *p)  # batch 2 exercises the dynamic axis
    with torch.no_grad():
        expected = small(image).numpy()
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {"image": image.numpy()})[0]
    assert got.shape == expected.shape == (2, 3, *p)
    logit_range = float(expected.max() - expected.min())
    assert float(np.abs(got - expected).max()) <= 1e-4 * logit_range
