"""The OpenVINO back end (services.runtime.ov_backend): every graph of the model repository
against ONNX Runtime fp32 on the same inputs, the precision rule, and the compiled-model cache."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from services.runtime.ort_backend import OrtBackend
from services.runtime.ov_backend import OvBackend, compile_config, resolve_precision

REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"
# Largest |OpenVINO - ORT| over an output, as a fraction of the ORT output's range (or of its
# largest magnitude, when larger), on random inputs. f32 is the same arithmetic in another order; bf16 keeps 8 bits of mantissa (measured
# here: 0.04 at most, SurgicalSAM's prompt decoder logits, which feed a threshold at 0).
TOLERANCE = {"f32": 1e-3, "bf16": 0.08}


@pytest.fixture(scope="module")
def ort() -> OrtBackend:
    return OrtBackend(REPOSITORY)


def graph_feeds(ort: OrtBackend, graph: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random float inputs of one graph at batch 2 where its batch axis is free; integer inputs
    (class ids) count 1, 2, ..."""
    feeds = {}
    for spec in ort._sessions[graph].get_inputs():
        shape = [d if isinstance(d, int) else 2 for d in spec.shape]
        if "int64" in spec.type:
            feeds[spec.name] = np.arange(1, int(np.prod(shape)) + 1, dtype=np.int64).reshape(shape)
        else:
            feeds[spec.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


@pytest.mark.parametrize("precision", ["f32", "bf16"])
def test_every_graph_agrees_with_onnx_runtime(ort: OrtBackend, precision: str, tmp_path: Path) -> None:
    backend = OvBackend(REPOSITORY, precision=precision, cache_dir=tmp_path)
    assert backend.is_ready() and set(backend.cards) == set(ort.cards)
    rng = np.random.default_rng(0)
    graphs = [graph for card in ort.cards.values() for graph in card.graphs()]
    assert len(graphs) >= 6  # four models, two of them in two graphs
    for graph in graphs:
        feeds = graph_feeds(ort, graph, rng)
        expected, got = ort.run(graph, feeds), backend.run(graph, feeds)
        assert set(got) == set(expected), graph
        for name, value in expected.items():
            assert got[name].shape == value.shape and got[name].dtype == value.dtype, (graph, name)
            scale = max(float(np.ptp(value)), float(np.abs(value).max())) or 1.0  # a few IoU scores: their size
            error = float(np.abs(got[name] - value).max()) / scale
            assert error <= TOLERANCE[precision], f"{graph}/{name}: {error:.4f} of the range ({precision})"


def test_auto_is_bf16_only_where_the_cpu_has_it() -> None:
    assert resolve_precision("auto", ["FP32", "BF16", "INT8"]) == "bf16"
    assert resolve_precision("auto", ["FP32", "INT8"]) == "f32"
    assert resolve_precision("f32", ["FP32", "BF16"]) == "f32"
    with pytest.raises(ValueError, match="no bf16 support"):
        resolve_precision("bf16", ["FP32"])
    with pytest.raises(ValueError, match="MEDSEG_OV_PRECISION"):
        resolve_precision("fp16", ["FP32", "BF16"])
    assert compile_config("bf16", 0) == {"INFERENCE_PRECISION_HINT": "bf16", "PERFORMANCE_HINT": "LATENCY",
                                         "NUM_STREAMS": "1"}
    assert compile_config("f32", 2)["INFERENCE_NUM_THREADS"] == "2"


def test_a_restart_imports_compiled_models_from_the_cache(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    started = time.perf_counter()
    OvBackend(REPOSITORY, models=["swtr_unet", "surgical_sam"], cache_dir=cache)
    compiled_s = time.perf_counter() - started
    blobs = sorted(cache.glob("*.blob"))
    assert len(blobs) == 3  # swtr_unet, SurgicalSAM's encoder and prompt decoder
    started = time.perf_counter()
    again = OvBackend(REPOSITORY, models=["swtr_unet", "surgical_sam"], cache_dir=cache)
    assert again.is_ready()
    assert sorted(cache.glob("*.blob")) == blobs  # read, not written again
    assert time.perf_counter() - started < compiled_s


def test_an_unknown_graph_is_model_not_found(tmp_path: Path) -> None:
    from services.errors import ModelNotFound

    backend = OvBackend(REPOSITORY, models=["swtr_unet"], cache_dir=tmp_path)
    with pytest.raises(ModelNotFound):
        backend.run("mast_encoder", {})
