"""N-dimensional Rosenbrock: f(x) = sum_{i<N} c (x_{i+1} - x_i^2)^2 + (1 - x_i)^2, minimum 0 at x = 1 (c = 100:
the standard function; other c give other functions of the family, e.g. to tune baselines on)."""

from __future__ import annotations

import torch
from torch import Tensor

from lsr1.tasks.base import Problem, make_generator

__all__ = ["Rosenbrock", "rosenbrock"]


def _pad_end(t: Tensor) -> Tensor:
    """(B, N-1) terms indexed by i in [0, N-1) -> (B, N)."""
    return torch.nn.functional.pad(t, (0, 1))


def _pad_start(t: Tensor) -> Tensor:
    """(B, N-1) terms indexed by i in [1, N) -> (B, N)."""
    return torch.nn.functional.pad(t, (1, 0))


class Rosenbrock(Problem):
    """B starting points on the same N-dimensional Rosenbrock function (N >= 2)."""

    def __init__(self, x0: Tensor, coefficient: float = 100.0) -> None:
        super().__init__(x0)
        if x0.shape[1] < 2:
            raise ValueError(f"Rosenbrock needs N >= 2, got N = {x0.shape[1]}")
        if coefficient <= 0:
            raise ValueError(f"Rosenbrock's coefficient must be > 0, got {coefficient}")
        self.coefficient = coefficient

    def value(self, x: Tensor) -> Tensor:
        head, tail = x[:, :-1], x[:, 1:]
        return (self.coefficient * (tail - head**2) ** 2 + (1.0 - head) ** 2).sum(-1)

    def grad(self, x: Tensor) -> Tensor:
        head, tail = x[:, :-1], x[:, 1:]
        inner = tail - head**2  # (B, N-1)
        c = self.coefficient
        return _pad_end(-4.0 * c * head * inner - 2.0 * (1.0 - head)) + _pad_start(2.0 * c * inner)

    def hvp(self, x: Tensor, v: Tensor) -> Tensor:
        """The Hessian is tridiagonal: diagonal 12 c x_i^2 - 4 c x_{i+1} + 2 (+2 c for i > 0), off -4 c x_i."""
        head, tail, c = x[:, :-1], x[:, 1:], self.coefficient
        diag = _pad_end(12.0 * c * head**2 - 4.0 * c * tail + 2.0) + _pad_start(torch.full_like(tail, 2.0 * c))
        off = -4.0 * c * head  # H[i, i+1] = H[i+1, i]
        return diag * v + _pad_end(off * v[:, 1:]) + _pad_start(off * v[:, :-1])

    @property
    def x_star(self) -> Tensor:
        return torch.ones_like(self.x0)


def rosenbrock(
    batch: int, n: int, seed: int, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu", coefficient: float = 100.0
) -> Rosenbrock:
    """Starting points uniform in [-2, 2]^N."""
    x0 = 4.0 * torch.rand(batch, n, generator=make_generator(seed), dtype=torch.float64) - 2.0
    return Rosenbrock(x0.to(device=device, dtype=dtype), coefficient)
