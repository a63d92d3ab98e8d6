"""Key/shape manifests of official checkpoints and their comparison with our modules.

A manifest is JSON ``{key: [shape...]}`` (names and shapes only, no values), dumped from the
official code's modules. A :class:`KeyMapping` documents how official keys become ours: prefix
renames, plus official prefixes that are deliberately not loaded. Comparing a manifest with a
module checks that the mapped keys are exactly the module's state-dict keys, shape for shape.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn

from export.weights_io import check_state_dict

T = TypeVar("T")
Manifest = dict[str, list[int]]


@dataclass(frozen=True)
class KeyMapping:
    """Official → our key rules.

    ``rename``: (official prefix, our prefix) pairs, the first match wins; ``ignored``: official
    prefixes (or whole keys) known and deliberately not loaded, applied to keys no rename
    matched. A key matching neither is kept under its official name, so a strict check reports
    it as unexpected.
    """

    rename: tuple[tuple[str, str], ...]
    ignored: tuple[str, ...] = ()


def remap_keys(state: Mapping[str, T], mapping: KeyMapping) -> tuple[dict[str, T], list[str]]:
    """Apply ``mapping`` → (state under our names, sorted list of the ignored official keys)."""
    mapped: dict[str, T] = {}
    ignored: list[str] = []
    for key, value in state.items():
        rule = next(((old, new) for old, new in mapping.rename if key.startswith(old)), None)
        if rule is not None:
            mapped[rule[1] + key[len(rule[0]) :]] = value
        elif mapping.ignored and key.startswith(mapping.ignored):
            ignored.append(key)
        else:
            mapped[key] = value
    return mapped, sorted(ignored)


def state_dict_manifest(state: Mapping[str, torch.Tensor]) -> Manifest:
    """{key: shape} of a state dict (works for meta tensors), sorted by key."""
    return {key: list(state[key].shape) for key in sorted(state)}


def _to_json(obj: object, depth: int = 0) -> str:
    """JSON with one key per line and each shape list on its key's line."""
    if not isinstance(obj, Mapping):
        return json.dumps(obj)
    pad = " " * (depth + 1)
    items = ",\n".join(f"{pad}{json.dumps(k)}: {_to_json(v, depth + 1)}" for k, v in obj.items())
    return "{\n" + items + "\n" + " " * depth + "}"


def write_manifest(manifest: Mapping[str, object], path: Path) -> None:
    """Write a manifest (or a dict of manifests, for multi-part checkpoints) as JSON."""
    path.write_text(_to_json(manifest) + "\n")


def read_manifest(path: Path) -> dict:
    """Read a manifest written by :func:`write_manifest`."""
    return json.loads(path.read_text())


def meta_state(manifest: Mapping[str, list[int]]) -> dict[str, torch.Tensor]:
    """Shape-only stand-in tensors (``meta`` device) for a manifest."""
    return {key: torch.empty(shape, device="meta") for key, shape in manifest.items()}


def compare_manifest(manifest: Mapping[str, list[int]], module: nn.Module, mapping: KeyMapping) -> list[str]:
    """Check that ``module`` consumes exactly the manifest's keys and shapes through ``mapping``.

    Raises :class:`export.weights_io.WeightsMismatch` listing missing / unexpected / mis-shaped
    keys; returns the official keys that the mapping ignores.
    """
    mapped, ignored = remap_keys(meta_state(manifest), mapping)
    check_state_dict(module, mapped)
    return ignored
