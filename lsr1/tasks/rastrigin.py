"""N-dimensional Rastrigin: f(x) = A N + sum_i x_i^2 - A cos(2 pi x_i), minimum 0 at x = 0 (A = 10: the standard
function; other amplitudes give other functions of the family, e.g. to tune baselines on)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lsr1.tasks.base import Problem, make_generator

__all__ = ["Rastrigin", "rastrigin"]

TWO_PI = 2.0 * math.pi


class Rastrigin(Problem):
    """B starting points on the same N-dimensional Rastrigin function."""

    def __init__(self, x0: Tensor, amplitude: float = 10.0) -> None:
        super().__init__(x0)
        if amplitude < 0:
            raise ValueError(f"Rastrigin's amplitude must be >= 0, got {amplitude}")
        self.amplitude = amplitude

    def value(self, x: Tensor) -> Tensor:
        return self.amplitude * x.shape[1] + (x**2 - self.amplitude * torch.cos(TWO_PI * x)).sum(-1)

    def grad(self, x: Tensor) -> Tensor:
        return 2.0 * x + self.amplitude * TWO_PI * torch.sin(TWO_PI * x)

    def hvp(self, x: Tensor, v: Tensor) -> Tensor:
        return (2.0 + self.amplitude * TWO_PI**2 * torch.cos(TWO_PI * x)) * v

    @property
    def x_star(self) -> Tensor:
        return torch.zeros_like(self.x0)


def rastrigin(
    batch: int, n: int, seed: int, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu", amplitude: float = 10.0
) -> Rastrigin:
    """Starting points uniform in the usual domain [-5.12, 5.12]^N."""
    x0 = 10.24 * torch.rand(batch, n, generator=make_generator(seed), dtype=torch.float64) - 5.12
    return Rastrigin(x0.to(device=device, dtype=dtype), amplitude)
