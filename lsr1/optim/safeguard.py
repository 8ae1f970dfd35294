"""Any optimizer's step with an Armijo backtracking safeguard along it, batched: what `lsr1.LearnedSR1` does
for one problem, for the batched harness (`lsr1.meta.run`), so that a learned optimizer can be compared with
L-BFGS, whose steps come from a line search too, at the same number of iterations.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from lsr1.optim.base import Info, Objective, Optimizer
from lsr1.optim.linesearch import LineSearchResult, backtracking, stepped

__all__ = ["Backtracked", "BacktrackedState", "armijo_step"]


def armijo_step(
    problem: Objective, x: Tensor, f: Tensor, g: Tensor, proposal: Tensor, max_evals: int = 30
) -> tuple[Tensor, LineSearchResult]:
    """x + t (proposal - x) with the first t (from 1, by safeguarded interpolation) that decreases f enough
    (Armijo, c1 = 1e-4); t = 0 (no move) when none is found. f, g: f and its gradient at x. The search runs
    without a graph: in meta-training the step length is a statistic and the meta-gradient flows through the
    direction. -> (x', the search's t, f(x'), grad f(x') and evaluations)."""
    d = proposal - x
    with torch.no_grad():
        x0 = x.detach()
        result = backtracking(problem, x0, f.detach(), g.detach(), d.detach(), torch.ones_like(x0[:, 0]), max_evals=max_evals)
    return stepped(x, result.t, d), result


class BacktrackedState(NamedTuple):
    inner: Any  # the wrapped optimizer's state
    f: Tensor  # (B,) f at the iterate `step` returned last: the search's value there, not evaluated again


class Backtracked:
    """optimizer's proposal x' = x + d, shortened to x + t d with the first t (from 1, by safeguarded
    interpolation) that decreases f enough (Armijo, c1 = 1e-4); t = 0 (no move) when none is found. The
    inner state sees the accepted point at its next step."""

    def __init__(self, optimizer: Optimizer, problem: Objective, max_evals: int = 30) -> None:
        self.optimizer, self.problem, self.max_evals = optimizer, problem, max_evals

    def init(self, x0: Tensor, g0: Tensor) -> BacktrackedState:
        return BacktrackedState(self.optimizer.init(x0, g0), self.problem.value(x0))

    def step(self, state: BacktrackedState, x: Tensor, g: Tensor) -> tuple[Tensor, BacktrackedState, Info]:
        proposal, inner, info = self.optimizer.step(state.inner, x, g)
        x_next, search = armijo_step(self.problem, x, state.f, g, proposal, self.max_evals)
        with_step_length = getattr(self.optimizer, "with_step_length", None)  # a learner's applied operator
        inner = inner if with_step_length is None else with_step_length(inner, search.t)
        info = {**info, "step_length": search.t, "evaluations": search.evaluations.to(x.dtype)}
        return x_next, BacktrackedState(inner, search.f), info
