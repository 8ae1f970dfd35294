"""L-BFGS (Nocedal 1980; Liu & Nocedal 1989): two-loop recursion over the last m pairs, batched."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from lsr1.optim.base import Objective, fifo_push
from lsr1.optim.quasi_newton import QuasiNewton, curvature_ok

__all__ = ["LBFGS", "LBFGSMemory", "empty_memory", "lbfgs_memory_update", "two_loop"]


class LBFGSMemory(NamedTuple):
    s: Tensor  # (B, m, N) steps, oldest first; empty slots are zero
    y: Tensor  # (B, m, N) gradient changes
    rho: Tensor  # (B, m) 1 / (y . s); 0 marks an empty slot, which the recursion then ignores


def two_loop(memory: LBFGSMemory, g: Tensor) -> Tensor:
    """H g with H the L-BFGS inverse Hessian, H0 = gamma I, gamma = s.y / y.y of the newest pair. -> (B, N)."""
    s, y, rho = memory
    q, alphas = g, []
    for i in reversed(range(s.shape[1])):
        a = rho[:, i] * (s[:, i] * q).sum(-1)
        q = q - a.unsqueeze(-1) * y[:, i]
        alphas.append(a)
    yy = (y[:, -1] * y[:, -1]).sum(-1)
    gamma = torch.where(rho[:, -1] > 0, 1.0 / (rho[:, -1] * yy).clamp_min(torch.finfo(g.dtype).tiny), 1.0)
    r = gamma.unsqueeze(-1) * q
    for i, a in zip(range(s.shape[1]), reversed(alphas)):
        b = rho[:, i] * (y[:, i] * r).sum(-1)
        r = r + (a - b).unsqueeze(-1) * s[:, i]
    return r


def empty_memory(x0: Tensor, memory: int) -> LBFGSMemory:
    """Room for `memory` pairs for a batch shaped like x0 (B, N)."""
    batch, n = x0.shape
    return LBFGSMemory(x0.new_zeros(batch, memory, n), x0.new_zeros(batch, memory, n), x0.new_zeros(batch, memory))


def lbfgs_memory_update(memory: LBFGSMemory, s: Tensor, y: Tensor) -> tuple[LBFGSMemory, Tensor]:
    """Push the pair (s, y) where it passes the curvature condition; returns the memory and that (B,) mask."""
    ok = curvature_ok(s, y)
    rho = torch.where(ok, 1.0 / (y * s).sum(-1), 0.0)
    return LBFGSMemory(fifo_push(memory.s, s, ok), fifo_push(memory.y, y, ok), fifo_push(memory.rho, rho, ok)), ok


class LBFGS(QuasiNewton):
    """L-BFGS with memory m; pairs that fail the curvature condition are skipped per problem."""

    name = "L-BFGS"

    def __init__(self, problem: Objective, memory: int = 10, **search: Any) -> None:
        """memory: m pairs; search: line_search, lr, max_evals, c1, c2 as in QuasiNewton."""
        super().__init__(problem, **search)
        if memory < 1:
            raise ValueError(f"LBFGS: memory must be >= 1, got {memory}")
        self.memory = memory

    def init_memory(self, x0: Tensor) -> LBFGSMemory:
        return empty_memory(x0, self.memory)

    def update(self, memory: LBFGSMemory, s: Tensor, y: Tensor) -> tuple[LBFGSMemory, Tensor]:
        return lbfgs_memory_update(memory, s, y)

    def apply(self, memory: LBFGSMemory, g: Tensor) -> Tensor:
        return two_loop(memory, g)
