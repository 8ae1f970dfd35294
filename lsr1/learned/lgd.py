"""LGD's update module (Song, Chen, Hilliges, ECCV 2020), the HMR baseline of paper Sec. 5.2.

Unlike L-SR1 it is not coordinate-wise: two MLPs read the whole state of one problem at once,

    features = [c, x_pose, g_pose]                   (B, C + 2 P)   c: the problem's context (keypoints)
    x_k      = x_{k-1} + s [MLP_pose(features), MLP_shape(features)]   s = step_scale (0.1)

with P the pose part of x (LGD feeds theta and dE/dtheta, not beta or dE/dbeta) and g the per-problem
gradient (LGD's batch-mean gradient times B). The MLPs are `lsr1.nn.ElementwiseMLP` applied to (B, d)
rows: fc -> BN -> PReLU -> Dropout, two residual blocks, fc (LGD's blocks have one more PReLU).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor

from lsr1.config import LGDConfig
from lsr1.learned.base import LearnedOptimizer
from lsr1.nn import ElementwiseMLP
from lsr1.optim.base import Info, check_pair

if TYPE_CHECKING:
    from lsr1.tasks.base import Problem

__all__ = ["LGD", "LGDState"]


class LGDState(NamedTuple):
    context: Tensor  # (B, C) what the problem shows the update (LGD: the 36 normalised keypoint coordinates)
    active: Tensor  # (B,) 1 for a live problem, 0 for one the divergence guard froze (out of BN's statistics)


class LGD(LearnedOptimizer):
    """x (B, pose_dim + shape_dim) updated from [context, pose, pose gradient]; context_dim may be 0."""

    def __init__(self, config: LGDConfig, context_dim: int, pose_dim: int, shape_dim: int = 0) -> None:
        super().__init__()
        if context_dim < 0 or pose_dim < 1 or shape_dim < 0:
            raise ValueError(f"LGD sizes: context_dim >= 0, pose_dim >= 1, shape_dim >= 0; got {context_dim}, {pose_dim}, {shape_dim}")
        self.context_dim, self.pose_dim, self.shape_dim = context_dim, pose_dim, shape_dim
        self.step_scale = config.step_scale
        mlp = dict(hidden=config.hidden_dim, dropout=config.dropout, bn_momentum=config.bn_momentum)
        features = context_dim + 2 * pose_dim
        self.pose_update = ElementwiseMLP(features, pose_dim, **mlp)
        self.shape_update = ElementwiseMLP(features, shape_dim, **mlp) if shape_dim else None

    def init(self, x0: Tensor, g0: Tensor, context: Tensor | None = None) -> LGDState:
        check_pair(x0, g0, "LGD")
        if x0.shape[1] != self.pose_dim + self.shape_dim:
            raise ValueError(f"LGD.init: x0 has {x0.shape[1]} coordinates, expected {self.pose_dim} + {self.shape_dim}")
        if context is None:
            if self.context_dim:
                raise ValueError(f"LGD.init: needs a context (B, {self.context_dim}); use init_for(problem, x0, g0)")
            context = x0.new_zeros(x0.shape[0], 0)
        if context.shape != (x0.shape[0], self.context_dim):
            raise ValueError(f"LGD.init: context must have shape {(x0.shape[0], self.context_dim)}, got {tuple(context.shape)}")
        return LGDState(context=context, active=x0.new_ones(x0.shape[0]))

    def init_for(self, problem: Problem, x0: Tensor, g0: Tensor) -> LGDState:
        """`init` with the problem's context (its keypoints); what `lsr1.meta.unroll` calls."""
        return self.init(x0, g0, getattr(problem, "context", None))

    def step(self, state: LGDState, x: Tensor, g: Tensor) -> tuple[Tensor, LGDState, Info]:
        features = torch.cat([state.context, x[:, : self.pose_dim], g[:, : self.pose_dim]], dim=1)
        delta = self.pose_update(features, state.active)
        if self.shape_update is not None:
            delta = torch.cat([delta, self.shape_update(features, state.active)], dim=1)
        step = self.step_scale * delta
        return x + step, state, {"step_norm": step.norm(dim=-1)}
