"""Dense classical SR1 on the inverse Hessian (Conn et al. 1991; paper App. F.2, Alg. 3), batched.

H+ = H + v v^T / (v . y) with v = s - H y, skipped where |v . y| < r ||y|| ||v|| (Nocedal & Wright Eq. 6.26).
H may be indefinite; a non-descent direction falls back to -g (in the shared step). For small N.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lsr1.optim.base import Objective
from lsr1.optim.quasi_newton import DenseMemory, DenseQuasiNewton, curvature_ok, scale_initial

__all__ = ["SR1", "sr1_update"]


def sr1_update(h: Tensor, s: Tensor, y: Tensor, skip_ratio: float = 1e-8) -> tuple[Tensor, Tensor]:
    """The SR1 update and a (B,) mask of problems where it was applied (the rest keep H)."""
    v = s - torch.bmm(h, y.unsqueeze(-1)).squeeze(-1)
    vy = (v * y).sum(-1)
    v_norm = v.norm(dim=-1)
    ok = torch.isfinite(vy) & (vy.abs() >= skip_ratio * y.norm(dim=-1) * v_norm) & (v_norm > 0)
    safe = torch.where(ok, vy, torch.ones_like(vy))
    step = v.unsqueeze(-1) * v.unsqueeze(-2) / safe.reshape(-1, 1, 1)
    return torch.where(ok.reshape(-1, 1, 1), h + step, h), ok


class SR1(DenseQuasiNewton):
    """Classical SR1 with Armijo backtracking by default (its H need not be positive definite)."""

    name = "SR1"

    def __init__(self, problem: Objective, skip_ratio: float = 1e-8, line_search: str = "armijo", **search: Any) -> None:
        """skip_ratio: r of the skip rule; search: lr, max_evals, c1, c2 as in QuasiNewton."""
        super().__init__(problem, line_search=line_search, **search)
        self.skip_ratio = skip_ratio

    def update(self, memory: DenseMemory, s: Tensor, y: Tensor) -> tuple[DenseMemory, Tensor]:
        memory = scale_initial(memory, s, y, curvature_ok(s, y))
        h, ok = sr1_update(memory.h, s, y, self.skip_ratio)
        return DenseMemory(h, memory.scaled), ok
