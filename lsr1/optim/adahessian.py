"""AdaHessian (Yao et al. 2021): Adam with the second moment of a Hutchinson estimate of diag(H).

D = z * (H z) with Rademacher z (one sample per step; no spatial averaging, as every coordinate is its own
block for a flat vector), v = beta2 v + (1 - beta2) D^2, x <- x - lr m_hat / (sqrt(v_hat)^k + eps).
Hessian-vector products come from the problem.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lsr1.optim.base import Info, Objective, check_pair
from lsr1.optim.first_order import AdamState, adam_direction, update_moments
from lsr1.seeds import derive_seed, make_generator

__all__ = ["AdaHessian"]


class AdaHessian:
    """Defaults of the reference implementation: lr 0.15, betas (0.9, 0.999), eps 1e-4, hessian_power 1."""

    name = "AdaHessian"

    def __init__(
        self,
        problem: Objective,
        lr: float = 0.15,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-4,
        hessian_power: float = 1.0,
        seed: int = 0,
    ) -> None:
        if lr <= 0:
            raise ValueError(f"AdaHessian: lr must be > 0, got {lr}")
        if not 0.0 < hessian_power <= 1.0:
            raise ValueError(f"AdaHessian: hessian_power must be in (0, 1], got {hessian_power}")
        self.problem, self.lr, self.betas, self.eps = problem, lr, betas, eps
        self.hessian_power, self.seed = hessian_power, seed

    def init(self, x0: Tensor, g0: Tensor) -> AdamState:
        check_pair(x0, g0, "AdaHessian")
        return AdamState(torch.zeros_like(x0), torch.zeros_like(x0), 0)

    def hutchinson(self, x: Tensor, count: int) -> Tensor:
        """z * (H z): an unbiased estimate of diag(H), exact for diagonal H. (B, N)."""
        gen = make_generator(derive_seed(self.seed, "hutchinson", count))
        z = torch.randint(0, 2, x.shape, generator=gen, dtype=torch.int64).to(device=x.device, dtype=x.dtype) * 2 - 1
        return z * self.problem.hvp(x, z)

    def step(self, state: AdamState, x: Tensor, g: Tensor) -> tuple[Tensor, AdamState, Info]:
        diag = self.hutchinson(x, state.count)
        state = update_moments(state, g, diag * diag, self.betas)
        return x - self.lr * adam_direction(state, self.betas, self.hessian_power, self.eps), state, {}
