"""Import the official MAST checkpoint (``Net_epoch_best.pth``, github Junqing-Yang/MAST).

The file is a plain state_dict of 698 tensors whose names already match :class:`Mast`, except ten
keys of modules the official forward never calls; they are dropped by name (listed below) and
everything else is checked strictly (missing, unexpected and mis-shaped keys are all errors).
"""

from __future__ import annotations

from pathlib import Path

import torch

from export.checkpoints.manifest import KeyMapping, remap_keys
from export.models.mast import Mast
from export.weights_io import WeightsMismatch, check_state_dict

# Keys present in the official checkpoint that no forward pass reads.
UNUSED_OFFICIAL_KEYS: tuple[str, ...] = (
    # the PVTv2 ImageNet classifier (512 → 1000)
    "encoder.head.weight",
    "encoder.head.bias",
    # a 32 → 32 linear layer built but never called
    "linear_e.weight",
    # a self-attention built inside the mixture-attention module but never called
    "MixtureCrossattention.SelfAttention.gamma",
    "MixtureCrossattention.SelfAttention.query.weight",
    "MixtureCrossattention.SelfAttention.query.bias",
    "MixtureCrossattention.SelfAttention.key.weight",
    "MixtureCrossattention.SelfAttention.key.bias",
    "MixtureCrossattention.SelfAttention.value.weight",
    "MixtureCrossattention.SelfAttention.value.bias",
)

# Official names already are ours: nothing to rename, only the unused keys to drop.
MAST_KEY_MAPPING = KeyMapping(rename=(), ignored=UNUSED_OFFICIAL_KEYS)


def official_to_ours(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the documented unused keys (those present); every other key is kept as is."""
    return remap_keys(state, MAST_KEY_MAPPING)[0]


def read_official_state(checkpoint: Path) -> dict[str, torch.Tensor]:
    """Read a plain state_dict with ``torch.load(weights_only=True)`` (no arbitrary unpickling)."""
    state = torch.load(str(checkpoint), map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        found = type(state).__name__
        raise WeightsMismatch(f"{checkpoint.name}: expected a plain state_dict of tensors, found {found}")
    return state


def load_official_mast(model: Mast, checkpoint: Path) -> Mast:
    """Load an official-format MAST checkpoint into ``model`` strictly; returns ``model``.

    Raises WeightsMismatch listing missing / unexpected / mis-shaped keys (after dropping
    :data:`UNUSED_OFFICIAL_KEYS`), and pickle.UnpicklingError for files that need more than
    tensors to unpickle.
    """
    state = official_to_ours(read_official_state(checkpoint))
    check_state_dict(model, state)
    model.load_state_dict(state, strict=True)
    return model
