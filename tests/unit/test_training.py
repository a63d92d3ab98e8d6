"""The AdamW loop every demo trainer runs (export.training.train_steps)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from export.training.loop import DemoSettings, cosine_lr, train_steps


def toy_schedule(**overrides: float) -> DemoSettings:
    """A short schedule for a toy problem: 60 steps, 5 warm-up, peak 0.1, no weight decay."""
    return DemoSettings(**{"steps": 60, "warmup_steps": 5, "learning_rate": 0.1, "weight_decay": 0.0, **overrides})


def quadratic() -> tuple[torch.nn.Parameter, Callable[[], torch.Tensor]]:
    """One parameter vector starting at 0 and a loss pulling it to 3."""
    weight = torch.nn.Parameter(torch.zeros(4))
    return weight, lambda: ((weight - 3.0) ** 2).sum()


def test_loss_falls_and_every_step_is_recorded() -> None:
    weight, loss = quadratic()
    losses = train_steps([weight], toy_schedule(), loss, show=False)
    assert len(losses) == 60
    assert losses[0] == 36.0 and losses[-1] < 0.1 * losses[0]


def test_first_update_uses_the_warm_up_learning_rate() -> None:
    """Adam's first step moves each weight by the step's learning rate (sign of the gradient)."""
    weight, loss = quadratic()
    schedule = toy_schedule(steps=1, warmup_steps=10, learning_rate=0.1)
    train_steps([weight], schedule, loss, show=False)
    expected = cosine_lr(0, 1, 10, 0.1)
    assert expected == 0.01
    torch.testing.assert_close(weight.detach(), torch.full((4,), expected), rtol=1e-4, atol=0)


def test_gradient_clipping_is_applied_before_the_update() -> None:
    """Clipped to a norm far below Adam's epsilon, the gradients barely move the weights."""
    free, free_loss = quadratic()
    clipped, clipped_loss = quadratic()
    train_steps([free], toy_schedule(steps=3), free_loss, show=False)
    train_steps([clipped], toy_schedule(steps=3), clipped_loss, show=False, clip_grad_norm=1e-12)
    assert free.detach().abs().min() > 1e-3
    assert clipped.detach().abs().max() < 1e-5


def test_draws_happen_once_per_step_in_order() -> None:
    weight, loss = quadratic()
    calls: list[int] = []

    def batch_loss() -> torch.Tensor:
        calls.append(len(calls))
        return loss()

    train_steps([weight], toy_schedule(steps=7), batch_loss, show=False)
    assert calls == list(range(7))
