"""L-SR1: learned symmetric-rank-one preconditioning (paper Sec. 4, Alg. 1, Eqs. 7-9; DESIGN §3).

Each step, three element-wise MLPs read the optimisation state coordinate by coordinate:
    f_k     = E([x_{k-1}, p_{k-1}, d_{k-1}, g_{k-1}, q_{k-1}])     (B, N, M)
    v_k     = P(f_k)                                              (B, N)   pushed into a FIFO buffer of L
    alpha_k = gamma1 * exp(gamma2 * G(f_k))                       (B, N)   element-wise step sizes
    d_k     = (c I + sum_i v_i v_i^T) g_{k-1}                     c = 1 with `identity_in_step` (Eq. 7), else 0 (Alg. 1)
    x_k     = x_{k-1} - alpha_k * d_k
The preconditioner is PSD by construction; the secant penalty ||p_k - B~_k q_k||^2 with B~ = I + sum v v^T
(Eq. 8) is added to the meta-loss with weight lambda_sec to pull it toward the inverse Hessian.
No N x N matrix is ever formed: B g costs O(L N).
"""
from __future__ import annotations

import copy
import math
from typing import NamedTuple

import torch
from torch import Tensor

from lsr1.config import ENCODER_INPUTS, LSR1Config
from lsr1.learned.base import LearnedOptimizer
from lsr1.nn import ElementwiseMLP
from lsr1.optim.base import Info, check_pair, fifo_push

__all__ = ["LSR1", "LSR1State", "precondition", "secant_residual", "with_buffer_size"]


class LSR1State(NamedTuple):
    x_prev: Tensor  # (B, N) x_{k-2}; zero at init so that p_0 = x_0 (Alg. 1)
    g_prev: Tensor  # (B, N) g_{k-2}; zero at init so that q_0 = g_0
    d: Tensor  # (B, N) the last direction d_{k-1}; g_0 at init
    buffer: Tensor  # (B, L, N) the last L vectors v, oldest first; never-filled slots are zero
    residual: Tensor  # (B,) secant residual of the last pair (secant_target "last_step"); zero otherwise
    count: int  # steps taken


def precondition(buffer: Tensor, g: Tensor, identity_weight: float) -> Tensor:
    """(c I + sum_i v_i v_i^T) g without forming the matrix.

    buffer: (B, L, N); g: (B, N); identity_weight: c. Returns (B, N).
    """
    coeff = torch.bmm(buffer, g.unsqueeze(-1))  # (B, L, 1): v_i . g
    low_rank = torch.bmm(buffer.transpose(1, 2), coeff).squeeze(-1)  # (B, N): sum_i v_i (v_i . g)
    return low_rank + identity_weight * g if identity_weight else low_rank


def secant_residual(buffer: Tensor, p: Tensor, q: Tensor, normalize: bool = False) -> Tensor:
    """||p - B~ q||^2 with B~ = I + sum_i v_i v_i^T (Eq. 8). buffer: (B, L, N); p, q: (B, N) -> (B,).

    normalize: divide by (||p||^2 + ||B~ q||^2) / 2, which makes the penalty independent of the step length
    (so it cannot be lowered by not moving) and bounded by 4."""
    bq = precondition(buffer, q, 1.0)
    residual = (p - bq).pow(2).sum(-1)
    if not normalize:
        return residual
    scale = 0.5 * (p.pow(2).sum(-1) + bq.pow(2).sum(-1))
    return residual / scale.clamp_min(torch.finfo(p.dtype).tiny)


