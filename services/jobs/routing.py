"""Which model segments a received series: the routing file (``MEDSEG_ROUTES``; the default is
``default_routes.json`` beside this module, whose ``_comment`` documents the format)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from services.jobs.store import Placement

DEFAULT_ROUTES = Path(__file__).resolve().parent / "default_routes.json"


@dataclass(frozen=True)
class Route:
    name: str
    model: str
    match: tuple[tuple[str, tuple[re.Pattern[str], ...]], ...]  # (attribute keyword, patterns)
    channels: tuple[tuple[str, tuple[re.Pattern[str], ...]], ...] = ()  # (channel, patterns), tried in order
    channel_attributes: tuple[str, ...] = ("SeriesDescription", "ProtocolName")

    def place(self, header: Dataset) -> Placement | None:
        """The placement of an instance with this header, or None when the route does not fit it."""
        if not all(any(p.search(_text(header, keyword)) for p in patterns) for keyword, patterns in self.match):
            return None
        if not self.channels:
            return Placement(self.name, self.model)
        # The first attribute that names a channel decides (a series' own description before an
        # exam-level protocol name shared by every series of the study).
        for keyword in self.channel_attributes:
            text = _text(header, keyword)
            for channel, patterns in self.channels:
                if text and any(p.search(text) for p in patterns):
                    return Placement(self.name, self.model, channel)
        return None


def _text(header: Dataset, keyword: str) -> str:
    value = header.get(keyword, "")
    return "\\".join(str(v) for v in value) if isinstance(value, Sequence) and not isinstance(value, str) else str(value)


def _patterns(value: Any, where: str) -> tuple[re.Pattern[str], ...]:
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not values or not all(isinstance(v, str) for v in values):
        raise ValueError(f"{where}: expected a regular expression or a list of them")
    try:
        return tuple(re.compile(v, re.IGNORECASE) for v in values)
    except re.error as error:
        raise ValueError(f"{where}: {error}") from None


def _keywords(value: Any, where: str) -> tuple[str, ...]:
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not values or not all(isinstance(v, str) for v in values):
        raise ValueError(f"{where}: channel_attributes must be a DICOM keyword or a list of them")
    return tuple(values)


def parse_routes(
    document: Mapping[str, Any], models: Mapping[str, Sequence[str]], *, strict: bool = True
) -> tuple[Route, ...]:
    """A routing document → routes. ``models`` maps each served model to its channel names (empty
    for single-series models). A route naming a model not served is a ValueError when ``strict``
    (the service refuses to start on it), else left out; channels other than the model's are
    always a ValueError."""
    routes = []
    for index, entry in enumerate(document.get("routes", [])):
        where = f"route {index} ({entry.get('name', '?')})"
        model = entry.get("model")
        if model not in models and not strict:
            continue
        if model not in models:
            raise ValueError(f"{where}: model {model!r} is not served ({', '.join(models)})")
        channels = tuple((name, _patterns(p, f"{where} channel {name}")) for name, p in entry.get("channels", {}).items())
        if channels and sorted(name for name, _ in channels) != sorted(models[model]):
            raise ValueError(f"{where}: channels {[n for n, _ in channels]} are not {model}'s {list(models[model])}")
        if not channels and models[model]:
            raise ValueError(f"{where}: {model} takes the channels {list(models[model])}; list their patterns")
        routes.append(Route(
            name=str(entry.get("name", f"route-{index}")),
            model=model,
            match=tuple((keyword, _patterns(p, f"{where} match {keyword}")) for keyword, p in entry.get("match", {}).items()),
            channels=channels,
            channel_attributes=_keywords(entry.get("channel_attributes", ["SeriesDescription", "ProtocolName"]), where),
        ))
    if len({r.name for r in routes}) != len(routes):
        raise ValueError("route names must be unique")
    return tuple(routes)


def load_routes(path: Path | None, models: Mapping[str, Sequence[str]]) -> tuple[Route, ...]:
    """The routes of ``path``; None: the default file, less its routes to models not served."""
    return parse_routes(json.loads((path or DEFAULT_ROUTES).read_text()), models, strict=path is not None)


def place(routes: Sequence[Route], header: Dataset) -> Placement | None:
    """The first route that fits ``header``; None: no model segments this series."""
    for route in routes:
        placement = route.place(header)
        if placement is not None:
            return placement
    return None
