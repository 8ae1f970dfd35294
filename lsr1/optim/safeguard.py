"""Any optimizer's step with an Armijo backtracking safeguard along it, batched: what `lsr1.LearnedSR1` does
for one problem, for the batched harness (`lsr1.meta.run`), so that a learned optimizer can be compared with
L-BFGS, whose steps come from a line search too, at the same number of iterations.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lsr1.optim.base import Info, Optimizer
from lsr1.optim.linesearch import backtracking
from lsr1.tasks.base import Problem

__all__ = ["Backtracked"]


class Backtracked:
    """optimizer's proposal x' = x + d, shortened to x + t d with the first t (from 1, by safeguarded
    interpolation) that decreases f enough (Armijo, c1 = 1e-4); t = 0 (no move) when none is found. The
    inner state sees the accepted point at its next step."""

    def __init__(self, optimizer: Optimizer, problem: Problem, max_evals: int = 30) -> None:
        self.optimizer, self.problem, self.max_evals = optimizer, problem, max_evals

    def init(self, x0: Tensor, g0: Tensor) -> Any:
        return self.optimizer.init(x0, g0)

    def step(self, state: Any, x: Tensor, g: Tensor) -> tuple[Tensor, Any, Info]:
        proposal, state, info = self.optimizer.step(state, x, g)
        d = proposal - x
        result = backtracking(self.problem, x, self.problem.value(x), g, d, torch.ones_like(x[:, 0]), max_evals=self.max_evals)
        return x + result.t.unsqueeze(-1) * d, state, {**info, "step_length": result.t, "evaluations": result.evaluations.to(x.dtype)}
