"""Base class of learned optimizers: an `nn.Module` with the batched `init`/`step` interface of
`lsr1.optim.base` plus `meta_penalty`, the optimizer's own term of the meta-loss."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from lsr1.optim.base import Info

__all__ = ["LearnedOptimizer"]


class LearnedOptimizer(nn.Module):
    """Learned optimizers are modules whose weights are meta-trained through unrolled trajectories."""

    def init(self, x0: Tensor, g0: Tensor) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must implement init(x0, g0)")

    def step(self, state: Any, x: Tensor, g: Tensor) -> tuple[Tensor, Any, Info]:
        raise NotImplementedError(f"{type(self).__name__} must implement step(state, x, g)")

    def meta_penalty(self, state: Any, x: Tensor, g: Tensor) -> tuple[Tensor, Info]:
        """Extra meta-loss for the step that produced x, known only once g = grad f(x) is.

        state: the state `step` returned with x. Returns a (B,) penalty and diagnostics. Default: none.
        """
        return torch.zeros(x.shape[0], dtype=x.dtype, device=x.device), {}

    def with_step_length(self, state: Any, t: Tensor) -> Any:
        """The state after a line search took t (B,) times the proposed step. Default: unchanged."""
        return state

    def with_active(self, state: Any, active: Tensor) -> Any:
        """The state with problems marked live (True) or frozen by the divergence guard (False), for a state
        with an `active` field (B,): its BatchNorm statistics leave frozen problems out. Others: unchanged."""
        if not hasattr(state, "active"):
            return state
        return state._replace(active=active.to(state.active.dtype))
