"""SurgicalSAM: official key/shape layout, tunable sizes, checkpoint import, serving graphs.

tests/fixtures/manifests/surgical_sam_endovis2018.json was dumped (names and shapes only) from
wenxi-yue/SurgicalSAM at commit 7649d7e60e40de9f8758167f553b90d7eaf9941c: ``Prototype_Prompt_Encoder(
256, 128, 128, 64, num_tokens=2)``, the decoder of ``_build_sam_no_image_encoder()`` and
``Learnable_Prototypes(7, 256)``, built on the meta device; sam_vit_h.json comes from
facebookresearch/segment-anything (see test_sam.py).
"""

from __future__ import annotations

import json
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from export.checkpoints.manifest import meta_state, read_manifest
from export.checkpoints.surgical_sam import (
    SAM_FILE_MAPPING,
    SURGICAL_FILE_PARTS,
    load_official_surgical_sam,
    sam_file_to_ours,
    surgical_file_to_ours,
)
from export.models.surgical_sam import (
    SURGICAL_DATASETS,
    SURGICAL_SAM_CONFIGS,
    SamImageEncoderGraph,
    SurgicalSam,
    SurgicalSamPromptGraph,
    build_surgical_sam,
    tunable_parameter_count,
)
from export.weights_io import WeightsMismatch, check_state_dict

torch.set_num_threads(1)

MANIFESTS = Path(__file__).resolve().parents[1] / "fixtures" / "manifests"
SAM_PROMPT_ENCODER_UNUSED = {
    *(f"prompt_encoder.point_embeddings.{i}.weight" for i in range(4)),
    "prompt_encoder.not_a_point_embed.weight",
    *(f"prompt_encoder.mask_downscaling.{i}.{p}" for i in (0, 1, 3, 4, 6) for p in ("weight", "bias")),
    "prompt_encoder.no_mask_embed.weight",
}


@dataclass
class NotATensor:
    """A custom class: pickling it into a checkpoint must make weights_only loading refuse the file."""

    payload: int = 1


@pytest.fixture(scope="module")
def small_model() -> SurgicalSam:
    torch.manual_seed(0)
    model = build_surgical_sam("small").eval()
    with torch.no_grad():  # official init leaves these at zero; give the test something to check
        for name, param in model.named_parameters():
            if "rel_pos" in name or "pos_embed" in name:
                param.normal_(0.0, 0.1)
    return model


