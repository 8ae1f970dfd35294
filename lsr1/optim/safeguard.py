"""The line search as a wrapper: `Backtracked(optimizer)` asks the driver (`lsr1.meta.unroll`, so `run` and
`MetaLoss` too) to shorten every step the optimizer proposes by Armijo backtracking on f, which the driver
holds. It works around any optimizer or learner and is configured with the driver (`meta.line_search`), never
in an architecture; with it a learned optimizer is compared with L-BFGS, whose steps come from a line search
too, at the same number of iterations. `lsr1.LearnedSR1` runs the same search (`lsr1.optim.armijo`) on a
closure.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lsr1.config import LINE_SEARCH_KINDS
from lsr1.optim.base import Objective, Optimizer
from lsr1.optim.linesearch import LineSearchResult, backtracking, stepped

__all__ = ["Backtracked", "armijo_step", "with_line_search"]


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


class Backtracked:
    """`optimizer` (hand-designed or learned) with each proposed step x' = x + d shortened by the driver to
    x + t d, t the first from 1 (by safeguarded interpolation) that decreases f enough (`armijo_step`); t = 0
    (no move) when none is found within max_evals. A learner's state hears of t (`with_step_length`)."""

    def __init__(self, optimizer: Optimizer, max_evals: int = 30) -> None:
        if isinstance(optimizer, Backtracked):
            raise TypeError("Backtracked: the optimizer already has a line search")
        self.optimizer, self.max_evals = optimizer, max_evals


def with_line_search(optimizer: Any, kind: str) -> Any:
    """The optimizer as the driver should run it under `meta.line_search` = kind: behind `Backtracked` for
    "armijo", as it is for "none"."""
    if kind not in LINE_SEARCH_KINDS:
        raise ValueError(f"unknown line search {kind!r}; valid: {list(LINE_SEARCH_KINDS)}")
    return Backtracked(optimizer) if kind == "armijo" else optimizer
