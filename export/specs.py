"""Registry of deployable models: one frozen ``ModelSpec`` per model and a dict of builders.

A new model plugs in by adding one spec to ``MODEL_SPECS`` and one builder to ``MODEL_BUILDERS``;
the build command, the repository writer and the tests all iterate over these dicts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

from torch import nn

from export.models.hnf_net import INPUT_MODALITIES

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

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

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

    Single-graph models export ``MODEL_BUILDERS[name](variant)`` as one graph with ``input_name``
    → ``output_name``. Multi-graph models set ``graph_layout`` (the graphs of a variant) and
    ``ensemble`` (how Triton chains them); ``MODEL_GRAPHS[name]`` cuts the built network into
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


def _swtr_unet_spec() -> ModelSpec:
    # Window and scale chosen by us (the paper does not state it): liver window 60 / 400 HU.
    return ModelSpec(
        name="swtr_unet",
        display_name="SWTR-Unet-like liver and liver-lesion segmentation (CT/MRI slices)",
        task="image2d",
        description=(
            "TransUNet-pattern reading of SWTR-Unet (Hille et al., CMPB 2023): ResNet-50 stem and "
            "stages to 1/16, 12 transformer layers (768 wide), U-Net decoder with skips at 1/8, 1/4, "
            "1/2; softmax over background, liver, lesion (LiTS convention). Depths, widths, input size "
            "and normalisation are our choices: the paper's are not public."
        ),
        input_name="image",
        output_name="logits",
        in_channels=1,
        activation="softmax",
        intensity=MappingProxyType(
            {
                "CT": IntensityRule("window", center=60.0, width=400.0),
                "MR": IntensityRule("zscore"),
                "default": IntensityRule("range", high=255.0),
            }
        ),
        resize="letterbox",
        labels=(
            Label(0, "background", (0, 0, 0), TISSUE, Code("260787004", "SCT", "Physical object")),
            Label(1, "liver", (221, 130, 101), ANATOMICAL_STRUCTURE, Code("10200004", "SCT", "Liver")),
            Label(2, "liver lesion", (255, 255, 0), MORPHOLOGICALLY_ALTERED, Code("52988006", "SCT", "Lesion")),
        ),
        variants=MappingProxyType(
            {
                "paper": Variant("paper", (512, 512), "ResNet-50 to 1/16 + 12 x 768 transformer + U-Net decoder"),
                "small": Variant(
                    "small", (256, 256), "same structure, narrow and shallow", "swtr_unet_small_demo.safetensors"
                ),
            }
        ),
        batching=Batching(max_batch_size=8, max_latency_ms=1000, preferred_batch_sizes=(4, 8)),
    )


def _hnf_net_spec() -> ModelSpec:
    tumour = MORPHOLOGICALLY_ALTERED
    return ModelSpec(
        name="hnf_net",
        display_name="HNF-Net-like brain tumour segmentation (BraTS, multi-modal MRI volumes)",
        task="volume3d",
        description=(
            "Our reading of HNF-Net (Jia et al., BraTS 2020/2021; no public code): HRNet-style 3-D trunk "
            "with parallel branches at 1/2..1/8 (1/16 in paper), all-to-all fusion after each stage, "
            "EMA attention (64 bases, 3 iterations) on the fused high-resolution features; inputs T1, "
            "T1ce, T2, FLAIR z-scored over brain voxels; 3 sigmoid regions WT, TC, ET painted into BraTS "
            "2018-2021 labels 2, 1, 4; Gaussian-weighted sliding-window inference."
        ),
        input_name="image",
        output_name="logits",
        in_channels=4,
        channel_names=INPUT_MODALITIES,
        activation="sigmoid",
        intensity=MappingProxyType({"default": IntensityRule("zscore")}),
        resize="stretch",  # unused: volumes keep their grid; the sliding window covers any size
        labels=(
            Label(0, "background", (0, 0, 0), TISSUE, Code("260787004", "SCT", "Physical object")),
            Label(1, "necrotic and non-enhancing tumour core", (255, 60, 60), tumour, Code("6574001", "SCT", "Necrosis")),
            Label(2, "peritumoural edema", (60, 220, 60), tumour, Code("79654002", "SCT", "Edema")),
            Label(4, "enhancing tumour", (255, 230, 0), tumour, Code("108369006", "SCT", "Neoplasm")),
        ),
        regions=(
            Region("WT", 0, (1, 2, 4), 2),
            Region("TC", 1, (1, 4), 1),
            Region("ET", 2, (4,), 4),
        ),
        variants=MappingProxyType(
            {
                "paper": Variant("paper", (128, 128, 128), "4 branches to 1/16, width 32, 128^3 patches"),
                "small": Variant(
                    "small", (64, 64, 64), "3 branches to 1/8, width 8, 64^3 patches", "hnf_net_small_demo.safetensors"
                ),
            }
        ),
        batching=Batching(max_batch_size=4, max_latency_ms=1000, preferred_batch_sizes=(2, 4)),
    )


def _mast_graphs(variant: str) -> tuple[GraphSpec, ...]:
    from export.models.mast import FRAME_FEATURE_NAMES, MAST_CONFIGS, PAIR_HEAD_INPUT_NAMES

    cfg = MAST_CONFIGS[variant]
    size, c = cfg.input_size, cfg.channel
    feature_shapes = [(-1, c, size // stride, size // stride) for stride in (8, 16, 32)]
    features = tuple(TensorSpec(n, "float32", shape) for n, shape in zip(FRAME_FEATURE_NAMES, feature_shapes))
    head_inputs = tuple(
        TensorSpec(n, "float32", shape) for n, shape in zip(PAIR_HEAD_INPUT_NAMES, (*feature_shapes, feature_shapes[2]))
    )
    return (
        GraphSpec("encoder", (TensorSpec("frame", "float32", (-1, 3, size, size)),), features),
        GraphSpec("pair_head", head_inputs, (TensorSpec("logits", "float32", (-1, 1, size, size)),)),
    )


def _mast_spec() -> ModelSpec:
    return ModelSpec(
        name="mast",
        display_name="MAST video polyp segmentation (colonoscopy frame pairs)",
        task="frame_pair",
        description=(
            "MAST (Chen et al.): shared PVTv2 encoder on an anchor and a reference frame, RFB blocks, "
            "mixture attention on stage-4 maps, neighbour-connection decoder and reverse-attention "
            "stages; the anchor's S_3 map as one sigmoid channel. Served as two graphs, a per-frame "
            "encoder and a pair head, so a stream encodes each frame once; without a reference the "
            "frame is its own reference (the paper's test protocol)."
        ),
        input_name="anchor",
        output_name="logits",
        in_channels=3,
        activation="sigmoid",
        intensity=MappingProxyType({"default": IntensityRule("range", high=255.0)}),
        resize="stretch",
        mean=(0.485, 0.456, 0.406),  # ImageNet RGB, as the PVTv2 backbone was trained
        std=(0.229, 0.224, 0.225),
        labels=(
            Label(0, "background", (0, 0, 0), TISSUE, Code("260787004", "SCT", "Physical object")),
            Label(1, "polyp", (0, 255, 128), MORPHOLOGICALLY_ALTERED, Code("68496003", "SCT", "Polyp of colon")),
        ),
        regions=(Region("polyp", 0, (1,), 1),),
        variants=MappingProxyType(
            {
                "paper": Variant("paper", (352, 352), "PVTv2-b2 encoder, 352x352 frames"),
                "small": Variant(
                    "small", (224, 224), "PVTv2 with one or two blocks per stage, 224x224 frames", "mast_small_demo.safetensors"
                ),
            }
        ),
        batching=Batching(max_batch_size=8, max_latency_ms=1000, preferred_batch_sizes=(4, 8)),
        graph_layout=_mast_graphs,
        ensemble=(
            EnsembleStep(
                "encoder", {"frame": "anchor"}, {"feat2": "feat2_a", "feat3": "feat3_a", "feat4": "feat4_a"}
            ),
            EnsembleStep("encoder", {"frame": "reference"}, {"feat4": "feat4_r"}),
            EnsembleStep(
                "pair_head",
                {n: n for n in ("feat2_a", "feat3_a", "feat4_a", "feat4_r")},
                {"logits": "logits"},
            ),
        ),
    )


def _surgical_sam_graphs(variant: str) -> tuple[GraphSpec, ...]:
    from export.models.sam import EMBED_DIM
    from export.models.surgical_sam import SURGICAL_SAM_CONFIGS

    cfg = SURGICAL_SAM_CONFIGS[variant]
    size, grid = cfg.image_size, cfg.grid
    return (
        GraphSpec(
            "image_encoder",
            (TensorSpec("image", "float32", (-1, 3, size, size)),),
            (TensorSpec("image_embedding", "float32", (-1, EMBED_DIM, grid, grid)),),
        ),
        GraphSpec(
            "prompt_decoder",
            (
                TensorSpec("image_embedding", "float32", (1, EMBED_DIM, grid, grid)),
                TensorSpec("class_ids", "int64", (-1,)),
            ),
            (
                TensorSpec("low_res_logits", "float32", (-1, 1, 4 * grid, 4 * grid)),
                TensorSpec("iou", "float32", (-1, 1)),
            ),
            batched=False,
        ),
    )


# EndoVis2018 instrument types have no SNOMED CT codes we could verify, so their type codes use a
# private coding scheme ("99" prefix, as DICOM PS3.16 allows for local schemes).
_PHYSICAL_OBJECT = Code("260787004", "SCT", "Physical object")
_INSTRUMENT_COLOURS = (
    (0, 114, 255), (255, 128, 0), (0, 200, 80), (230, 30, 200), (255, 230, 0), (0, 220, 220), (160, 90, 255),
)


def _surgical_sam_spec() -> ModelSpec:
    from export.models.surgical_sam import SURGICAL_DATASETS

    names = SURGICAL_DATASETS["endovis2018"].class_names
    instruments = tuple(
        Label(i, name.lower(), colour, _PHYSICAL_OBJECT, Code(f"ENDOVIS18-{i}", "99MEDSEG", name))
        for i, (name, colour) in enumerate(zip(names, _INSTRUMENT_COLOURS), start=1)
    )
    return ModelSpec(
        name="surgical_sam",
        display_name="SurgicalSAM surgical instrument segmentation (endoscopic video frames, EndoVis2018 classes)",
        task="class_prompted",
        description=(
            "SurgicalSAM (Yue et al., AAAI 2024): frozen SAM image encoder; for each prompted instrument "
            "class, a prototype-based class prompt encoder (7 learnable prototypes, nt = 2 tokens per class "
            "for EndoVis2018) feeds SAM's fine-tuned mask decoder; mask 0 and its predicted IoU per class, "
            "masks merged in ascending predicted-IoU order. Served as two graphs: the image encoder (once "
            "per frame) and the prompt stage (all requested classes of a frame in one call)."
        ),
        input_name="image",
        output_name="low_res_logits",
        in_channels=3,
        activation="sigmoid",
        intensity=MappingProxyType({"default": IntensityRule("range", high=255.0)}),
        resize="letterbox",  # SAM: longest side to the encoder size, top-left, zero padding after normalisation
        mean=(0.485, 0.456, 0.406),  # SAM's pixel mean/std (123.675, 116.28, 103.53)/255, (58.395, 57.12, 57.375)/255
        std=(0.229, 0.224, 0.225),
        labels=(Label(0, "background", (0, 0, 0), TISSUE, Code("260787004", "SCT", "Physical object")), *instruments),
        variants=MappingProxyType(
            {
                "paper": Variant("paper", (1024, 1024), "SAM ViT-H encoder (1024x1024 -> 64x64), as published"),
                "vit_l": Variant("vit_l", (1024, 1024), "SAM ViT-L encoder, same prompt stage"),
                "vit_b": Variant("vit_b", (1024, 1024), "SAM ViT-B encoder, same prompt stage"),
                "small": Variant(
                    "small", (256, 256), "4-block ViT encoder at 256x256 -> 16x16, same prompt stage",
                    "surgical_sam_small_demo.safetensors",
                ),
            }
        ),
        batching=Batching(max_batch_size=4, max_latency_ms=1000, preferred_batch_sizes=(2, 4)),
        graph_layout=_surgical_sam_graphs,
        ensemble=(
            EnsembleStep("image_encoder", {"image": "image"}, {"image_embedding": "image_embedding"}),
            EnsembleStep(
                "prompt_decoder",
                {"image_embedding": "image_embedding", "class_ids": "class_ids"},
                {"low_res_logits": "low_res_logits", "iou": "iou"},
            ),
        ),
    )


MODEL_SPECS: dict[str, ModelSpec] = {
    spec.name: spec for spec in (_swtr_unet_spec(), _hnf_net_spec(), _mast_spec(), _surgical_sam_spec())
}


def _build_swtr_unet(variant: str) -> nn.Module:
    from export.models.swtr_unet import build_swtr_unet

    return build_swtr_unet(variant)


def _build_hnf_net(variant: str) -> nn.Module:
    from export.models.hnf_net import build_hnf_net

    return build_hnf_net(variant)


def _build_mast(variant: str) -> nn.Module:
    from export.models.mast import build_mast

    return build_mast(variant)


def _build_surgical_sam(variant: str) -> nn.Module:
    from export.models.surgical_sam import build_surgical_sam

    return build_surgical_sam(variant, "endovis2018")


def _mast_graph_modules(model: nn.Module) -> dict[str, nn.Module]:
    from export.models.mast import MastFrameEncoderGraph, MastPairHeadGraph

    return {"encoder": MastFrameEncoderGraph(model), "pair_head": MastPairHeadGraph(model)}


MODEL_BUILDERS: dict[str, Callable[[str], nn.Module]] = {
    "swtr_unet": _build_swtr_unet,
    "hnf_net": _build_hnf_net,
    "mast": _build_mast,
    "surgical_sam": _build_surgical_sam,
}
def _load_official_mast(model: nn.Module, checkpoint: Path, sam_checkpoint: Path | None) -> nn.Module:
    from export.checkpoints.mast import load_official_mast

    return load_official_mast(model, checkpoint)  # type: ignore[arg-type]


def _load_official_surgical_sam(model: nn.Module, checkpoint: Path, sam_checkpoint: Path | None) -> nn.Module:
    from export.checkpoints.surgical_sam import load_official_surgical_sam

    if sam_checkpoint is None:
        raise ValueError(
            "SurgicalSAM's official weights come in two files: pass the SAM image encoder file with "
            "--sam-checkpoint (e.g. sam_vit_h_4b8939.pth) next to --weights model_ckp.pth"
        )
    return load_official_surgical_sam(model, sam_checkpoint, checkpoint)  # type: ignore[arg-type]


# Official (third-party) checkpoint formats, for `build --weights FILE.pth` (SurgicalSAM also
# needs `--sam-checkpoint`); others load our own state-dict format strictly
# (export.weights_io.load_weights).
OFFICIAL_LOADERS: dict[str, Callable[[nn.Module, Path, Path | None], nn.Module]] = {
    "mast": _load_official_mast,
    "surgical_sam": _load_official_surgical_sam,
}
# Models whose official weights include a stock Segment Anything file (`--sam-checkpoint`).
SAM_CHECKPOINT_MODELS = frozenset({"surgical_sam"})
# Multi-graph models: the built network → its graphs by role (see ModelSpec.graph_layout).
def _surgical_sam_graph_modules(model: nn.Module) -> dict[str, nn.Module]:
    from export.models.surgical_sam import SamImageEncoderGraph, SurgicalSamPromptGraph

    return {"image_encoder": SamImageEncoderGraph(model.image_encoder), "prompt_decoder": SurgicalSamPromptGraph(model)}


MODEL_GRAPHS: dict[str, Callable[[nn.Module], dict[str, nn.Module]]] = {
    "mast": _mast_graph_modules,
    "surgical_sam": _surgical_sam_graph_modules,
}


def get_spec(name: str) -> ModelSpec:
    if name not in MODEL_SPECS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(MODEL_SPECS)}")
    return MODEL_SPECS[name]
