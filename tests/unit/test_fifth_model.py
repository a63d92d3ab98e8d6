"""The README's "add a fifth model" recipe, followed with a tiny throwaway network: one registry
entry, and the registry-wide checks, the build, the embedded back end and the /v1/segment
pipeline all take it without another line anywhere."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from types import MappingProxyType

import numpy as np
import pytest
import torch
from torch import nn

from export.registry import REGISTRY, ModelEntry, get_spec
from export.registry.base import Variant
from export.repository import build_model_folder
from services.codecs import decode
from services.codecs.render import png_bytes
from services.contract import Batching, discover_cards
from services.pipelines.base import FrameRequest
from services.runtime.ort_backend import OrtBackend
from services.usecases.segment import segment_upload
from tests.unit import test_registry as registry_checks


class TinySegmenter(nn.Module):
    """(N, 1, H, W) → (N, 3, H, W) logits: background, liver, lesion by intensity bands."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Conv2d(1, 3, kernel_size=1)
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor([[[[-8.0]]], [[[0.0]]], [[[8.0]]]]))
            self.head.bias.copy_(torch.tensor([2.0, 0.0, -2.0]))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(image)


def tiny_entry() -> ModelEntry:
    """A slice model like swtr_unet in all but its network, name and size."""
    spec = dataclasses.replace(
        get_spec("swtr_unet"),
        name="tiny_seg",
        display_name="a throwaway five-parameter slice segmenter",
        variants=MappingProxyType(
            {"small": Variant("small", (32, 32), "one 1x1 convolution"), "paper": Variant("paper", (64, 64), "the same")}
        ),
        batching=Batching(max_batch_size=4, max_queue_delay_us=5000, preferred_batch_sizes=(2, 4)),
    )
    return ModelEntry(spec=spec, build=lambda variant: TinySegmenter())


@pytest.fixture()
def registered(monkeypatch: pytest.MonkeyPatch) -> ModelEntry:
    entry = tiny_entry()
    monkeypatch.setitem(REGISTRY, entry.spec.name, entry)
    return entry


def test_a_fifth_model_needs_one_registry_entry(registered: ModelEntry, tmp_path: Path) -> None:
    spec = registered.spec
    registry_checks.test_labels_are_unique_sorted_and_coded(spec)  # the registry-wide checks
    registry_checks.test_variants_have_paper_and_small_and_tensors(spec)

    build_model_folder(spec, "small", tmp_path, say=lambda _: None)
    cards = discover_cards(tmp_path)
    assert set(cards) == {"tiny_seg"} and cards["tiny_seg"].task == "image2d"
    backend = OrtBackend(tmp_path)

    async def run_graph(graph: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return await backend.infer(graph, inputs)

    async def decoding(function, *args):  # noqa: ANN001, ANN202 - in-process stand-in for the DecoderPool
        return function(*args)

    slice_ = np.zeros((40, 50), np.uint8)
    slice_[10:30, 10:40] = 255  # bright: the lesion band
    seg = asyncio.run(segment_upload(FrameRequest(png_bytes(slice_)), cards["tiny_seg"], run_graph, decoding))
    assert seg.labels.shape == (1, 40, 50) and seg.image.rows == decode(png_bytes(slice_)).rows
    assert (seg.labels[0, 15:25, 15:35] == 2).all() and (seg.labels[0, :5, :5] == 0).all()
