"""Pieces every demo-weight trainer shares: pool generation, progress, the AdamW loop with its
learning-rate schedule, and the record's environment block and writer (``export/weights/<model>_small_demo.json``)."""

from __future__ import annotations

import json
import multiprocessing
import platform
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

J = TypeVar("J")
R = TypeVar("R")


def progress(items: Iterable[J], total: int, desc: str, enabled: bool) -> Iterable[J]:
    """``items`` with a tqdm bar when ``enabled``."""
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, total=total, desc=desc, leave=False)


def parallel_map(
    function: Callable[[J], R], jobs: list[J], workers: int, desc: str, show: bool, chunksize: int = 4
) -> list[R]:
    """Ordered ``[function(job) for job in jobs]``, in a fork pool when ``workers`` > 1.

    Each result depends on its job only, so the output is the same for any number of workers.
    """
    if workers > 1:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            return list(progress(pool.imap(function, jobs, chunksize=chunksize), len(jobs), desc, show))
    return [function(job) for job in progress(jobs, len(jobs), desc, show)]


def cosine_lr(step: int, total: int, warmup: int, peak: float) -> float:
    """Linear warm-up to ``peak`` then cosine decay to zero."""
    if step < warmup:
        return peak * (step + 1) / warmup
    fraction = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1.0 + np.cos(np.pi * fraction))


@dataclass(frozen=True)
class DemoSettings:
    """What every demo trainer's settings carry; each trainer subclasses it with its own fields and
    defaults, and records the whole of it in the JSON next to the weights."""

    seed: int = 0
    steps: int = 500
    batch_size: int = 8
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 20
    eval_seed_offset: int = 1_000_003  # held-out data use seed + this offset
    workers: int = 2
    threads: int = 2


def train_steps(
    parameters: list[torch.nn.Parameter],
    schedule: DemoSettings,
    batch_loss: Callable[[], torch.Tensor],
    show: bool,
    clip_grad_norm: float | None = None,
    shown_mean_of: int = 1,
) -> list[float]:
    """AdamW over ``schedule.steps`` steps with cosine_lr; returns the loss of every step.

    ``batch_loss`` draws the step's mini-batch and returns its scalar loss (it is called after the
    step's learning rate is set, so random draws happen in the same order as a hand-written loop).
    ``clip_grad_norm`` clips the gradients' global norm before the update; the progress bar
    shows the mean loss of the last ``shown_mean_of`` steps.
    """
    optimizer = torch.optim.AdamW(parameters, lr=schedule.learning_rate, weight_decay=schedule.weight_decay)
    losses: list[float] = []
    steps = progress(range(schedule.steps), schedule.steps, "train", show)
    for step in steps:
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, schedule.steps, schedule.warmup_steps, schedule.learning_rate)
        loss = batch_loss()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(parameters, clip_grad_norm)
        optimizer.step()
        losses.append(float(loss.item()))
        if show and hasattr(steps, "set_postfix"):
            steps.set_postfix(loss=f"{np.mean(losses[-shown_mean_of:]):.3f}")
    return losses


def environment(threads: int) -> dict[str, Any]:
    """Threads and library versions a record is reproduced with."""
    return {
        "threads": threads,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def write_record(path: Path, record: dict[str, Any]) -> dict[str, Any]:
    """Write ``record`` as indented JSON (trailing newline, mode 644); return it."""
    path.write_text(json.dumps(record, indent=2) + "\n")
    path.chmod(0o644)
    return record


def run_summary(losses: list[float], marks: tuple[float, float, float, float], threads: int) -> dict[str, Any]:
    """The record's closing block: first/last loss means, wall time per phase from ``marks``
    (started, generated, trained, evaluated; perf_counter seconds) and the environment."""
    started, generated, trained, evaluated = marks
    return {
        "final_loss_mean_last_20": float(np.mean(losses[-20:])),
        "loss_mean_first_20": float(np.mean(losses[:20])),
        "wall_time_s": {
            "generate": round(generated - started, 1),
            "train": round(trained - generated, 1),
            "evaluate": round(evaluated - trained, 1),
            "total": round(evaluated - started, 1),
        },
        **environment(threads),
    }
