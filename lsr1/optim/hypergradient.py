"""BFGS with adapted step sizes instead of a line search: x_{k+1} = x_k - P_k d_k, d_k = H_k g_k.

    BFGSDirection       the shared part: the inverse-Hessian memory (dense BFGS, or L-BFGS with `memory`
                        pairs for large N), updated with s = x_k - x_{k-1}, y = g_k - g_{k-1}
    HypergradientBFGS   P_k from hypergradient descent (Baydin et al. 2018): d f(x_k) / d P_{k-1} =
                        -g_k * d_{k-1}, so P_k = P_{k-1} + beta g_k * d_{k-1}, a scalar (the dot product)
                        or per coordinate; kept in [0, 2], the convergence bound of the coordinate-wise
                        step-size paper (arXiv 2412.00059, which uses these as baselines)

The learned step sizes (`lsr1.learned.bfgs_steps`) use the same BFGSDirection.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from lsr1.optim.base import Info, check_pair
from lsr1.optim.bfgs import bfgs_memory_update
from lsr1.optim.lbfgs import empty_memory, lbfgs_memory_update, two_loop
from lsr1.optim.quasi_newton import DenseMemory, identity_memory

__all__ = ["BFGSDirection", "DirectionState", "HypergradientBFGS", "HypergradientState"]

MAX_STEP = 2.0  # step sizes stay in [0, MAX_STEP]


class DirectionState(NamedTuple):
    memory: NamedTuple  # DenseMemory or LBFGSMemory
    x_prev: Tensor  # (B, N)
    g_prev: Tensor  # (B, N)
    started: bool  # whether x_prev, g_prev hold a previous iterate


class BFGSDirection:
    """d = H g for the BFGS inverse Hessian H (dense for memory None, else L-BFGS with that many pairs)."""

    def __init__(self, memory: int | None = None) -> None:
        if memory is not None and memory < 1:
            raise ValueError(f"BFGSDirection: memory must be >= 1 or None (dense BFGS), got {memory}")
        self.memory = memory

    def init(self, x0: Tensor, g0: Tensor) -> DirectionState:
        memory = identity_memory(x0) if self.memory is None else empty_memory(x0, self.memory)
        return DirectionState(memory, x0, g0, False)

    def __call__(self, state: DirectionState, x: Tensor, g: Tensor) -> tuple[Tensor, DirectionState]:
        """The direction at x (a descent direction: -g's sign pattern where H g is not) and the new state."""
        memory = state.memory
        if state.started:
            update = bfgs_memory_update if isinstance(memory, DenseMemory) else lbfgs_memory_update
            memory, _ = update(memory, x - state.x_prev, g - state.g_prev)
        if isinstance(memory, DenseMemory):
            d = torch.bmm(memory.h, g.unsqueeze(-1)).squeeze(-1)
        else:
            d = two_loop(memory, g)
        descent = ((g * d).sum(-1) > 0).unsqueeze(-1)
        return torch.where(descent, d, g), DirectionState(memory, x, g, True)


class HypergradientState(NamedTuple):
    direction: DirectionState
    steps: Tensor  # (B, 1) scalar or (B, N) per-coordinate step sizes P
    d_prev: Tensor  # (B, N) the last direction (zero before the first step)


class HypergradientBFGS:
    """BFGS with hypergradient-descent step sizes (see the module doc); no function evaluations."""

    def __init__(self, per_coordinate: bool = False, beta: float = 0.01, initial_step: float = 1.0, memory: int | None = None) -> None:
        if beta < 0 or not 0 < initial_step <= MAX_STEP:
            raise ValueError(f"HypergradientBFGS: need beta >= 0 and 0 < initial_step <= {MAX_STEP}, got {beta}, {initial_step}")
        self.per_coordinate, self.beta, self.initial_step = per_coordinate, beta, initial_step
        self.direction = BFGSDirection(memory)
        self.name = f"BFGS + hypergradient ({'per coordinate' if per_coordinate else 'scalar'})"

    def init(self, x0: Tensor, g0: Tensor) -> HypergradientState:
        check_pair(x0, g0, type(self).__name__)
        width = x0.shape[1] if self.per_coordinate else 1
        return HypergradientState(self.direction.init(x0, g0), x0.new_full((x0.shape[0], width), self.initial_step), torch.zeros_like(x0))

    def step(self, state: HypergradientState, x: Tensor, g: Tensor) -> tuple[Tensor, HypergradientState, Info]:
        hyper = g * state.d_prev if self.per_coordinate else (g * state.d_prev).sum(-1, keepdim=True)
        # normalised by |g||d| (Baydin et al.'s multiplicative variant) so that beta does not depend on f's scale
        scale = (g.norm(dim=-1, keepdim=True) * state.d_prev.norm(dim=-1, keepdim=True)).clamp_min(torch.finfo(x.dtype).tiny)
        steps = (state.steps + self.beta * hyper / scale * (x.shape[1] if self.per_coordinate else 1)).clamp(0.0, MAX_STEP)
        d, direction = self.direction(state.direction, x, g)
        return x - steps * d, HypergradientState(direction, steps, d), {"step_size": steps.mean(-1)}
