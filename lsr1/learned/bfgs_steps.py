"""Learned coordinate-wise step sizes for BFGS (arXiv 2412.00059; summary in the project's papers folder).

    d_k = H_k g_k                                        BFGS inverse Hessian (L-BFGS for large N: `memory`)
    h_k = LSTM([x, g, d]_k features, h_{k-1})            one LSTM cell shared by all coordinates
    P_k = 2 sigmoid(MLP(h_k))                            in [0, 2], the paper's convergence bound
    x_{k+1} = x_k - P_k * d_k

Everything is element-wise over coordinates (a batch of B*N LSTM rows), so one model runs at any N, like
L-SR1. The features are scale-free: x, g and d each divided by their root mean square over the problem's
coordinates, plus log10 of the RMS of g (how close to a stationary point). The meta-loss penalty pulls P_k
toward the identity near the optimum: reg_weight * mean_i (P_k,i - 1)^2 / (1 + ||g_k||^2 / ||g_0||^2).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from lsr1.config import BFGSStepsConfig
from lsr1.learned.base import LearnedOptimizer
from lsr1.optim.base import Info, check_pair
from lsr1.optim.hypergradient import MAX_STEP, BFGSDirection, DirectionState

__all__ = ["BFGSSteps", "BFGSStepsState"]

FEATURES = 4


class BFGSStepsState(NamedTuple):
    direction: DirectionState
    hidden: Tensor  # (B*N, H) LSTM hidden state
    cell: Tensor  # (B*N, H) LSTM cell state
    steps: Tensor  # (B, N) the last step sizes P (ones before the first step)
    g0_norm: Tensor  # (B,) ||g_0||


def _rms(v: Tensor) -> Tensor:
    return v.pow(2).mean(-1, keepdim=True).sqrt().clamp_min(torch.finfo(v.dtype).tiny)


def features(x: Tensor, g: Tensor, d: Tensor) -> Tensor:
    """(B, N) each -> (B*N, 4): x, g, d over their RMS, and log10 RMS(g) / 10 for every coordinate."""
    level = (torch.log10(_rms(g)) / 10.0).expand_as(g)
    return torch.stack([x / _rms(x), g / _rms(g), d / _rms(d), level], dim=-1).reshape(-1, FEATURES)


class BFGSSteps(LearnedOptimizer):
    def __init__(self, config: BFGSStepsConfig) -> None:
        super().__init__()
        self.reg_weight = config.reg_weight
        self.direction = BFGSDirection(config.memory)
        self.lstm = nn.LSTMCell(FEATURES, config.hidden_dim)
        self.head = nn.Sequential(nn.Linear(config.hidden_dim, config.hidden_dim), nn.ReLU(), nn.Linear(config.hidden_dim, 1))
        nn.init.zeros_(self.head[-1].weight)  # untrained: P = 1 everywhere, plain BFGS with unit steps
        nn.init.zeros_(self.head[-1].bias)

    def init(self, x0: Tensor, g0: Tensor) -> BFGSStepsState:
        check_pair(x0, g0, type(self).__name__)
        rows = x0.shape[0] * x0.shape[1]
        zeros = x0.new_zeros(rows, self.lstm.hidden_size)
        return BFGSStepsState(self.direction.init(x0, g0), zeros, zeros, torch.ones_like(x0), g0.norm(dim=-1))

    def step(self, state: BFGSStepsState, x: Tensor, g: Tensor) -> tuple[Tensor, BFGSStepsState, Info]:
        d, direction = self.direction(state.direction, x, g)
        hidden, cell = self.lstm(features(x, g, d), (state.hidden, state.cell))
        steps = MAX_STEP * torch.sigmoid(self.head(hidden)).reshape_as(x)
        info = {"step_size": steps.mean(-1), "step_min": steps.amin(-1), "step_max": steps.amax(-1)}
        return x - steps * d, BFGSStepsState(direction, hidden, cell, steps, state.g0_norm), info

    def meta_penalty(self, state: BFGSStepsState, x: Tensor, g: Tensor) -> tuple[Tensor, Info]:
        near = 1.0 / (1.0 + (g.norm(dim=-1) / state.g0_norm.clamp_min(torch.finfo(g.dtype).tiny)) ** 2)
        deviation = (state.steps - 1.0).pow(2).mean(-1)
        return self.reg_weight * near * deviation, {"identity_deviation": deviation}
