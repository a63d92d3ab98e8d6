"""The medseg.json contract between export/ (writer) and services/ (reader).

``model_repository/<model>/medseg.json`` tells the service everything it needs about a model:
tensors, preprocessing, activation, labels (with coded concepts for DICOM SEG), batching,
weights provenance and the parity measured at export. The service never hard-codes a model's
numbers. Both sides use these dataclasses, so a field can only be spelt one way.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

SCHEMA_VERSION = 1
CARD_FILE = "medseg.json"

TaskKind = Literal["image2d", "volume3d", "frame_pair", "class_prompted"]
Role = str  # a graph's job inside a multi-graph model, e.g. "encoder", "pair_head"
Activation = Literal["softmax", "sigmoid"]


@dataclass(frozen=True)
class TensorSpec:
    """A named graph tensor. ``shape`` uses -1 for dynamic axes; axis 0 is the batch."""

    name: str
    dtype: str  # numpy dtype name, e.g. "float32"
    shape: tuple[int, ...]

    @property
    def dims(self) -> tuple[int, ...]:
        """Shape without the batch axis (Triton's ``dims`` when max_batch_size > 0)."""
        return self.shape[1:]


@dataclass(frozen=True)
class Code:
    """A coded concept (DICOM code sequence item): value, scheme designator, meaning."""

    value: str
    scheme: str
    meaning: str


@dataclass(frozen=True)
class Label:
    """One output label. ``category``/``type`` follow DICOM SEG's segmented property codes."""

    id: int
    name: str
    color: tuple[int, int, int]  # display RGB, 0-255
    category: Code
    type: Code


@dataclass(frozen=True)
class IntensityRule:
    """How raw pixel values become network input, per modality.

    kind "window": clip to [center - width/2, center + width/2] (modality units, e.g. HU),
    then scale to [0, 1]. kind "zscore": (x - mean) / std over the image's foreground
    (x > min), then clip to ±5. kind "range": x / ``high`` (8-bit display images), then clip
    to [0, 1].
    """

    kind: Literal["window", "zscore", "range"]
    center: float = 0.0
    width: float = 0.0
    high: float = 255.0


@dataclass(frozen=True)
class Preprocessing:
    """Preprocessing of a model's input.

    ``size`` is the network input: (rows, cols) for 2-D models, the patch (X, Y, Z) for 3-D ones. ``resize`` "letterbox": keep the physical aspect
    ratio (pixel spacing when known), scale the longest physical side to fit, pad bottom/right
    with ``pad_value``; "stretch": resize to ``size`` ignoring aspect. ``intensity`` maps a
    modality code ("CT", "MR", ...; "default" for PNG/JPEG and unlisted modalities) to a rule.
    """

    size: tuple[int, ...]
    channels: int
    resize: Literal["letterbox", "stretch"]
    intensity: dict[str, IntensityRule]
    pad_value: float = 0.0
    mean: tuple[float, ...] = ()  # per-channel (x - mean) / std after the intensity rule (e.g. ImageNet RGB)
    std: tuple[float, ...] = ()

    def rule_for(self, modality: str) -> IntensityRule:
        """The intensity rule for a modality code, falling back to "default"."""
        return self.intensity.get(modality, self.intensity["default"])


@dataclass(frozen=True)
class Region:
    """A sigmoid output channel that covers a set of labels (BraTS WT = {1, 2, 4}, TC = {1, 4}, ET = {4}).

    Label maps are painted region by region in the card's order (outermost first): every voxel
    of the region gets ``paint_label``, overwriting what an outer region painted.
    """

    name: str
    channel: int
    labels: tuple[int, ...]
    paint_label: int


@dataclass(frozen=True)
class SlidingWindow:
    """3-D sliding-window inference: ``patch`` (X, Y, Z) voxels, ``overlap`` fraction of a patch
    shared by neighbours (0 ≤ overlap < 1), Gaussian weights with sigma = ``gaussian_sigma_scale``
    × patch side (0: uniform), ``batch_size`` patches per inference call."""

    patch: tuple[int, int, int]
    overlap: float = 0.5
    gaussian_sigma_scale: float = 0.125
    batch_size: int = 2

    def __post_init__(self) -> None:
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {self.overlap}")
        if self.batch_size < 1 or any(p < 1 for p in self.patch):
            raise ValueError("patch sides and batch_size must be positive")


@dataclass(frozen=True)
class Batching:
    """Batching of the inference step: ``max_batch_size`` bounds the rows of one run in the
    worker's GraphBatcher and in Triton's dynamic batcher; the preferred sizes and the queue delay
    go to Triton's dynamic batcher (the embedded GraphBatcher never waits: it merges what queued
    while the back end was busy)."""

    max_batch_size: int
    max_queue_delay_us: int  # Triton's max_queue_delay_microseconds: how long a request may wait to fill a batch
    preferred_batch_sizes: tuple[int, ...] = ()


@dataclass(frozen=True)
class Weights:
    """Where the weights came from. kind: "official" | "demo" | "random"."""

    kind: Literal["official", "demo", "random"]
    source: str  # file name or description; never a path on the build machine
    sha256: str | None
    note: str = ""
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Parity:
    """ONNX Runtime vs PyTorch on fresh random inputs, measured at export."""

    max_abs_diff: float
    logit_range: float
    relative: float  # max_abs_diff / logit_range
    batch_sizes: tuple[int, ...]
    seed: int
    # OpenVINO (MEDSEG_BACKEND=openvino) vs PyTorch on the same inputs, relative as above, per
    # inference precision ("f32", and "bf16" where the exporting CPU has it); empty in older cards.
    openvino: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Component:
    """One ONNX graph of a multi-graph model, served as its own Triton model folder ``model``."""

    role: Role
    model: str  # Triton model (folder) name, e.g. "mast_encoder"
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    graph_file: str  # relative to the component's folder
    graph_sha256: str
    parity: Parity
    # False: shapes are full shapes (Triton max_batch_size 0), one call per frame, never merged
    # with other calls (SurgicalSAM's prompt stage: one embedding, K class ids).
    batched: bool = True


@dataclass(frozen=True)
class EnsembleStep:
    """One step of a multi-graph model: run the graph of ``role``, wiring its tensors to the
    ensemble's (Triton ``ensemble_scheduling`` semantics; unused graph outputs are left out)."""

    role: Role
    input_map: dict[str, str]  # graph input → ensemble tensor
    output_map: dict[str, str]  # graph output → ensemble tensor


@dataclass(frozen=True)
class ModelCard:
    """Everything the service reads about one deployable model (``medseg.json``)."""

    name: str
    display_name: str
    task: TaskKind
    variant: str
    version: str  # Triton version folder holding the graph
    description: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    activation: Activation
    preprocessing: Preprocessing
    labels: tuple[Label, ...]
    batching: Batching
    weights: Weights
    parity: Parity
    graph_file: str  # relative to the model folder, e.g. "1/model.onnx"
    graph_sha256: str
    regions: tuple[Region, ...] = ()  # sigmoid region outputs painted into labels (volume3d)
    channel_names: tuple[str, ...] = ()  # input channels by name (volume3d form fields, in order)
    # Multi-graph models (an ensemble folder with no graph of its own): the graphs it chains.
    components: tuple[Component, ...] = ()
    ensemble: tuple[EnsembleStep, ...] = ()  # how the components chain, in order
    sliding_window: SlidingWindow | None = None  # volume3d inference
    threshold: float = 0.5  # on sigmoid probabilities
    triton_target: str = "cpu"  # the config.pbtxt files: "cpu" python backend, "gpu" ORT + TensorRT
    schema_version: int = SCHEMA_VERSION

    def component(self, role: Role) -> Component:
        for component in self.components:
            if component.role == role:
                return component
        raise KeyError(f"{self.name} has no {role!r} graph")

    def graphs(self) -> dict[str, tuple[str, tuple[TensorSpec, ...]]]:
        """Every ONNX graph to load, by Triton model name: (graph file relative to the repository, inputs)."""
        if self.components:
            return {c.model: (f"{c.model}/{c.graph_file}", c.inputs) for c in self.components}
        return {self.name: (f"{self.name}/{self.graph_file}", self.inputs)}

    def unbatched_graphs(self) -> frozenset[str]:
        """Triton model names of the graphs that take whole calls, never merged into batches."""
        return frozenset(c.model for c in self.components if not c.batched)

    @property
    def batched(self) -> bool:
        """Whether the model itself (its Triton ensemble) has a batch axis."""
        return all(c.batched for c in self.components)

    def label_by_id(self, label_id: int) -> Label:
        for label in self.labels:
            if label.id == label_id:
                return label
        raise KeyError(label_id)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False) + "\n"


