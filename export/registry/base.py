"""The registry's building blocks: what a deployable model is (``ModelSpec``, its variants and
graphs) and what the registry holds for it (``ModelEntry``: the spec, its builder, graph cut,
official-checkpoint loader and demo trainer). One module per model in this package fills one
entry; ``export.registry.REGISTRY`` assembles them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Any, Mapping

from torch import nn

from services.contract import (
    Activation,
    Batching,
    Code,
    EnsembleStep,
    IntensityRule,
    Label,
    Preprocessing,
    Region,
    SlidingWindow,
    TaskKind,
    TensorSpec,
)

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"

# DICOM CID 7150 segmentation property categories and SNOMED CT types.
ANATOMICAL_STRUCTURE = Code("91723000", "SCT", "Anatomical Structure")
MORPHOLOGICALLY_ALTERED = Code("49755003", "SCT", "Morphologically Altered Structure")
TISSUE = Code("85756007", "SCT", "Tissue")


@dataclass(frozen=True)
class Variant:
    """One size of a network family: same code, other hyper-parameters."""

    name: str
    input_size: tuple[int, ...]  # network input: (rows, cols), or the (X, Y, Z) patch of a 3-D model
    summary: str
    demo_weights: str | None = None  # file name under export/weights/, if demo weights exist


@dataclass(frozen=True)
class GraphSpec:
    """One ONNX graph of a multi-graph model (served as Triton model ``<model>_<role>``)."""

    role: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    batched: bool = True  # False: full shapes, one call per frame (Triton max_batch_size 0)


@dataclass(frozen=True)
class ModelSpec:
    """Facts about a deployable model that do not depend on a particular build.

    Single-graph models export ``ModelEntry.build(variant)`` as one graph with ``input_name``
    → ``output_name``. Multi-graph models set ``graph_layout`` (the graphs of a variant) and
    ``ensemble`` (how Triton chains them); ``ModelEntry.cut_graphs`` cuts the built network into
    those graphs, and the model folder itself is the ensemble.
    """

    name: str
    display_name: str
    task: TaskKind
    description: str
    input_name: str
    output_name: str
    in_channels: int
    activation: Activation
    intensity: Mapping[str, IntensityRule]
    resize: str
    labels: tuple[Label, ...]
    variants: Mapping[str, Variant]
    batching: Batching
    regions: tuple[Region, ...] = ()  # sigmoid region outputs (outermost first); empty: one channel per label
    window_overlap: float = 0.5  # volume3d sliding window
    window_sigma_scale: float = 0.125
    window_batch_size: int = 2
    threshold: float = 0.5  # on sigmoid probabilities
    channel_names: tuple[str, ...] = ()  # input channels by name (volume3d upload fields, in order)
    mean: tuple[float, ...] = ()  # per-channel normalisation after the intensity rule
    std: tuple[float, ...] = ()
    graph_layout: Callable[[str], tuple[GraphSpec, ...]] | None = None
    ensemble: tuple[EnsembleStep, ...] = ()

    def graphs(self, variant: str) -> tuple[GraphSpec, ...]:
        return self.graph_layout(variant) if self.graph_layout else ()

    def graph_model(self, role: str) -> str:
        """Triton model name of one graph of a multi-graph model."""
        return f"{self.name}_{role}"

    @property
    def output_channels(self) -> int:
        return len(self.regions) if self.regions else len(self.labels)

    def sliding_window(self, variant: str) -> SlidingWindow | None:
        """The 3-D inference window of a volume model (patch = the variant's input size); else None."""
        if self.task != "volume3d":
            return None
        patch = self.variant(variant).input_size
        return SlidingWindow(patch, self.window_overlap, self.window_sigma_scale, self.window_batch_size)  # type: ignore[arg-type]

    def variant(self, name: str) -> Variant:
        if name not in self.variants:
            raise KeyError(f"{self.name} has no variant {name!r}; known: {', '.join(self.variants)}")
        return self.variants[name]

    def preprocessing(self, variant: str) -> Preprocessing:
        return Preprocessing(
            size=self.variant(variant).input_size,
            channels=self.in_channels,
            resize=self.resize,  # type: ignore[arg-type]
            intensity=dict(self.intensity),
            pad_value=0.0,
            mean=self.mean,
            std=self.std,
        )

    def tensors(self, variant: str) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
        """Graph inputs and outputs with a dynamic batch axis (-1); for a multi-graph model, the
        ensemble's: inputs no step produces, outputs no later step consumes."""
        if self.graph_layout:
            return ensemble_interface(self.graphs(variant), self.ensemble)
        size = self.variant(variant).input_size
        inputs = (TensorSpec(self.input_name, "float32", (-1, self.in_channels, *size)),)
        outputs = (TensorSpec(self.output_name, "float32", (-1, self.output_channels, *size)),)
        return inputs, outputs


def ensemble_interface(
    graphs: tuple[GraphSpec, ...], steps: tuple[EnsembleStep, ...]
) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """The ensemble's own inputs and outputs, typed and shaped like the graph tensors they map to.

    When a graph is unbatched, so is the ensemble: it takes one frame per call, so the batch axis
    of the batched graphs' tensors becomes 1.
    """
    by_role = {g.role: g for g in graphs}
    one_frame = not all(g.batched for g in graphs)

    def outer_spec(name: str, tensor: TensorSpec, graph: GraphSpec) -> TensorSpec:
        shape = (1, *tensor.dims) if one_frame and graph.batched else tensor.shape
        return TensorSpec(name, tensor.dtype, shape)

    produced: dict[str, TensorSpec] = {}
    inputs: dict[str, TensorSpec] = {}
    consumed: set[str] = set()
    for step in steps:
        graph = by_role[step.role]
        for tensor in graph.inputs:
            outer = step.input_map[tensor.name]
            consumed.add(outer)
            if outer not in produced and outer not in inputs:
                inputs[outer] = outer_spec(outer, tensor, graph)
        for tensor in graph.outputs:
            if tensor.name in step.output_map:
                outer = step.output_map[tensor.name]
                produced[outer] = outer_spec(outer, tensor, graph)
    outputs = tuple(t for name, t in produced.items() if name not in consumed)
    return tuple(inputs.values()), outputs



# The built network of a multi-graph model → its graphs by role (see ModelSpec.graph_layout).
GraphCut = Callable[[nn.Module], dict[str, nn.Module]]
# An official (third-party) checkpoint into a built network: (network, checkpoint, SAM file or None).
OfficialLoader = Callable[[nn.Module, Path, "Path | None"], nn.Module]
# Trains the demo weights of the model's demo variant: (output folder, seed=...) → the training record.
DemoTrainer = Callable[..., dict]


def lazy(target: str, *extra: Any) -> Callable[..., Any]:
    """``"module:function"`` imported on first call, called with the caller's arguments then
    ``extra``: the registry names networks, loaders and trainers without importing them."""

    def call(*args: Any, **kwargs: Any) -> Any:
        module, function = target.split(":")
        return getattr(import_module(module), function)(*args, *extra, **kwargs)

    return call


@dataclass(frozen=True)
class ModelEntry:
    """Everything the export side knows about one model, in one place.

    ``build(variant)`` returns the PyTorch network. ``cut_graphs`` (multi-graph models) splits it
    into the graphs of ``spec.graph_layout``. ``load_official`` reads the published checkpoint
    format for ``build --weights FILE.pth``; ``needs_sam_checkpoint``: those weights come with a
    stock Segment Anything file (``--sam-checkpoint``). ``train_demo`` trains the demo weights.
    """

    spec: ModelSpec
    build: Callable[[str], nn.Module]
    cut_graphs: GraphCut | None = None
    load_official: OfficialLoader | None = None
    needs_sam_checkpoint: bool = False
    train_demo: DemoTrainer | None = None
