"""Loading weights into our modules with strict key and shape checking."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn


class WeightsMismatch(ValueError):
    """A checkpoint whose keys or shapes do not match the module; the message lists them."""


def check_state_dict(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Raise WeightsMismatch listing missing, unexpected and wrongly shaped keys."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(expected) & set(state)
        if tuple(state[k].shape) != tuple(expected[k].shape)
    )
    if missing or unexpected or shapes:
        parts = []
        for title, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
            if items:
                shown = "\n  ".join(items[:40]) + (f"\n  ... and {len(items) - 40} more" if len(items) > 40 else "")
                parts.append(f"{len(items)} {title} key(s):\n  {shown}")
        raise WeightsMismatch("weights do not match the module:\n" + "\n".join(parts))


def load_weights(module: nn.Module, path: Path) -> nn.Module:
    """Load a .safetensors or a plain-state-dict .pth/.pt file strictly into ``module``.

    ``.pth`` files are read with ``torch.load(weights_only=True)``: no arbitrary unpickling.
    """
    if path.suffix == ".safetensors":
        state = load_file(str(path))
    else:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise WeightsMismatch(f"{path.name}: expected a state_dict, found {type(state).__name__}")
    check_state_dict(module, state)
    module.load_state_dict(state, strict=True)
    return module
