"""OvBackend: the OpenVINO back end, compiled models in this process (``MEDSEG_BACKEND=openvino``).

The same ``model.onnx`` files as ONNX Runtime, compiled by OpenVINO's CPU plugin. Where the CPU
does bf16 in hardware (AMX, or AVX-512 BF16: OpenVINO lists ``BF16`` among the CPU's optimization
capabilities) the default inference precision is bf16, which is most of its speed over ONNX
Runtime's fp32 on such hosts; ``MEDSEG_OV_PRECISION=f32`` keeps fp32. Compiled models are cached
in ``MEDSEG_OV_CACHE_DIR`` (OpenVINO's model cache, keyed by graph, device and settings), so a
restart imports them instead of compiling again.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from pathlib import Path

import anyio
import numpy as np
import openvino as ov

from services.contract import ModelCard, discover_cards
from services.errors import ModelNotFound
from services.settings import OV_PRECISIONS

log = logging.getLogger("medseg.runtime")

DEVICE = "CPU"


def resolve_precision(requested: str, capabilities: Sequence[str]) -> str:
    """``bf16`` or ``f32`` for the CPU plugin: ``auto`` is bf16 where the CPU lists ``BF16``
    among its optimization capabilities, else f32. ValueError for bf16 asked of a CPU without it
    (OpenVINO would quietly run f32) or an unknown name."""
    if requested not in OV_PRECISIONS:
        raise ValueError(f"MEDSEG_OV_PRECISION must be one of {', '.join(OV_PRECISIONS)}, not {requested!r}")
    has_bf16 = "BF16" in capabilities
    if requested == "auto":
        return "bf16" if has_bf16 else "f32"
    if requested == "bf16" and not has_bf16:
        raise ValueError("MEDSEG_OV_PRECISION=bf16, but this CPU has no bf16 support (AMX or AVX-512 BF16)")
    return requested


def compile_config(precision: str, threads: int) -> dict[str, str]:
    """The CPU plugin's settings for one graph: latency-oriented (one stream: the GraphBatcher
    batches concurrent calls), ``threads`` inference threads (0: OpenVINO picks)."""
    config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = str(threads)
    return config


def relax_static_leading_dims(model: ov.Model) -> ov.Model:
    """Make a static leading dimension of 1 dynamic where another input of the graph is dynamic.

    OpenVINO 2026.4's CPU plugin fails SurgicalSAM's prompt decoder for more than one class: its
    ``image_embedding`` input is static (1, 256, 16, 16) and is broadcast against the per-class
    tensors (``classes`` is dynamic); the Reorder the plugin puts on that input is then given the
    broadcast shape and raises "Can not clone with new dims". Declared (?, 256, 16, 16), the same
    tensor of batch 1 runs and gives ONNX Runtime's outputs (within 2e-5). Graphs whose inputs
    are all static or all dynamic in their leading dimension are left as they are."""
    shapes = {port.get_any_name(): port.get_partial_shape() for port in model.inputs}
    if not any(shape.is_dynamic for shape in shapes.values()):
        return model
    relaxed = {}
    for name, shape in shapes.items():
        if shape.rank.is_static and shape.rank.get_length() > 0 and shape[0].is_static and shape[0].get_length() == 1:
            relaxed[name] = ov.PartialShape([ov.Dimension(), *list(shape)[1:]])
    if relaxed:
        model.reshape(relaxed)
    return model


def compile_graph(core: ov.Core, graph: Path, precision: str, threads: int = 0) -> ov.CompiledModel:
    """One ONNX graph compiled for the CPU as this back end serves it (``precision`` resolved)."""
    model = relax_static_leading_dims(core.read_model(str(graph)))
    return core.compile_model(model, DEVICE, compile_config(precision, threads))


class OvBackend:
    """Compiles every graph of every model of the repository that has a medseg.json at
    construction (``models``: only those); graphs keyed by Triton model name as in OrtBackend."""

    def __init__(self, repository: Path, threads: int = 0, models: Collection[str] | None = None,
                 precision: str = "auto", cache_dir: Path | None = None) -> None:
        core = ov.Core()
        if cache_dir is not None:
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
            core.set_property({"CACHE_DIR": str(cache_dir)})
        self.precision = resolve_precision(precision, core.get_property(DEVICE, "OPTIMIZATION_CAPABILITIES"))
        self.cards: dict[str, ModelCard] = {
            name: card for name, card in discover_cards(repository).items() if models is None or name in models
        }
        self._expected = {graph for card in self.cards.values() for graph in card.graphs()}
        self._compiled: dict[str, ov.CompiledModel] = {}
        for name, card in self.cards.items():
            for graph, (graph_file, _) in card.graphs().items():
                self._compiled[graph] = compile_graph(core, repository / graph_file, self.precision, threads)
            log.info("compiled %s (%s, version %s, %d graph(s), %s)", name, card.variant, card.version,
                     len(card.graphs()), self.precision)

    def is_ready(self) -> bool:
        return bool(self.cards) and set(self._compiled) == self._expected

    def run(self, model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Blocking inference of one graph by Triton model name, on a request of its own (calls
        from several threads never share one); outputs copied out of OpenVINO's buffers."""
        compiled = self._compiled.get(model)
        if compiled is None:
            raise ModelNotFound(f"model {model!r} is not served")
        request = compiled.create_infer_request()
        results = request.infer(inputs)
        return {output.get_any_name(): np.asarray(value) for output, value in results.items()}

    async def infer(self, model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return await anyio.to_thread.run_sync(self.run, model, inputs)
