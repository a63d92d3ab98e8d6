"""SurgicalSAM (Yue et al., AAAI 2024): SAM encoder, prototype-based class prompts, SAM decoder.

Pipeline: frozen SAM image encoder → image embedding (1, 256, h, w); for each requested class,
the prototype prompt encoder turns the embedding and 7 learnable class prototypes into a dense
prompt (256, h, w) and 7·nt sparse tokens; the (fine-tuned) SAM mask decoder returns mask 0 of
its low-res logits (4h, 4w) and its IoU prediction. All K requested classes of a frame go through
the decoder in one call (batch K); this equals the per-class loop of the official code.

Names match the official checkpoint parts (``prototype_prompt_encoder.*``,
``mask_decoder.*``, ``prototypes.class_embeddings.weight``) and the SAM file
(``image_encoder.*``, ``pe_layer.positional_encoding_gaussian_matrix``); see
:mod:`export.checkpoints.surgical_sam` for the mapping.

Serving is two ONNX graphs: :class:`SamImageEncoderGraph` (run once per frame) and
:class:`SurgicalSamPromptGraph` (embedding + requested class ids → per-class logits and IoU).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from export.models.sam import (
    EMBED_DIM,
    SAM_ENCODER_CONFIGS,
    MaskDecoder,
    PositionEmbeddingRandom,
    SamImageEncoder,
)

NUM_CLASSES = 7  # instrument classes; 0 is background and never prompted


@dataclass(frozen=True)
class SurgicalDataset:
    """Dataset-specific facts: sparse tokens per class and class names (ids 1..7)."""

    num_tokens: int
    class_names: tuple[str, ...]


SURGICAL_DATASETS: dict[str, SurgicalDataset] = {
    "endovis2018": SurgicalDataset(
        num_tokens=2,
        class_names=(
            "Bipolar Forceps",
            "Prograsp Forceps",
            "Large Needle Driver",
            "Monopolar Curved Scissors",
            "Ultrasound Probe",
            "Suction Instrument",
            "Clip Applier",
        ),
    ),
    "endovis2017": SurgicalDataset(
        num_tokens=4,
        class_names=(
            "Bipolar Forceps",
            "Prograsp Forceps",
            "Large Needle Driver",
            "Vessel Sealer",
            "Grasping Retractor",
            "Monopolar Curved Scissors",
            "Others",
        ),
    ),
}


@dataclass(frozen=True)
class SurgicalSamConfig:
    """One size: the SAM encoder config name plus the prompt-encoder widths (the decoder is SAM's)."""

    encoder: str
    dense_hidden: int = 128
    sparse_hidden: int = 128

    @property
    def grid(self) -> int:
        """Image-embedding side (64 for vit_h at 1024², 16 for ``small`` at 256²)."""
        return SAM_ENCODER_CONFIGS[self.encoder].grid

    @property
    def image_size(self) -> int:
        """Square encoder input side."""
        return SAM_ENCODER_CONFIGS[self.encoder].img_size


SURGICAL_SAM_CONFIGS: dict[str, SurgicalSamConfig] = {
    "paper": SurgicalSamConfig(encoder="vit_h"),  # the published model
    # The same prompt stage on the lighter SAM encoders (1024² → 64², so the prompt encoder's
    # shapes are unchanged); SurgicalSAM weights for them must come from your own training.
    "vit_l": SurgicalSamConfig(encoder="vit_l"),
    "vit_b": SurgicalSamConfig(encoder="vit_b"),
    "small": SurgicalSamConfig(encoder="small"),
}


def class_activated_features(features: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """features (1, HW, C), prototypes (P, C) → (P, HW, C): f + f·sim with sim = f · prototype."""
    sim = torch.matmul(features, prototypes.t()).transpose(1, 2).unsqueeze(-1)  # (1, P, HW, 1)
    feat = features.unsqueeze(1)  # (1, 1, HW, C)
    return (feat + feat * sim).squeeze(0)


def one_hot_classes(class_ids: torch.Tensor, num_classes: int, dtype: torch.dtype) -> torch.Tensor:
    """1-based ids (K,) → (K, num_classes) one-hot by comparison (exports as Equal, not NonZero)."""
    classes = torch.arange(1, num_classes + 1, device=class_ids.device)
    return (class_ids.unsqueeze(1) == classes.unsqueeze(0)).to(dtype)


class PrototypePromptEncoder(nn.Module):
    """Prototype-based class prompt encoder (official ``Prototype_Prompt_Encoder``).

    ``forward(features (1, HW, C), prototypes (7, C), class_ids (K,))`` → dense (K, C, h, w) and
    sparse (K, 7·nt, C). ``pn_cls_embeddings`` [0] negative, [1] positive, (nt, C) each, frozen
    (upstream initialises them from SAM's point embeddings 0/1 and never trains them).
    """

    def __init__(
        self, grid: int, num_tokens: int, dim: int = EMBED_DIM, dense_hidden: int = 128, sparse_hidden: int = 128
    ) -> None:
        super().__init__()
        self.grid = grid
        self.num_tokens = num_tokens
        self.dense_fc_1 = nn.Conv2d(dim, dense_hidden, 1)
        self.dense_fc_2 = nn.Conv2d(dense_hidden, dim, 1)
        self.relu = nn.ReLU()
        self.sparse_fc_1 = nn.Conv1d(grid * grid, sparse_hidden, 1)  # positions as channels
        self.sparse_fc_2 = nn.Conv1d(sparse_hidden, num_tokens, 1)
        self.pn_cls_embeddings = nn.ModuleList(nn.Embedding(num_tokens, dim) for _ in range(2))
        self.pn_cls_embeddings.requires_grad_(False)

    def forward(
        self, features: torch.Tensor, prototypes: torch.Tensor, class_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        activated = class_activated_features(features, prototypes)  # (7, HW, C)
        num_classes, _, c = activated.shape
        # Dense prompt: the requested class's activated features as a map.
        chosen = activated.index_select(0, class_ids - 1)  # (K, HW, C)
        dense_in = chosen.transpose(1, 2).reshape(-1, c, self.grid, self.grid)
        dense = self.dense_fc_2(self.relu(self.dense_fc_1(dense_in)))  # (K, C, h, w)
        # Sparse prompts for all classes (independent of the request), then +/- class embeddings.
        sparse = self.sparse_fc_2(self.relu(self.sparse_fc_1(activated)))  # (7, nt, C)
        one_hot = one_hot_classes(class_ids, num_classes, sparse.dtype)[:, :, None, None]  # (K, 7, 1, 1)
        positive = self.pn_cls_embeddings[1].weight.detach()
        negative = self.pn_cls_embeddings[0].weight.detach()
        sparse = sparse.unsqueeze(0) + positive * one_hot + negative * (1 - one_hot)  # (K, 7, nt, C)
        return dense, sparse.reshape(-1, num_classes * self.num_tokens, c)


class LearnablePrototypes(nn.Module):
    """Class prototypes ``class_embeddings`` (7, 256); ``forward()`` returns the table."""

    def __init__(self, num_classes: int = NUM_CLASSES, dim: int = EMBED_DIM) -> None:
        super().__init__()
        self.class_embeddings = nn.Embedding(num_classes, dim)

    def forward(self) -> torch.Tensor:
        return self.class_embeddings.weight


def prompt_and_decode(
    parts: SurgicalSam | SurgicalSamPromptGraph, image_embedding: torch.Tensor, class_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt the decoder with K classes at once, using ``parts``' pe_layer, prototype prompt
    encoder, prototypes and mask decoder.

    image_embedding (1, 256, h, w), 1-based class_ids (K,) int64 → mask-0 low-res logits
    (K, 1, 4h, 4w) and IoU predictions (K, 1). Ids must lie in 1..7: the caller validates them
    (an exported Gather would wrap id 0 to class 7 rather than fail).
    """
    grid = parts.prototype_prompt_encoder.grid  # static: the sparse head has grid² input channels
    features = image_embedding.flatten(2).transpose(1, 2)  # (1, HW, C), row-major positions
    dense, sparse = parts.prototype_prompt_encoder(features, parts.prototypes(), class_ids)
    masks, iou = parts.mask_decoder(image_embedding, parts.pe_layer(grid, grid), sparse, dense)
    return masks[:, :1], iou[:, :1]


class SurgicalSam(nn.Module):
    """Full SurgicalSAM: ``forward(image (1, 3, S, S), class_ids (K,))`` → logits (K, 1, 4h, 4w), IoU (K, 1)."""

    def __init__(self, config: SurgicalSamConfig, num_tokens: int) -> None:
        super().__init__()
        self.config = config
        self.image_encoder = SamImageEncoder(SAM_ENCODER_CONFIGS[config.encoder])
        self.pe_layer = PositionEmbeddingRandom()
        self.prototype_prompt_encoder = PrototypePromptEncoder(
            config.grid, num_tokens, EMBED_DIM, config.dense_hidden, config.sparse_hidden
        )
        self.mask_decoder = MaskDecoder()
        self.prototypes = LearnablePrototypes()

    def predict(self, image_embedding: torch.Tensor, class_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """See :func:`prompt_and_decode`."""
        return prompt_and_decode(self, image_embedding, class_ids)

    def forward(self, image: torch.Tensor, class_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.predict(self.image_encoder(image), class_ids)


def tunable_parameter_count(model: SurgicalSam) -> int:
    """Parameters SurgicalSAM trains: prototype prompt encoder (less the frozen ±embeddings), prototypes, decoder."""
    parts = (model.prototype_prompt_encoder, model.prototypes, model.mask_decoder)
    return sum(p.numel() for part in parts for p in part.parameters() if p.requires_grad)


def build_surgical_sam(variant: str, dataset: str = "endovis2018") -> SurgicalSam:
    """``paper`` (SAM ViT-H encoder, 1024² → 64²), ``vit_l``, ``vit_b`` or ``small`` (256² → 16²); nt from the dataset."""
    return SurgicalSam(SURGICAL_SAM_CONFIGS[variant], SURGICAL_DATASETS[dataset].num_tokens)


# ----------------------------------------------------------------------------- serving graphs


class SamImageEncoderGraph(nn.Module):
    """ONNX graph 1: ``image`` (B, 3, S, S) float32, already normalised → ``image_embedding`` (B, 256, S/16, S/16)."""

    input_names = ("image",)
    output_names = ("image_embedding",)
    dynamic_axes = {"image": {0: "batch"}, "image_embedding": {0: "batch"}}

    def __init__(self, encoder: SamImageEncoder) -> None:
        super().__init__()
        self.encoder = encoder

    def example_inputs(self, batch: int = 1) -> tuple[torch.Tensor]:
        size = self.encoder.config.img_size
        return (torch.zeros(batch, 3, size, size),)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.encoder(image)


class SurgicalSamPromptGraph(nn.Module):
    """ONNX graph 2: ``image_embedding`` (1, 256, h, w), ``class_ids`` (K,) int64 1-based
    → ``low_res_logits`` (K, 1, 4h, 4w) (decoder mask 0), ``iou`` (K, 1). K is dynamic.

    The dense PE is computed in the graph from the loaded Gaussian buffer on the static grid; it
    depends on no input, so runtimes constant-fold it when the session is built.
    """

    input_names = ("image_embedding", "class_ids")
    output_names = ("low_res_logits", "iou")
    dynamic_axes = {"class_ids": {0: "classes"}, "low_res_logits": {0: "classes"}, "iou": {0: "classes"}}

    def __init__(self, model: SurgicalSam) -> None:
        super().__init__()
        self.pe_layer = model.pe_layer
        self.prototype_prompt_encoder = model.prototype_prompt_encoder
        self.mask_decoder = model.mask_decoder
        self.prototypes = model.prototypes
        self.grid = model.config.grid

    def example_inputs(self, class_ids: tuple[int, ...] = (1, 3, 5)) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.zeros(1, EMBED_DIM, self.grid, self.grid), torch.tensor(class_ids, dtype=torch.int64)

    def random_inputs(self, rng: np.random.Generator, batch: int) -> tuple[np.ndarray, np.ndarray]:
        """Parity inputs: a uniform [0, 1) embedding and 2·batch + 1 distinct class ids (at most 7)."""
        count = min(NUM_CLASSES, 2 * batch + 1)
        ids = np.sort(rng.choice(np.arange(1, NUM_CLASSES + 1), size=count, replace=False)).astype(np.int64)
        return rng.random((1, EMBED_DIM, self.grid, self.grid), dtype=np.float32), ids

    def forward(self, image_embedding: torch.Tensor, class_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return prompt_and_decode(self, image_embedding, class_ids)
