"""First-order baselines: gradient descent and Adam (Kingma & Ba 2014), batched and functional."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from lsr1.optim.base import Info, check_pair

__all__ = ["Adam", "AdamState", "GradientDescent", "adam_direction", "update_moments"]


class GradientDescent:
    """x <- x - lr g."""

    name = "GD"

    def __init__(self, lr: float = 0.1) -> None:
        if lr <= 0:
            raise ValueError(f"GradientDescent: lr must be > 0, got {lr}")
        self.lr = lr

    def init(self, x0: Tensor, g0: Tensor) -> tuple[()]:
        check_pair(x0, g0, "GradientDescent")
        return ()

    def step(self, state: tuple[()], x: Tensor, g: Tensor) -> tuple[Tensor, tuple[()], Info]:
        return x - self.lr * g, state, {}


class AdamState(NamedTuple):
    m: Tensor  # (B, N) first moment
    v: Tensor  # (B, N) second moment (of the gradient for Adam, of the Hessian diagonal for AdaHessian)
    count: int  # steps taken


def adam_direction(state: AdamState, betas: tuple[float, float], power: float, eps: float) -> Tensor:
    """Bias-corrected m / (v^(power/2) + eps): Adam with power 1 on v = E[g^2]; AdaHessian on v = E[D^2]."""
    beta1, beta2 = betas
    m_hat = state.m / (1.0 - beta1**state.count)
    denom = (state.v / (1.0 - beta2**state.count)).sqrt()
    return m_hat / (denom**power + eps)


def update_moments(state: AdamState, g: Tensor, second: Tensor, betas: tuple[float, float]) -> AdamState:
    """Exponential moving averages of g and of `second` (g^2 or D^2), one step further."""
    beta1, beta2 = betas
    return AdamState(beta1 * state.m + (1.0 - beta1) * g, beta2 * state.v + (1.0 - beta2) * second, state.count + 1)


class Adam:
    """Adam exactly as torch.optim.Adam (no weight decay, no amsgrad)."""

    name = "Adam"

    def __init__(self, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        if lr <= 0:
            raise ValueError(f"Adam: lr must be > 0, got {lr}")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"Adam: betas must be in [0, 1), got {betas}")
        self.lr, self.betas, self.eps = lr, betas, eps

    def init(self, x0: Tensor, g0: Tensor) -> AdamState:
        check_pair(x0, g0, "Adam")
        return AdamState(torch.zeros_like(x0), torch.zeros_like(x0), 0)

    def step(self, state: AdamState, x: Tensor, g: Tensor) -> tuple[Tensor, AdamState, Info]:
        state = update_moments(state, g, g * g, self.betas)
        return x - self.lr * adam_direction(state, self.betas, 1.0, self.eps), state, {}
