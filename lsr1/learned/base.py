"""Base class of learned optimizers: an `nn.Module` with the batched `init`/`step` interface of
`lsr1.optim.base` plus the hooks through which `lsr1.meta.unroll` drives it. Every hook is declared here
with a neutral default, so the driver calls methods and probes for nothing; `HandDesigned` gives a
hand-designed optimizer the same face."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from lsr1.optim.base import Info, Optimizer

if TYPE_CHECKING:
    from lsr1.tasks.base import Problem

__all__ = ["HandDesigned", "LearnedOptimizer"]


class LearnedOptimizer(nn.Module):
    """Learned optimizers are modules whose weights are meta-trained through unrolled trajectories."""

    # whether `initial_point` predicts x_0 (an initializer network), so that the meta-loss scores x_0 too
    predicts_initial_point: bool = False

    def init(self, x0: Tensor, g0: Tensor) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must implement init(x0, g0)")

    def step(self, state: Any, x: Tensor, g: Tensor) -> tuple[Tensor, Any, Info]:
        raise NotImplementedError(f"{type(self).__name__} must implement step(state, x, g)")

    def initial_point(self, problem: Problem) -> Tensor:
        """x_0 of an unroll. Default: the problem's own."""
        return problem.x0

    def init_for(self, problem: Problem, x0: Tensor, g0: Tensor) -> Any:
        """The state at x0 for `problem`, for a learner that conditions on the problem (e.g. its keypoints).
        Default: `init(x0, g0)`."""
        return self.init(x0, g0)

    def meta_penalty(self, state: Any, x: Tensor, g: Tensor) -> tuple[Tensor, Info]:
        """Extra meta-loss for the step that produced x, known only once g = grad f(x) is.

        state: the state `step` returned with x. Returns a (B,) penalty and diagnostics. Default: none.
        """
        return torch.zeros(x.shape[0], dtype=x.dtype, device=x.device), {}

    def with_step_length(self, state: Any, t: Tensor) -> Any:
        """The state after the driver's line search (`lsr1.optim.Backtracked`) took t (B,) times the proposed
        step. Default: unchanged."""
        return state

    def with_active(self, state: Any, active: Tensor) -> Any:
        """The state with problems marked live (True) or frozen by the divergence guard (False), for a state
        with an `active` field (B,): its BatchNorm statistics leave frozen problems out. Others: unchanged."""
        if not hasattr(state, "active"):
            return state
        return state._replace(active=active.to(state.active.dtype))


class HandDesigned(LearnedOptimizer):
    """A hand-designed optimizer (`lsr1.optim`) behind the learner's hooks, all at their defaults: what
    `lsr1.meta.unroll` drives when it is given one. It has no weights."""

    def __init__(self, optimizer: Optimizer) -> None:
        super().__init__()
        self.optimizer = optimizer

    def init(self, x0: Tensor, g0: Tensor) -> Any:
        return self.optimizer.init(x0, g0)

    def step(self, state: Any, x: Tensor, g: Tensor) -> tuple[Tensor, Any, Info]:
        return self.optimizer.step(state, x, g)
