"""MAST (PVTv2-b2 Siamese video polyp segmenter): structure, official-checkpoint import, serving graphs.

``tests/fixtures/manifests/mast.json`` holds the key names and shapes of the official network's
state_dict (698 keys), dumped from github Junqing-Yang/MAST at commit
bf42579cc8ff3db7c5fc07eb668e567bbceea53f (``lib.MAST_Network.Network(imagenet_pretrained=False)``,
instantiated outside this repository with the pretrained-weight loading stubbed out).
"""

from __future__ import annotations

import json
import os
import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from export.checkpoints.manifest import compare_manifest, read_manifest
from export.checkpoints.mast import MAST_KEY_MAPPING, UNUSED_OFFICIAL_KEYS, load_official_mast
from export.models.mast import (
    FRAME_FEATURE_NAMES,
    MAST_CONFIGS,
    PAIR_HEAD_INPUT_NAMES,
    Mast,
    MastFrameEncoderGraph,
    MastPairHeadGraph,
    build_mast,
    interleave_groups,
    patches_to_tokens,
    tokens_to_patches,
)
from export.weights_io import WeightsMismatch

torch.set_num_threads(1)

MANIFEST = Path(__file__).parents[1] / "fixtures" / "manifests" / "mast.json"
BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")
SMALL = MAST_CONFIGS["small"].input_size


def _manifest() -> dict[str, tuple[int, ...]]:
    return {k: tuple(v) for k, v in json.loads(MANIFEST.read_text()).items()}


@pytest.fixture(scope="module")
def small() -> Mast:
    torch.manual_seed(0)
    model = build_mast("small").eval()
    _randomise_batch_norm(model)
    return model


