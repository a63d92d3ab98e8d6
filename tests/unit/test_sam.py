"""SAM parts (image encoder, dense PE, mask decoder) against the official key/shape manifests.

The manifests in tests/fixtures/manifests/sam_vit_{b,l,h}.json were dumped (names and shapes
only) from facebookresearch/segment-anything at commit dca509fe793f601edb92606367a655c15ac00fdf,
by building ``sam_model_registry[name]()`` on the meta device and calling
:func:`export.checkpoints.manifest.state_dict_manifest` on its state dict.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from export.checkpoints.manifest import KeyMapping, compare_manifest, read_manifest
from export.models.sam import (
    SAM_ENCODER_CONFIGS,
    MaskDecoder,
    PositionEmbeddingRandom,
    SamImageEncoder,
    build_sam_encoder,
    decomposed_rel_pos,
    relative_position_index,
    window_partition,
    window_unpartition,
)
from export.weights_io import WeightsMismatch

torch.set_num_threads(1)

MANIFESTS = Path(__file__).resolve().parents[1] / "fixtures" / "manifests"
ENCODER_ONLY = KeyMapping(rename=(("image_encoder.", ""),), ignored=("prompt_encoder.", "mask_decoder."))
PE_ONLY = KeyMapping(
    rename=(("prompt_encoder.pe_layer.", ""),), ignored=("image_encoder.", "prompt_encoder.", "mask_decoder.")
)
DECODER_ONLY = KeyMapping(rename=(("mask_decoder.", ""),), ignored=("image_encoder.", "prompt_encoder."))


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_configs() -> None:
    expected = {
        "vit_b": (768, 12, 12, (2, 5, 8, 11)),
        "vit_l": (1024, 24, 16, (5, 11, 17, 23)),
        "vit_h": (1280, 32, 16, (7, 15, 23, 31)),
    }
    for name, (width, depth, heads, globals_) in expected.items():
        cfg = SAM_ENCODER_CONFIGS[name]
        assert (cfg.width, cfg.depth, cfg.heads, cfg.global_attn_indexes) == (width, depth, heads, globals_)
        assert (cfg.img_size, cfg.patch_size, cfg.window_size, cfg.grid, cfg.out_chans) == (1024, 16, 14, 64, 256)
    small = SAM_ENCODER_CONFIGS["small"]
    assert (small.width, small.depth, small.heads, small.global_attn_indexes) == (192, 4, 3, (1, 3))
    assert (small.img_size, small.grid, small.window_size) == (256, 16, 6)
    with pytest.raises(KeyError):
        build_sam_encoder("vit_x")


@pytest.mark.parametrize("name", ["vit_b", "vit_l", "vit_h"])
def test_encoder_consumes_exactly_the_official_keys(name: str) -> None:
    with torch.device("meta"):
        encoder = build_sam_encoder(name)
    manifest = read_manifest(MANIFESTS / f"sam_{name}.json")
    ignored = compare_manifest(manifest, encoder, ENCODER_ONLY)
    assert all(not k.startswith("image_encoder.") for k in ignored)
    cfg = encoder.config
    head_dim = cfg.width // cfg.heads
    for i, block in enumerate(encoder.blocks):
        rows = 127 if i in cfg.global_attn_indexes else 27
        assert tuple(block.attn.rel_pos_h.shape) == tuple(block.attn.rel_pos_w.shape) == (rows, head_dim)
        assert block.window == (0 if i in cfg.global_attn_indexes else 14)
    assert tuple(encoder.pos_embed.shape) == (1, 64, 64, cfg.width)


def test_encoder_parameter_count() -> None:
    with torch.device("meta"):
        vit_b, vit_h = build_sam_encoder("vit_b"), build_sam_encoder("vit_h")
    assert _params(vit_b) == 89_670_912  # ~89.7 M, as the official build
    assert _params(vit_h) == 637_026_048


def test_prompt_pe_and_decoder_consume_exactly_the_official_keys() -> None:
    manifest = read_manifest(MANIFESTS / "sam_vit_b.json")
    ignored = compare_manifest(manifest, PositionEmbeddingRandom(), PE_ONLY)
    assert "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix" not in ignored
    decoder = MaskDecoder()
    compare_manifest(manifest, decoder, DECODER_ONLY)
    assert _params(decoder) == 4_058_340
    short = {k: v for k, v in manifest.items() if k != "mask_decoder.iou_token.weight"}
    with pytest.raises(WeightsMismatch, match=r"1 missing key\(s\):\n  iou_token.weight"):
        compare_manifest(short, decoder, DECODER_ONLY)
    with pytest.raises(WeightsMismatch, match=r"1 unexpected key\(s\):\n  extra.weight"):
        compare_manifest({**manifest, "mask_decoder.extra.weight": [1]}, decoder, DECODER_ONLY)


def test_window_partition_round_trip_with_padding() -> None:
    x = torch.randn(2, 16, 16, 5)
    windows = window_partition(x, 6)  # 16 → 18: 3×3 windows per image
    assert windows.shape == (2 * 9, 6, 6, 5)
    assert torch.equal(windows[0], x[0, :6, :6])
    assert torch.equal(windows[8, :4, :4], x[0, 12:, 12:]) and windows[8, 4:].abs().sum() == 0
    assert torch.equal(window_unpartition(windows, 6, (16, 16)), x)


def test_decomposed_rel_pos_matches_the_gather_einsum_definition() -> None:
    torch.manual_seed(0)
    size, d, n = 5, 8, 6
    q = torch.randn(n, size * size, d)
    table_h, table_w = torch.randn(2 * size - 1, d), torch.randn(2 * size - 1, d)
    index = relative_position_index(size)
    assert index[0, 0] == size - 1 and index[size - 1, 0] == 2 * size - 2 and index[0, size - 1] == 0
    rel_h, rel_w = decomposed_rel_pos(q, table_h, table_w, (size, size))
    r = q.reshape(n, size, size, d)
    assert torch.allclose(rel_h, torch.einsum("nhwc,hkc->nhwk", r, table_h[index]), atol=1e-5)
    assert torch.allclose(rel_w, torch.einsum("nhwc,wkc->nhwk", r, table_w[index]), atol=1e-5)


def test_small_encoder_forward_shape() -> None:
    torch.manual_seed(0)
    encoder = build_sam_encoder("small").eval()
    with torch.no_grad():
        out = encoder(torch.randn(2, 3, 256, 256))
    assert out.shape == (2, 256, 16, 16) and torch.isfinite(out).all()
    assert isinstance(encoder, SamImageEncoder)


def test_dense_pe_is_the_fourier_encoding_of_cell_centres() -> None:
    pe = PositionEmbeddingRandom()
    gaussian = torch.randn(2, 128)
    pe.load_state_dict({"positional_encoding_gaussian_matrix": gaussian})
    out = pe(4, 3)
    assert out.shape == (1, 256, 4, 3)
    row, col = 2, 1
    xy = torch.tensor([(col + 0.5) / 3, (row + 0.5) / 4]) * 2 - 1
    proj = 2 * math.pi * (xy @ gaussian)
    assert torch.allclose(out[0, :, row, col], torch.cat([proj.sin(), proj.cos()]), atol=1e-5)
    assert torch.equal(pe(4, 3), out)  # deterministic: the buffer is never re-randomised
    assert "positional_encoding_gaussian_matrix" in pe.state_dict()


def test_decoder_broadcasts_one_image_over_prompts() -> None:
    torch.manual_seed(0)
    decoder, pe = MaskDecoder().eval(), PositionEmbeddingRandom()
    image, dense, sparse = torch.randn(1, 256, 8, 8), torch.randn(3, 256, 8, 8), torch.randn(3, 6, 256)
    with torch.no_grad():
        masks, iou = decoder(image, pe(8, 8), sparse, dense)
        masks_rep, iou_rep = decoder(image.expand(3, -1, -1, -1), pe(8, 8), sparse, dense)
    assert masks.shape == (3, 4, 32, 32) and iou.shape == (3, 4)
    assert torch.allclose(masks, masks_rep, atol=1e-5) and torch.allclose(iou, iou_rep, atol=1e-5)