def _official_files(model: SurgicalSam, tmp_path: Path) -> tuple[Path, Path, dict, dict]:
    """Write ``model``'s weights in the two official layouts (plus SAM's unused keys)."""
    state = model.state_dict()
    sam = {k: v for k, v in state.items() if k.startswith("image_encoder.")}
    pe_key = "positional_encoding_gaussian_matrix"
    sam[f"prompt_encoder.pe_layer.{pe_key}"] = state[f"pe_layer.{pe_key}"]
    vit_b = read_manifest(MANIFESTS / "sam_vit_b.json")
    sam.update({k: torch.randn(vit_b[k]) for k in SAM_PROMPT_ENCODER_UNUSED})
    sam.update({"mask_decoder." + k: torch.randn_like(v) for k, v in model.mask_decoder.state_dict().items()})
    surgical = {
        part: {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        for part, prefix in SURGICAL_FILE_PARTS.items()
    }
    sam_path, surgical_path = tmp_path / "sam.pth", tmp_path / "model_ckp.pth"
    torch.save(sam, sam_path)
    torch.save(surgical, surgical_path)
    return sam_path, surgical_path, sam, surgical


def test_configs_and_datasets() -> None:
    assert SURGICAL_SAM_CONFIGS["paper"].encoder == "vit_h" and SURGICAL_SAM_CONFIGS["paper"].grid == 64
    assert SURGICAL_SAM_CONFIGS["small"].encoder == "small" and SURGICAL_SAM_CONFIGS["small"].grid == 16
    assert SURGICAL_DATASETS["endovis2018"].num_tokens == 2 and SURGICAL_DATASETS["endovis2017"].num_tokens == 4
    assert SURGICAL_DATASETS["endovis2018"].class_names[4] == "Ultrasound Probe"
    assert SURGICAL_DATASETS["endovis2017"].class_names[6] == "Others"
    with pytest.raises(KeyError):
        build_surgical_sam("huge")
    with pytest.raises(KeyError):
        build_surgical_sam("small", "endovis2019")


def test_paper_model_consumes_exactly_the_official_files() -> None:
    with torch.device("meta"):
        model = build_surgical_sam("paper", "endovis2018")
    sam_state, ignored = sam_file_to_ours(meta_state(read_manifest(MANIFESTS / "sam_vit_h.json")))
    nested = read_manifest(MANIFESTS / "surgical_sam_endovis2018.json")
    surgical_state = surgical_file_to_ours({part: meta_state(keys) for part, keys in nested.items()})
    check_state_dict(model, {**sam_state, **surgical_state})  # raises on any difference
    decoder_keys = {"mask_decoder." + k for k in nested["sam_decoder_state_dict"]}
    assert set(ignored) == SAM_PROMPT_ENCODER_UNUSED | decoder_keys
    assert SAM_FILE_MAPPING.rename[1] == ("prompt_encoder.pe_layer.", "pe_layer.")
    pn = nested["prototype_prompt_encoder_state_dict"]
    assert pn["pn_cls_embeddings.0.weight"] == pn["pn_cls_embeddings.1.weight"] == [2, 256]
    assert pn["sparse_fc_1.weight"] == [128, 4096, 1]
    assert nested["prototypes_state_dict"] == {"class_embeddings.weight": [7, 256]}


@pytest.mark.parametrize(("dataset", "expected"), [("endovis2018", 4_650_726), ("endovis2017", 4_650_984)])
def test_tunable_parameters(dataset: str, expected: int) -> None:
    with torch.device("meta"):
        model = build_surgical_sam("paper", dataset)
    assert tunable_parameter_count(model) == expected
    assert not any(p.requires_grad for p in model.prototype_prompt_encoder.pn_cls_embeddings.parameters())


def test_official_checkpoint_pair_loads(small_model: SurgicalSam, tmp_path: Path) -> None:
    sam_path, surgical_path, _, _ = _official_files(small_model, tmp_path)
    fresh = build_surgical_sam("small")
    load_official_surgical_sam(fresh, sam_path, surgical_path)
    for key, value in small_model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key


def test_missing_and_extra_keys_are_listed(small_model: SurgicalSam, tmp_path: Path) -> None:
    sam_path, surgical_path, sam, surgical = _official_files(small_model, tmp_path)
    del sam["image_encoder.blocks.1.attn.rel_pos_h"]
    sam["prompt_encoder.extra_thing.weight"] = torch.zeros(1)
    torch.save(sam, sam_path)
    with pytest.raises(WeightsMismatch) as info:
        load_official_surgical_sam(build_surgical_sam("small"), sam_path, surgical_path)
    message = str(info.value)
    assert "1 missing key(s):\n  image_encoder.blocks.1.attn.rel_pos_h" in message
    assert "1 unexpected key(s):\n  prompt_encoder.extra_thing.weight" in message
    _official_files(small_model, tmp_path)  # restore the SAM file
    surgical["prototypes_state_dict"]["class_embeddings.weight"] = torch.zeros(8, 256)
    torch.save(surgical, surgical_path)
    shape_error = r"prototypes.class_embeddings.weight: checkpoint \(8, 256\) vs model \(7, 256\)"
    with pytest.raises(WeightsMismatch, match=shape_error):
        load_official_surgical_sam(build_surgical_sam("small"), sam_path, surgical_path)
    del surgical["prototypes_state_dict"]
    torch.save(surgical, surgical_path)
    with pytest.raises(WeightsMismatch, match="missing \\['prototypes_state_dict'\\]"):
        load_official_surgical_sam(build_surgical_sam("small"), sam_path, surgical_path)


def test_checkpoints_are_read_with_weights_only(small_model: SurgicalSam, tmp_path: Path) -> None:
    sam_path, surgical_path, _, surgical = _official_files(small_model, tmp_path)
    surgical["extra"] = NotATensor()
    torch.save(surgical, surgical_path)
    with pytest.raises(pickle.UnpicklingError):
        load_official_surgical_sam(build_surgical_sam("small"), sam_path, surgical_path)


def test_small_forward_shapes(small_model: SurgicalSam) -> None:
    with torch.no_grad():
        logits, iou = small_model(torch.randn(1, 3, 256, 256), torch.tensor([2, 5]))
    assert logits.shape == (2, 1, 64, 64) and iou.shape == (2, 1)
    assert torch.isfinite(logits).all() and torch.isfinite(iou).all()


def test_one_call_for_all_classes_equals_the_per_class_loop(small_model: SurgicalSam) -> None:
    classes = torch.arange(1, 8)
    with torch.no_grad():
        embedding = small_model.image_encoder(torch.randn(1, 3, 256, 256))
        logits, iou = small_model.predict(embedding, classes)
        single = [small_model.predict(embedding, classes[i : i + 1]) for i in range(7)]
    assert torch.allclose(logits, torch.cat([s[0] for s in single]), atol=1e-5, rtol=1e-5)
    assert torch.allclose(iou, torch.cat([s[1] for s in single]), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(logits[0], logits[1])  # the class prompt matters


def _export(graph: torch.nn.Module, inputs: tuple[torch.Tensor, ...], path: Path) -> ort.InferenceSession:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph,
            inputs,
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=list(graph.input_names),
            output_names=list(graph.output_names),
            dynamic_axes=graph.dynamic_axes,
        )
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert not ops & {"NonZero", "Einsum"}, ops
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _assert_close(reference: torch.Tensor, got: np.ndarray) -> None:
    ref = reference.numpy()
    assert got.shape == ref.shape
    assert np.abs(ref - got).max() <= 1e-4 * (ref.max() - ref.min())


def test_serving_graphs_export_and_match_onnxruntime(small_model: SurgicalSam, tmp_path: Path) -> None:
    encoder_graph = SamImageEncoderGraph(small_model.image_encoder).eval()
    session = _export(encoder_graph, encoder_graph.example_inputs(), tmp_path / "encoder.onnx")
    images = torch.randn(2, 3, 256, 256)
    with torch.no_grad():
        embeddings = encoder_graph(images)
    (got,) = session.run(None, {"image": images.numpy()})
    _assert_close(embeddings, got)

    prompt_graph = SurgicalSamPromptGraph(small_model).eval()
    session = _export(prompt_graph, prompt_graph.example_inputs(), tmp_path / "prompt.onnx")
    embedding = embeddings[:1]
    for classes in ([1, 3, 5], [7], list(range(1, 8))):
        class_ids = torch.tensor(classes, dtype=torch.int64)
        with torch.no_grad():
            logits, iou = prompt_graph(embedding, class_ids)
        got_logits, got_iou = session.run(None, {"image_embedding": embedding.numpy(), "class_ids": class_ids.numpy()})
        assert got_logits.shape == (len(classes), 1, 64, 64) and got_iou.shape == (len(classes), 1)
        _assert_close(logits, got_logits)
        assert np.abs(iou.numpy() - got_iou).max() <= 1e-4 * (logits.max() - logits.min()).item()


def test_cli_builds_the_official_pair_with_its_provenance(small_model: SurgicalSam, tmp_path: Path) -> None:
    from export.__main__ import main

    sam_path, surgical_path, _, _ = _official_files(small_model, tmp_path)
    repository = tmp_path / "repository"
    argv = ["build", "--model", "surgical_sam", "--variant", "small", "--weights", str(surgical_path)]
    assert main([*argv, "--sam-checkpoint", str(sam_path), "--repository", str(repository)]) == 0
    card = json.loads((repository / "surgical_sam" / "medseg.json").read_text())
    assert card["weights"]["kind"] == "official" and card["weights"]["source"] == "model_ckp.pth + sam.pth"
    assert "sam.pth (sha256 " in card["weights"]["note"]
    assert {c["model"]: c["batched"] for c in card["components"]} == {
        "surgical_sam_image_encoder": True,
        "surgical_sam_prompt_decoder": False,
    }
    assert all(c["parity"]["relative"] <= 1e-4 for c in card["components"])
    # the served graphs carry the imported weights: the encoder equals the source model's
    session = ort.InferenceSession(str(repository / "surgical_sam_image_encoder" / "1" / "model.onnx"))
    image = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        expected = small_model.image_encoder(image).numpy()
    (got,) = session.run(None, {"image": image.numpy()})
    assert np.abs(got - expected).max() <= 1e-4 * (expected.max() - expected.min())


def test_cli_wants_the_sam_file_with_official_surgical_sam_weights(small_model: SurgicalSam, tmp_path: Path) -> None:
    from export.__main__ import main

    _, surgical_path, _, _ = _official_files(small_model, tmp_path)
    with pytest.raises(ValueError, match="--sam-checkpoint"):
        main(["build", "--model", "surgical_sam", "--weights", str(surgical_path), "--repository", str(tmp_path / "r")])


def test_cli_refuses_a_sam_file_for_models_without_sam(small_model: SurgicalSam, tmp_path: Path) -> None:
    from export.__main__ import main

    sam_path, _, _, _ = _official_files(small_model, tmp_path)
    argv = ["build", "--model", "mast", "--sam-checkpoint", str(sam_path), "--repository", str(tmp_path / "r")]
    with pytest.raises(ValueError, match="--sam-checkpoint goes with --weights"):
        main(argv)


def test_large_graphs_are_written_with_one_external_data_file(small_model: SurgicalSam, tmp_path: Path) -> None:
    """ViT-L/H encoders exceed the 1 GiB limit; a zero limit runs the same path on the small one."""
    from export.hashing import sha256_graph
    from export.onnx_export import export_onnx, measure_parity
    from export.registry import get_spec

    encoder_spec = get_spec("surgical_sam").graphs("small")[0]
    graph = SamImageEncoderGraph(small_model.image_encoder).eval()
    path = tmp_path / "1" / "model.onnx"
    export_onnx(graph, encoder_spec.inputs, encoder_spec.outputs, path, external_data_over=0)
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.onnx", "model.onnx.data"]
    assert path.stat().st_size < 300_000 < (path.parent / "model.onnx.data").stat().st_size
    assert measure_parity(graph, path, encoder_spec.inputs).relative <= 1e-4
    before = sha256_graph(path)
    with (path.parent / "model.onnx.data").open("r+b") as data:  # the digest covers the weights too
        data.seek(4096)
        data.write(b"\x00\x01\x02\x03")
    assert sha256_graph(path) != before
