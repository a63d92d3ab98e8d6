"""The registry of deployable models: one module per model (its spec and variants, builder,
graph cut, official-checkpoint loader and demo trainer), assembled here.

A fifth model: its ``nn.Module`` under ``export/models/``, one module here defining ``ENTRY``
(a :class:`~export.registry.base.ModelEntry`), and its name in ``_MODULES`` (plus a pipeline in
``services/pipelines/`` if its task kind is new). The build, the repository writer and the
registry-wide tests iterate over ``REGISTRY``.
"""

from __future__ import annotations

from importlib import import_module

from export.registry.base import WEIGHTS_DIR, ModelEntry, ModelSpec

_MODULES = ("swtr_unet", "hnf_net", "mast", "surgical_sam")

REGISTRY: dict[str, ModelEntry] = {}
for _module in _MODULES:
    _entry: ModelEntry = import_module(f"export.registry.{_module}").ENTRY
    REGISTRY[_entry.spec.name] = _entry


def get_entry(name: str) -> ModelEntry:
    if name not in REGISTRY:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def get_spec(name: str) -> ModelSpec:
    return get_entry(name).spec


__all__ = ["REGISTRY", "WEIGHTS_DIR", "ModelEntry", "ModelSpec", "get_entry", "get_spec"]