def _code(d: dict[str, Any]) -> Code:
    return Code(**d)


def _tensors(items: list[dict[str, Any]]) -> tuple[TensorSpec, ...]:
    return tuple(TensorSpec(t["name"], t["dtype"], tuple(t["shape"])) for t in items)


def _parity(d: dict[str, Any]) -> Parity:
    return Parity(**{**d, "batch_sizes": tuple(d["batch_sizes"])})


def card_from_dict(d: dict[str, Any]) -> ModelCard:
    """Parse a medseg.json dictionary (as written by ``ModelCard.to_json``)."""
    if d.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"medseg.json schema_version {d.get('schema_version')!r}, expected {SCHEMA_VERSION}")
    pre = d["preprocessing"]
    return ModelCard(
        name=d["name"],
        display_name=d["display_name"],
        task=d["task"],
        variant=d["variant"],
        version=str(d["version"]),
        description=d["description"],
        inputs=_tensors(d["inputs"]),
        outputs=_tensors(d["outputs"]),
        activation=d["activation"],
        preprocessing=Preprocessing(
            size=tuple(pre["size"]),
            channels=pre["channels"],
            resize=pre["resize"],
            intensity={k: IntensityRule(**v) for k, v in pre["intensity"].items()},
            pad_value=pre.get("pad_value", 0.0),
            mean=tuple(pre.get("mean", ())),
            std=tuple(pre.get("std", ())),
        ),
        labels=tuple(
            Label(l["id"], l["name"], tuple(l["color"]), _code(l["category"]), _code(l["type"]))
            for l in d["labels"]
        ),
        batching=Batching(
            max_batch_size=d["batching"]["max_batch_size"],
            max_queue_delay_us=d["batching"]["max_queue_delay_us"],
            preferred_batch_sizes=tuple(d["batching"].get("preferred_batch_sizes", ())),
        ),
        weights=Weights(**d["weights"]),
        parity=_parity(d["parity"]),
        graph_file=d["graph_file"],
        graph_sha256=d["graph_sha256"],
        regions=tuple(
            Region(r["name"], r["channel"], tuple(r["labels"]), r["paint_label"]) for r in d.get("regions", ())
        ),
        sliding_window=(
            SlidingWindow(**{**d["sliding_window"], "patch": tuple(d["sliding_window"]["patch"])})
            if d.get("sliding_window")
            else None
        ),
        threshold=float(d.get("threshold", 0.5)),
        channel_names=tuple(d.get("channel_names", ())),
        components=tuple(
            Component(
                c["role"], c["model"], _tensors(c["inputs"]), _tensors(c["outputs"]), c["graph_file"],
                c["graph_sha256"], _parity(c["parity"]), bool(c.get("batched", True)),
            )
            for c in d.get("components", ())
        ),
        ensemble=tuple(EnsembleStep(e["role"], dict(e["input_map"]), dict(e["output_map"])) for e in d.get("ensemble", ())),
        triton_target=d.get("triton_target", "cpu"),
    )


def load_card(model_dir: Path) -> ModelCard:
    """Read ``<model_dir>/medseg.json``."""
    return card_from_dict(json.loads((model_dir / CARD_FILE).read_text()))


def discover_cards(repository: Path) -> dict[str, ModelCard]:
    """All models of a repository that carry a medseg.json, by name (sorted)."""
    cards = {}
    for card_path in sorted(repository.glob(f"*/{CARD_FILE}")):
        card = load_card(card_path.parent)
        cards[card.name] = card
    return cards
