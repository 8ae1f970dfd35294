"""The initializer network of learned-optimization HMR (LGD; paper Sec. 5.2), trained jointly with the update.

Initializer      keypoints (B, 36) -> Theta_0 = rest + [MLP_pose(k), MLP_shape(k)], LGD's pose_init and
                 shape_init nets (`lsr1.nn.ElementwiseMLP` on (B, 36) rows)
WithInitializer  one learned optimizer made of an initializer and an update module (L-SR1 or LGD): its
                 `initial_point(problem)` replaces problem.x0 in `lsr1.meta.unroll`, everything else is
                 the update module's, so MetaLoss, checkpoints (one state_dict) and training need nothing
                 HMR-specific. It reads the problem's `context` (the keypoints), nothing else of HMR.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from lsr1.learned.base import LearnedOptimizer
from lsr1.nn import ElementwiseMLP
from lsr1.optim.base import Info

if TYPE_CHECKING:
    from lsr1.tasks.base import Problem

__all__ = ["Initializer", "WithInitializer"]


class Initializer(nn.Module):
    """Theta_0 from the problem's context. rest (P + S,): the offset the nets start from (identity rotations
    in 6D, zeros in axis-angle), so that an untrained initializer gives a valid pose."""

    def __init__(self, context_dim: int, rest: Tensor, pose_dim: int, hidden: int = 1024, dropout: float = 0.2) -> None:
        super().__init__()
        if rest.dim() != 1 or not 0 < pose_dim < rest.numel():
            raise ValueError(f"Initializer: rest must be (pose_dim + shape_dim,) with 0 < pose_dim, got {tuple(rest.shape)} and {pose_dim}")
        self.pose = ElementwiseMLP(context_dim, pose_dim, hidden, dropout, bn_momentum=0.1)
        self.shape = ElementwiseMLP(context_dim, rest.numel() - pose_dim, hidden, dropout, bn_momentum=0.1)
        self.register_buffer("rest", rest.clone(), persistent=False)  # follows from the config

    def forward(self, context: Tensor) -> Tensor:
        """context: (B, C) -> Theta_0: (B, P + S)."""
        return self.rest + torch.cat([self.pose(context), self.shape(context)], dim=1)


class WithInitializer(LearnedOptimizer):
    """An initializer network plus an update module, trained as one learner."""

    predicts_initial_point = True

    def __init__(self, initializer: Initializer, update: LearnedOptimizer) -> None:
        super().__init__()
        self.initializer, self.update = initializer, update

    def initial_point(self, problem: Problem) -> Tensor:
        """Theta_0 (B, N) predicted from the problem's context (its keypoints)."""
        if problem.context is None:
            raise ValueError(f"{type(problem).__name__} has no context for the initializer to read")
        return self.initializer(problem.context)

    def init(self, x0: Tensor, g0: Tensor) -> Any:
        return self.update.init(x0, g0)

    def init_for(self, problem: Problem, x0: Tensor, g0: Tensor) -> Any:
        return self.update.init_for(problem, x0, g0)

    def step(self, state: Any, x: Tensor, g: Tensor) -> tuple[Tensor, Any, Info]:
        return self.update.step(state, x, g)

    def with_step_length(self, state: Any, t: Tensor) -> Any:
        return self.update.with_step_length(state, t)

    def with_active(self, state: Any, active: Tensor) -> Any:
        return self.update.with_active(state, active)

    def meta_penalty(self, state: Any, x: Tensor, g: Tensor) -> tuple[Tensor, Info]:
        return self.update.meta_penalty(state, x, g)
