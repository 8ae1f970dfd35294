"""Dense BFGS on the inverse Hessian (Nocedal & Wright Eq. 6.17), batched; O(N^2) memory, for small N."""

from __future__ import annotations

import torch
from torch import Tensor

from lsr1.optim.quasi_newton import DenseMemory, DenseQuasiNewton, curvature_ok, scale_initial

__all__ = ["BFGS", "bfgs_memory_update", "bfgs_update"]


def _outer(a: Tensor, b: Tensor) -> Tensor:
    return a.unsqueeze(-1) * b.unsqueeze(-2)


def bfgs_update(h: Tensor, s: Tensor, y: Tensor) -> Tensor:
    """H+ = (I - rho s y^T) H (I - rho y s^T) + rho s s^T, expanded so that no N x N product is needed."""
    rho = 1.0 / (s * y).sum(-1, keepdim=True)  # (B, 1)
    hy = torch.bmm(h, y.unsqueeze(-1)).squeeze(-1)  # (B, N); H is symmetric so y^T H = (H y)^T
    yhy = (y * hy).sum(-1, keepdim=True)
    coeff = (rho * rho * yhy + rho).unsqueeze(-1)
    return h - rho.unsqueeze(-1) * (_outer(s, hy) + _outer(hy, s)) + coeff * _outer(s, s)


def bfgs_memory_update(memory: DenseMemory, s: Tensor, y: Tensor) -> tuple[DenseMemory, Tensor]:
    """The BFGS update of H with H0 rescaled before the first one; pairs failing y.s > 0 are skipped.
    Returns the memory and a (B,) mask of the problems that updated."""
    ok = curvature_ok(s, y)
    memory = scale_initial(memory, s, y, ok)
    h = torch.where(ok.reshape(-1, 1, 1), bfgs_update(memory.h, s, y), memory.h)
    return DenseMemory(h, memory.scaled), ok


class BFGS(DenseQuasiNewton):
    """BFGS with H0 = I, rescaled before the first update; updates failing y.s > 0 are skipped."""

    name = "BFGS"

    def update(self, memory: DenseMemory, s: Tensor, y: Tensor) -> tuple[DenseMemory, Tensor]:
        return bfgs_memory_update(memory, s, y)
