"""The backend benchmark's arithmetic (load/bench_backends.py): FLOPs counted on the PyTorch graph
and the peak measured on a matrix product, so that its GFLOP/s figures mean what they say."""

from __future__ import annotations

import numpy as np
import torch

from load.bench_backends import graph_flops, matmul_peak_gflops


def test_a_multiply_add_counts_two_flops() -> None:
    layer = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1, bias=False), torch.nn.Flatten(),
                                torch.nn.Linear(8 * 16 * 16, 10, bias=False))
    feeds = {"x": np.zeros((2, 3, 16, 16), dtype=np.float32)}
    conv = 2 * 2 * 8 * 16 * 16 * 3 * 3 * 3  # batch, out channels, outputs, kernel taps x in channels
    linear = 2 * 2 * 8 * 16 * 16 * 10
    assert graph_flops(layer, feeds, ["x"]) == conv + linear


def test_the_measured_peaks_are_plausible_for_a_cpu() -> None:
    f32 = matmul_peak_gflops("f32", size=512, repeats=3)
    assert 1 < f32 < 100_000
