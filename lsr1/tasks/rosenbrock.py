"""N-dimensional Rosenbrock: f(x) = sum_{i<N} 100 (x_{i+1} - x_i^2)^2 + (1 - x_i)^2, minimum 0 at x = 1."""
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

    def __init__(self, x0: Tensor) -> None:
        super().__init__(x0)
        if x0.shape[1] < 2:
            raise ValueError(f"Rosenbrock needs N >= 2, got N = {x0.shape[1]}")

    def value(self, x: Tensor) -> Tensor:
        head, tail = x[:, :-1], x[:, 1:]
        return (100.0 * (tail - head**2) ** 2 + (1.0 - head) ** 2).sum(-1)

    def grad(self, x: Tensor) -> Tensor:
        head, tail = x[:, :-1], x[:, 1:]
        inner = tail - head**2  # (B, N-1)
        return _pad_end(-400.0 * head * inner - 2.0 * (1.0 - head)) + _pad_start(200.0 * inner)

    def hvp(self, x: Tensor, v: Tensor) -> Tensor:
        """The Hessian is tridiagonal: diagonal 1200 x_i^2 - 400 x_{i+1} + 2 (+200 for i > 0), off -400 x_i."""
        head, tail = x[:, :-1], x[:, 1:]
        diag = _pad_end(1200.0 * head**2 - 400.0 * tail + 2.0) + _pad_start(torch.full_like(tail, 200.0))
        off = -400.0 * head  # H[i, i+1] = H[i+1, i]
        return diag * v + _pad_end(off * v[:, 1:]) + _pad_start(off * v[:, :-1])

    @property
    def x_star(self) -> Tensor:
        return torch.ones_like(self.x0)


def rosenbrock(
    batch: int, n: int, seed: int, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
) -> Rosenbrock:
    """Starting points uniform in [-2, 2]^N."""
    x0 = 4.0 * torch.rand(batch, n, generator=make_generator(seed), dtype=torch.float64) - 2.0
    return Rosenbrock(x0.to(device=device, dtype=dtype))