class LSR1(LearnedOptimizer):
    """The learned optimizer; `config` fixes the architecture, `buffer_size` may differ at test time."""

    def __init__(self, config: LSR1Config | None = None) -> None:
        super().__init__()
        self.config = config = config or LSR1Config()
        self.buffer_size = config.buffer_size
        self.gamma1 = config.gamma1
        self.gamma2 = config.gamma2
        self.lambda_sec = config.lambda_sec
        self.identity_weight = 1.0 if config.identity_in_step else 0.0
        self.last_step_secant = config.secant_target == "last_step"
        self.normalize_secant = config.secant_normalize
        self._inputs = [ENCODER_INPUTS.index(name) for name in config.encoder_inputs]
        # eval_norm "batch": at evaluation BatchNorm keeps normalising over the coordinates being optimised,
        # as in training; with running statistics, states far from the training distribution (large x or g)
        # give large v and the step diverges (docs/results.md).
        mlp = dict(hidden=config.hidden_dim, dropout=config.dropout, bn_momentum=config.bn_momentum, eval_batch_stats=config.eval_norm == "batch")
        h = config.hidden_dim
        self.encoder = ElementwiseMLP(len(self._inputs), h, **mlp)  # E: state -> features
        self.vector_generator = ElementwiseMLP(h, 1, **mlp)  # P: features -> v
        self.lr_generator = ElementwiseMLP(h, 1, **mlp)  # G: features -> log step size
        # A small untrained preconditioner keeps the first unrolls finite: with torch's default scale,
        # B = sum v v^T is large enough on ill-conditioned training quadratics that most batches diverge.
        with torch.no_grad():
            self.vector_generator.fc2.weight.mul_(config.vector_init_scale)
            self.vector_generator.fc2.bias.mul_(config.vector_init_scale)

    def init(self, x0: Tensor, g0: Tensor) -> LSR1State:
        check_pair(x0, g0, "LSR1")
        zeros = torch.zeros_like(x0)
        buffer = x0.new_zeros(x0.shape[0], self.buffer_size, x0.shape[1])
        return LSR1State(x_prev=zeros, g_prev=zeros, d=g0, buffer=buffer, residual=x0.new_zeros(x0.shape[0]), count=0)

    def step(self, state: LSR1State, x: Tensor, g: Tensor) -> tuple[Tensor, LSR1State, Info]:
        p = x - state.x_prev  # p_{k-1}
        q = g - state.g_prev  # q_{k-1}
        candidates = (x, p, state.d, g, q)  # the order of ENCODER_INPUTS
        features = self.encoder(torch.stack([candidates[i] for i in self._inputs], dim=-1))  # (B, N, M)
        v = self.vector_generator(features).squeeze(-1)  # (B, N)
        if self.config.vector_norm == "sqrt_dim":
            v = v / math.sqrt(v.shape[-1])
        alpha = self.gamma1 * torch.exp(self.gamma2 * self.lr_generator(features).squeeze(-1))  # (B, N)
        buffer = fifo_push(state.buffer, v)
        d = precondition(buffer, g, self.identity_weight)
        x_next = x - alpha * d
        residual = state.residual  # the first step has no previous pair: (p_0, q_0) = (x_0, g_0) only seeds E
        if self.last_step_secant and state.count > 0:
            residual = secant_residual(buffer, p, q, self.normalize_secant)
        info = {"step_size": alpha.mean(-1), "v_norm": v.norm(dim=-1)}
        return x_next, LSR1State(x, g, d, buffer, residual, state.count + 1), info

    def meta_penalty(self, state: LSR1State, x: Tensor, g: Tensor) -> tuple[Tensor, Info]:
        """lambda_sec * ||p - B~_k q||^2 (Eq. 9), B~_k the buffer after pushing v_k, and (p, q) either the
        step B~_k produced (secant_target "new_step", DESIGN §3) or the pair v_k was generated from
        ("last_step", the quasi-Newton convention B_k q_{k-1} = p_{k-1})."""
        if self.last_step_secant:
            residual = state.residual
        else:
            residual = secant_residual(state.buffer, x - state.x_prev, g - state.g_prev, self.normalize_secant)
        return self.lambda_sec * residual, {"secant_residual": residual}


def with_buffer_size(model: LSR1, buffer_size: int) -> LSR1:
    """The same trained weights with another buffer size L (the paper tests with other L than trained)."""
    if buffer_size < 1:
        raise ValueError(f"buffer_size must be >= 1, got {buffer_size}")
    other = copy.copy(model)  # shares the parameter tensors
    other.buffer_size = buffer_size
    return other
