"""Shared skeleton of the hand-designed quasi-Newton methods (L-BFGS, BFGS, SR1).

Each method keeps a curvature memory approximating the inverse Hessian; a step updates the memory with
s = x - x_prev, y = g - g_prev, takes d = -B g (falling back to -g where that is not a descent direction)
and searches a step size along d. Subclasses define `init_memory`, `update` and `apply` only.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from lsr1.optim.base import Info, Objective, check_pair
from lsr1.optim.linesearch import LINE_SEARCHES, line_search

__all__ = ["DenseMemory", "DenseQuasiNewton", "QNState", "QuasiNewton", "curvature_ok", "identity_memory", "scale_initial"]


class QNState(NamedTuple):
    memory: Any  # method-specific curvature memory (a NamedTuple of tensors)
    x_prev: Tensor  # (B, N) the iterate of the previous step
    g_prev: Tensor  # (B, N) its gradient
    f: Tensor  # (B,) f(x) at the iterate `step` returned last (from the line search)
    iteration: int


def curvature_ok(s: Tensor, y: Tensor) -> Tensor:
    """(B,) True where y . s is safely positive, the condition for a positive-definite BFGS update, and the
    pair is representable: y . s, s . s and y . y are finite normal numbers, so that the updates' 1 / (y . s)
    and (y . s) / (y . y) are finite. (A float32 step that backtracking shrank to ~1e-9 can leave a y whose
    y . y underflows to 0 while y . s does not; the norms then read 0 and the relative test alone passes.)"""
    info = torch.finfo(s.dtype)
    ys, ss, yy = (y * s).sum(-1), (s * s).sum(-1), (y * y).sum(-1)
    representable = torch.isfinite(ys) & torch.isfinite(ss) & torch.isfinite(yy) & (torch.minimum(torch.minimum(ys, ss), yy) >= info.tiny)
    return representable & (ys > info.eps * ss.sqrt() * yy.sqrt())


class QuasiNewton:
    """Base: `problem` supplies f for the line search; `lr` is the first trial step (the step, if "fixed");
    c1, c2 are the Wolfe constants (c2 = 0.9 is the usual quasi-Newton choice)."""

    name = "quasi-newton"

    def __init__(
        self,
        problem: Objective,
        line_search: str = "strong_wolfe",
        lr: float = 1.0,
        max_evals: int = 25,
        c1: float = 1e-4,
        c2: float = 0.9,
    ) -> None:
        if line_search not in LINE_SEARCHES:
            raise ValueError(f"{type(self).__name__}: unknown line_search {line_search!r}; valid: {list(LINE_SEARCHES)}")
        if lr <= 0:
            raise ValueError(f"{type(self).__name__}: lr must be > 0, got {lr}")
        if not 0.0 < c1 < c2 < 1.0:
            raise ValueError(f"{type(self).__name__}: need 0 < c1 < c2 < 1, got c1={c1}, c2={c2}")
        self.problem, self.line_search, self.lr, self.max_evals = problem, line_search, lr, max_evals
        self.c1, self.c2 = c1, c2

    def init_memory(self, x0: Tensor) -> Any:
        raise NotImplementedError

    def update(self, memory: Any, s: Tensor, y: Tensor) -> tuple[Any, Tensor]:
        """New memory after the step s with gradient change y, and a (B,) mask of problems that updated."""
        raise NotImplementedError

    def apply(self, memory: Any, g: Tensor) -> Tensor:
        """B g for the current inverse-Hessian approximation B: (B, N)."""
        raise NotImplementedError

    def init(self, x0: Tensor, g0: Tensor) -> QNState:
        check_pair(x0, g0, type(self).__name__)
        return QNState(self.init_memory(x0), x0, g0, self.problem.value(x0), 0)

    def step(self, state: QNState, x: Tensor, g: Tensor) -> tuple[Tensor, QNState, Info]:
        memory, updated = state.memory, torch.zeros_like(state.f, dtype=torch.bool)
        if state.iteration > 0:
            memory, updated = self.update(memory, x - state.x_prev, g - state.g_prev)
        d = -self.apply(memory, g)
        descent = ((g * d).sum(-1) < 0).unsqueeze(-1)
        d = torch.where(descent, d, -g)
        t0 = torch.full_like(state.f, self.lr)
        if state.iteration == 0 and self.line_search != "fixed":  # B0 = I has no scale: keep the first step short
            t0 = t0 * torch.clamp(1.0 / g.abs().sum(-1), max=1.0)
        result = line_search(self.line_search, self.problem, x, state.f, g, d, t0, self.max_evals, self.c1, self.c2)
        x_next = x + result.t.unsqueeze(-1) * d
        info = {"step_size": result.t, "evaluations": result.evaluations, "updated": updated.to(x.dtype)}
        return x_next, QNState(memory, x, g, result.f, state.iteration + 1), info


class DenseMemory(NamedTuple):
    h: Tensor  # (B, N, N) inverse Hessian approximation
    scaled: Tensor  # (B,) whether H0 = I has been rescaled by s.y / y.y yet


def identity_memory(x0: Tensor) -> DenseMemory:
    """H0 = I for a batch shaped like x0 (B, N), not yet rescaled."""
    batch, n = x0.shape
    eye = torch.eye(n, dtype=x0.dtype, device=x0.device).expand(batch, n, n).clone()
    return DenseMemory(eye, torch.zeros(batch, dtype=torch.bool, device=x0.device))


def scale_initial(memory: DenseMemory, s: Tensor, y: Tensor, ok: Tensor) -> DenseMemory:
    """Before the first update, replace H0 = I by (s.y / y.y) I where `ok` (Nocedal & Wright Eq. 6.20)."""
    first = ok & ~memory.scaled
    gamma = (s * y).sum(-1) / (y * y).sum(-1).clamp_min(torch.finfo(s.dtype).tiny)
    h = torch.where(first.reshape(-1, 1, 1), gamma.reshape(-1, 1, 1) * memory.h, memory.h)
    return DenseMemory(h, memory.scaled | ok)


class DenseQuasiNewton(QuasiNewton):
    """Quasi-Newton methods that keep the whole (B, N, N) inverse Hessian; for small N."""

    def init_memory(self, x0: Tensor) -> DenseMemory:
        return identity_memory(x0)

    def apply(self, memory: DenseMemory, g: Tensor) -> Tensor:
        return torch.bmm(memory.h, g.unsqueeze(-1)).squeeze(-1)