def _randomise_batch_norm(model: Mast) -> None:
    """Non-trivial BN statistics and affine terms, so eval-mode BN is not an identity."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1, generator=generator)
                module.running_var.uniform_(0.5, 1.5, generator=generator)
                module.weight.uniform_(0.8, 1.2, generator=generator)
                module.bias.normal_(0, 0.05, generator=generator)


def test_configs() -> None:
    assert set(MAST_CONFIGS) == {"paper", "small"}
    paper, small = MAST_CONFIGS["paper"], MAST_CONFIGS["small"]
    enc = paper.encoder
    assert enc.embed_dims == (64, 128, 320, 512) and enc.num_heads == (1, 2, 5, 8)
    assert enc.mlp_ratios == (8, 8, 4, 4) and enc.depths == (3, 4, 6, 3) and enc.sr_ratios == (8, 4, 2, 1)
    assert (paper.input_size, paper.channel, paper.patch, paper.mixture_lambda) == (352, 32, 3, 0.7)
    assert paper.stage4_size == 11 and paper.mixture_grid == 12
    assert small.input_size == 224 and small.stage4_size == 7 and small.mixture_grid == 9
    assert small.encoder.embed_dims == (32, 64, 128, 256) and small.encoder.depths == (1, 1, 2, 1)
    with pytest.raises(KeyError):
        build_mast("huge")


def test_manifest_is_the_official_layout() -> None:
    manifest = _manifest()
    assert len(manifest) == 698
    counts = Counter(k.split(".")[0] for k in manifest)
    assert counts == {
        "encoder": 334, "rfb2_1": 90, "rfb3_1": 90, "rfb4_1": 90, "NCD": 50,
        "RS5": 12, "RS4": 12, "RS3": 12, "linear_e": 1, "MixtureCrossattention": 7,
    }
    assert set(UNUSED_OFFICIAL_KEYS) <= set(manifest) and len(UNUSED_OFFICIAL_KEYS) == 10


def test_paper_consumes_exactly_the_manifest_keys_and_shapes() -> None:
    with torch.device("meta"):
        model = build_mast("paper")
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected = {k: s for k, s in _manifest().items() if k not in UNUSED_OFFICIAL_KEYS}
    assert sorted(set(expected) - set(ours)) == [] and sorted(set(ours) - set(expected)) == []
    assert {k: s for k, s in ours.items() if s != expected[k]} == {}
    assert compare_manifest(read_manifest(MANIFEST), model, MAST_KEY_MAPPING) == sorted(UNUSED_OFFICIAL_KEYS)
    assert model.encoder.norm1.eps == 1e-6 and model.encoder.block3[0].norm2.eps == 1e-6
    assert model.encoder.patch_embed2.norm.eps == 1e-5 and model.encoder.block1[0].attn.norm.eps == 1e-5


def test_paper_parameter_count() -> None:
    with torch.device("meta"):
        model = build_mast("paper")
    ours = sum(p.numel() for p in model.parameters())
    manifest = _manifest()
    official = sum(int(np.prod(s)) for k, s in manifest.items() if not k.endswith(BUFFER_SUFFIXES))
    unused = sum(int(np.prod(manifest[k])) for k in UNUSED_OFFICIAL_KEYS)
    assert official == 26_202_651  # the published "26.2 M"
    assert ours == official - unused == 25_687_306


def _official_format_state(model: Mast, seed: int) -> dict[str, torch.Tensor]:
    """Random tensors under the official key names for ``model``'s shapes, unused keys included."""
    generator = torch.Generator().manual_seed(seed)
    state = {
        k: torch.rand(v.shape, generator=generator) + 0.5 if v.is_floating_point() else v.clone()
        for k, v in model.state_dict().items()
    }
    c, dim4 = model.cfg.channel, model.cfg.encoder.embed_dims[3]
    shapes = {
        "encoder.head.weight": (1000, dim4), "encoder.head.bias": (1000,), "linear_e.weight": (c, c),
        "MixtureCrossattention.SelfAttention.gamma": (1,),
        "MixtureCrossattention.SelfAttention.query.weight": (c // 8, c, 1, 1),
        "MixtureCrossattention.SelfAttention.query.bias": (c // 8,),
        "MixtureCrossattention.SelfAttention.key.weight": (c // 8, c, 1, 1),
        "MixtureCrossattention.SelfAttention.key.bias": (c // 8,),
        "MixtureCrossattention.SelfAttention.value.weight": (c, c, 1, 1),
        "MixtureCrossattention.SelfAttention.value.bias": (c,),
    }
    assert set(shapes) == set(UNUSED_OFFICIAL_KEYS)
    state.update({k: torch.rand(s, generator=generator) for k, s in shapes.items()})
    return state


def test_synthetic_official_checkpoint_round_trip(tmp_path: Path) -> None:
    model = build_mast("small")
    state = _official_format_state(model, seed=3)
    path = tmp_path / "Net_epoch_best.pth"
    torch.save(state, path)
    loaded = load_official_mast(model, path)
    assert loaded is model
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_mismatched_checkpoint_lists_every_bad_key(tmp_path: Path) -> None:
    model = build_mast("small")
    state = _official_format_state(model, seed=4)
    del state["RS3.strong_gra.score.bias"]
    state["decoder.extra.weight"] = torch.zeros(3)
    state["rfb2_1.conv_res.conv.weight"] = torch.zeros(32, 999, 1, 1)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(WeightsMismatch) as error:
        load_official_mast(model, path)
    message = str(error.value)
    assert "1 missing" in message and "RS3.strong_gra.score.bias" in message
    assert "1 unexpected" in message and "decoder.extra.weight" in message
    assert "1 shape mismatch" in message and "rfb2_1.conv_res.conv.weight" in message
    assert "encoder.head.weight" not in message  # documented unused keys are ignored, not reported


class _Payload:
    """Unpickling this would create a directory: weights_only loading must refuse it."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.mkdir, (self.target,)


def test_weights_only_refuses_custom_pickles(tmp_path: Path) -> None:
    marker = tmp_path / "should-not-exist"
    path = tmp_path / "evil.pth"
    torch.save({"encoder.head.bias": _Payload(str(marker))}, path)
    with pytest.raises(pickle.UnpicklingError):
        load_official_mast(build_mast("small"), path)
    assert not marker.exists()


def test_small_forward_shapes(small: Mast) -> None:
    frames = torch.rand(2, 3, SMALL, SMALL)
    with torch.no_grad():
        feats = small.encode(frames)
        logits = small(frames, frames.flip(0))
        anchor_maps, reference_maps = small.forward_all(frames, frames.flip(0))
    assert [tuple(f.shape) for f in feats] == [(2, 32, 28, 28), (2, 32, 14, 14), (2, 32, 7, 7)]
    assert logits.shape == (2, 1, SMALL, SMALL) and torch.isfinite(logits).all()
    assert all(m.shape == (2, 1, SMALL, SMALL) for m in (*anchor_maps, *reference_maps))
    assert torch.equal(anchor_maps[3], logits)  # served output = official anchor S_3
    assert 2e6 < sum(p.numel() for p in small.parameters()) < 3.5e6


def test_encoder_graph_then_pair_head_equals_full_model(small: Mast) -> None:
    generator = torch.Generator().manual_seed(5)
    anchor, reference = (torch.randn(2, 3, SMALL, SMALL, generator=generator) for _ in range(2))
    encoder, head = MastFrameEncoderGraph(small).eval(), MastPairHeadGraph(small).eval()
    with torch.no_grad():
        feats_a, feats_r = encoder(anchor), encoder(reference)
        split = head(*feats_a, feats_r[2])
        full = small(anchor, reference)
        same_frame = small(anchor, anchor)
    assert torch.equal(split, full)
    assert not torch.allclose(full, same_frame)  # the reference frame matters


def test_interleave_groups_matches_the_chunk_layout() -> None:
    x, y = torch.randn(2, 32, 3, 3), torch.randn(2, 1, 3, 3)
    for groups in (1, 4, 32):
        parts = []
        for chunk in torch.chunk(x, groups, dim=1):
            parts += [chunk, y]
        assert torch.equal(interleave_groups(x, y, groups), torch.cat(parts, dim=1))


def test_patch_tokens_order_and_round_trip() -> None:
    x = torch.randn(2, 32, 12, 12)
    tokens = patches_to_tokens(x, 3)
    assert tokens.shape == (2, 16, 288)
    # token (row i, col j) of the 4×4 grid; feature (p1, p2, c) ↔ pixel (3i + p1, 3j + p2) of channel c
    i, j, p1, p2, c = 2, 1, 0, 2, 17
    assert tokens[1, i * 4 + j, (p1 * 3 + p2) * 32 + c] == x[1, c, 3 * i + p1, 3 * j + p2]
    assert torch.equal(tokens_to_patches(tokens, 3, 32, 12), x)


def _export(
    module: torch.nn.Module,
    example: tuple[torch.Tensor, ...],
    inputs: tuple[str, ...],
    outputs: tuple[str, ...],
    path: Path,
) -> None:
    """TorchScript exporter, opset 17, dynamic batch axis on every named tensor."""
    with torch.no_grad():
        torch.onnx.export(
            module, example, str(path), input_names=list(inputs), output_names=list(outputs),
            dynamic_axes={name: {0: "batch"} for name in (*inputs, *outputs)},
            opset_version=17, dynamo=False,
        )


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript exporter is chosen on purpose
def test_small_serving_graphs_match_onnx_runtime(small: Mast, tmp_path: Path) -> None:
    encoder, head = MastFrameEncoderGraph(small).eval(), MastPairHeadGraph(small).eval()
    with torch.no_grad():
        example = encoder(torch.zeros(1, 3, SMALL, SMALL))
    _export(encoder, (torch.zeros(1, 3, SMALL, SMALL),), ("frame",), FRAME_FEATURE_NAMES, tmp_path / "enc.onnx")
    _export(head, (*example, example[2]), PAIR_HEAD_INPUT_NAMES, ("logits",), tmp_path / "head.onnx")

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    sessions = [
        ort.InferenceSession(str(tmp_path / name), options, providers=["CPUExecutionProvider"])
        for name in ("enc.onnx", "head.onnx")
    ]
    assert [i.name for i in sessions[1].get_inputs()] == list(PAIR_HEAD_INPUT_NAMES)
    assert sessions[1].get_outputs()[0].shape == ["batch", 1, SMALL, SMALL]

    generator = torch.Generator().manual_seed(6)
    # batch 3, not the export batch 1: the batch axis is dynamic
    anchor, reference = (torch.randn(3, 3, SMALL, SMALL, generator=generator) for _ in range(2))
    with torch.no_grad():
        expected = small(anchor, reference).numpy()
        feats_a = [f.numpy() for f in encoder(anchor)]
    ort_a = sessions[0].run(None, {"frame": anchor.numpy()})
    ort_r = sessions[0].run(None, {"frame": reference.numpy()})
    for got, want in zip(ort_a, feats_a):
        assert np.abs(got - want).max() <= 1e-4 * (want.max() - want.min())
    logits = sessions[1].run(None, dict(zip(PAIR_HEAD_INPUT_NAMES, (*ort_a, ort_r[2]))))[0]
    assert logits.shape == (3, 1, SMALL, SMALL)
    assert np.abs(logits - expected).max() <= 1e-4 * (expected.max() - expected.min())
