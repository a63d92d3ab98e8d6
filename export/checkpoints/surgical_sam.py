"""Import the official SurgicalSAM weights: the stock SAM file plus the SurgicalSAM file.

SAM file (``sam_vit_h_4b8939.pth``): flat state_dict. Used: ``image_encoder.*`` (as is) and
``prompt_encoder.pe_layer.positional_encoding_gaussian_matrix`` (→ ``pe_layer.*``). Ignored, by
name (:data:`SAM_FILE_MAPPING`):

- ``mask_decoder.*``: SAM's own decoder, superseded by SurgicalSAM's fine-tuned copy;
- ``prompt_encoder.point_embeddings.{0..3}``, ``prompt_encoder.not_a_point_embed``,
  ``prompt_encoder.mask_downscaling.*``, ``prompt_encoder.no_mask_embed``: point/box/mask prompt
  weights SurgicalSAM never calls (point embeddings 0/1 only seeded ``pn_cls_embeddings`` at
  training time; the trained values are in the SurgicalSAM file).

SurgicalSAM file (``model_ckp.pth``): ``{"prototype_prompt_encoder_state_dict",
"sam_decoder_state_dict", "prototypes_state_dict"}`` → our ``prototype_prompt_encoder.``,
``mask_decoder.``, ``prototypes.`` prefixes.

Both files are read with ``torch.load(weights_only=True)``; the merged state is checked strictly
against the whole model (missing, unexpected and mis-shaped keys are listed in one error).
"""

from __future__ import annotations

from pathlib import Path

import torch

from export.checkpoints.manifest import KeyMapping, remap_keys
from export.models.surgical_sam import SurgicalSam
from export.weights_io import WeightsMismatch, check_state_dict

SAM_FILE_MAPPING = KeyMapping(
    rename=(
        ("image_encoder.", "image_encoder."),
        ("prompt_encoder.pe_layer.", "pe_layer."),
    ),
    ignored=(
        "mask_decoder.",
        "prompt_encoder.point_embeddings.",
        "prompt_encoder.not_a_point_embed.",
        "prompt_encoder.mask_downscaling.",
        "prompt_encoder.no_mask_embed.",
    ),
)

# Entry of the SurgicalSAM checkpoint dict → prefix of its keys in our model.
SURGICAL_FILE_PARTS: dict[str, str] = {
    "prototype_prompt_encoder_state_dict": "prototype_prompt_encoder.",
    "sam_decoder_state_dict": "mask_decoder.",
    "prototypes_state_dict": "prototypes.",
}


def _read(path: Path) -> dict:
    """torch.load with weights_only=True (a pickle of anything but tensors and containers is refused)."""
    obj = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(obj, dict):
        raise WeightsMismatch(f"{path.name}: expected a dict, found {type(obj).__name__}")
    return obj


def sam_file_to_ours(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Map the SAM file to our keys → (state, ignored official keys). Unknown keys stay as they are."""
    return remap_keys(state, SAM_FILE_MAPPING)


def surgical_file_to_ours(checkpoint: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Flatten the three-part SurgicalSAM dict under our prefixes; a missing or extra part is an error."""
    missing = sorted(set(SURGICAL_FILE_PARTS) - set(checkpoint))
    unexpected = sorted(set(checkpoint) - set(SURGICAL_FILE_PARTS))
    if missing or unexpected:
        raise WeightsMismatch(f"SurgicalSAM checkpoint parts: missing {missing}, unexpected {unexpected}")
    flat: dict[str, torch.Tensor] = {}
    for part, prefix in SURGICAL_FILE_PARTS.items():
        if not isinstance(checkpoint[part], dict):
            raise WeightsMismatch(f"SurgicalSAM checkpoint part {part!r} is not a state_dict")
        flat.update({prefix + key: value for key, value in checkpoint[part].items()})
    return flat


def load_official_surgical_sam(model: SurgicalSam, sam_checkpoint: Path, surgical_checkpoint: Path) -> SurgicalSam:
    """Load the SAM file and the SurgicalSAM file strictly into ``model``; returns ``model``.

    Raises :class:`WeightsMismatch` listing missing / unexpected / mis-shaped keys (unexpected
    SAM-file keys appear under their official names) and ``pickle.UnpicklingError`` for files
    that need more than tensors to unpickle.
    """
    sam_state, _ignored = sam_file_to_ours(_read(sam_checkpoint))
    surgical_state = surgical_file_to_ours(_read(surgical_checkpoint))
    overlap = sorted(set(sam_state) & set(surgical_state))
    if overlap:
        raise WeightsMismatch(f"keys present in both files: {overlap[:10]}")
    state = {**sam_state, **surgical_state}
    check_state_dict(model, state)
    model.load_state_dict(state, strict=True)
    return model
