"""SurgicalSAM class-prompted surgical-instrument segmentation (SAM encoder + prompt stage): its registry entry."""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType

from torch import nn

from export.registry.base import TISSUE, GraphSpec, ModelEntry, ModelSpec, Variant, lazy
from services.contract import Batching, Code, EnsembleStep, IntensityRule, Label, TensorSpec


def _graphs(variant: str) -> tuple[GraphSpec, ...]:
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


def _spec() -> ModelSpec:
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
        batching=Batching(max_batch_size=4, max_queue_delay_us=5000, preferred_batch_sizes=(2, 4)),
        graph_layout=_graphs,
        ensemble=(
            EnsembleStep("image_encoder", {"image": "image"}, {"image_embedding": "image_embedding"}),
            EnsembleStep(
                "prompt_decoder",
                {"image_embedding": "image_embedding", "class_ids": "class_ids"},
                {"low_res_logits": "low_res_logits", "iou": "iou"},
            ),
        ),
    )


def _cut_graphs(model: nn.Module) -> dict[str, nn.Module]:
    from export.models.surgical_sam import SamImageEncoderGraph, SurgicalSamPromptGraph

    return {"image_encoder": SamImageEncoderGraph(model.image_encoder), "prompt_decoder": SurgicalSamPromptGraph(model)}


def _load_official(model: nn.Module, checkpoint: Path, sam_checkpoint: Path | None) -> nn.Module:
    from export.checkpoints.surgical_sam import load_official_surgical_sam

    if sam_checkpoint is None:
        raise ValueError(
            "SurgicalSAM's official weights come in two files: pass the SAM image encoder file with "
            "--sam-checkpoint (e.g. sam_vit_h_4b8939.pth) next to --weights model_ckp.pth"
        )
    return load_official_surgical_sam(model, sam_checkpoint, checkpoint)  # type: ignore[arg-type]


ENTRY = ModelEntry(
    spec=_spec(),
    build=lazy("export.models.surgical_sam:build_surgical_sam", "endovis2018"),
    cut_graphs=_cut_graphs,
    load_official=_load_official,
    needs_sam_checkpoint=True,
    train_demo=lazy("export.training.surgical_sam:train_surgical_sam_demo"),
)
