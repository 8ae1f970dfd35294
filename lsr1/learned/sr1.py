"""L-SR1: learned symmetric-rank-one preconditioning (paper Sec. 4, Alg. 1, Eqs. 7-9; docs/design.md §3).

Each step, three element-wise MLPs read the optimisation state coordinate by coordinate:
    f_k     = E([x_{k-1}, p_{k-1}, d_{k-1}, g_{k-1}, q_{k-1}] (+ global features))     (B, N, M)
    v_k     = sqrt(s_k / n) P(f_k)                                        (B, N)   pushed into a FIFO buffer of L
    alpha_k = gamma1 * exp(gamma2 * G(f_k))                               (B, N)   element-wise step sizes
              (G(f_k) through tanh with `bounded_step_size`, so that a gamma2 with real range cannot overflow)
    d_k     = (c s_k I + sum_i v_i v_i^T) g_{k-1}        c = 1 (Eq. 7) with `identity_in_step`, else 0 (Alg. 1)
    x_k     = x_{k-1} - alpha_k * d_k
The preconditioner is PSD by construction. s_k = |p_{k-1}.q_{k-1}| / ||q_{k-1}||^2 (`curvature_scale: secant`, the
inverse curvature along the last step) or 1 (the paper); n = N (`vector_norm: sqrt_dim`) or 1 (the paper).
With `input_scaling: rms` each encoder input is divided by its RMS over the problem's coordinates, so that
E sees the same numbers whatever the scale of the problem; `global_features` adds per-problem scalars
(cos(p, q), cos(d, g), log(||q|| / ||g||), log(1 + k)) broadcast to every coordinate, k held at the last
step meta-training reaches (meta.burn_in + K - 1) with `cap_step_index`.
With `lbfgs_memory: m` the identity part c s_k I becomes c H_k, the L-BFGS inverse Hessian of the last m
measured pairs (p, q) with H0 = s_k I: the learned terms then correct a quasi-Newton operator.

The secant penalty of the meta-loss (weight lambda_sec) pulls the preconditioner toward the inverse Hessian:
    "paper"    ||p - B~ q||^2 with B~ = I + sum v v^T, as Eq. 8 is written;
    "applied"  ||p - M q||^2 / ||p||^2 with M = diag(alpha_k) (c s_k I + sum v v^T), the operator that made
               the step p: zero exactly where the step is Newton's along p (on a quadratic q = H p), and not
               lowered by a short step. The paper form is zero at p = 0 and charges the Newton step, so it
               trains short steps (docs/design.md §3 correction).
No N x N matrix is ever formed: B g costs O(L N).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from lsr1.config import ENCODER_INPUTS, LSR1Config
from lsr1.learned.base import LearnedOptimizer
from lsr1.learned.blocks import Blocks
from lsr1.learned.initializer import WithInitializer
from lsr1.learned.official import OfficialLSR1
from lsr1.nn import ElementwiseMLP
from lsr1.optim.base import Info, check_pair, fifo_push
from lsr1.optim.lbfgs import LBFGSMemory, empty_memory, lbfgs_memory_update, two_loop

__all__ = ["GLOBAL_FEATURES", "LSR1", "LSR1State", "applied_secant_residual", "precondition", "secant_residual", "without_learned_terms"]

GLOBAL_FEATURES = 4  # cos(p, q), cos(d, g), log(||q|| / ||g||), log(1 + k)


class LSR1State(NamedTuple):
    x_prev: Tensor  # (B, N) x_{k-2}; zero at init so that p_0 = x_0 (Alg. 1)
    g_prev: Tensor  # (B, N) g_{k-2}; zero at init so that q_0 = g_0
    d: Tensor  # (B, N) the last direction d_{k-1}; g_0 at init
    buffer: Tensor  # (B, L, N) the last L vectors v, oldest first; never-filled slots are zero
    count: int  # steps taken
    alpha: Tensor  # (B, N) the step sizes of the last step (the applied operator's diagonal)
    scale: Tensor  # (B, 1) s of the last step
    active: Tensor  # (B,) 1 for a live problem, 0 for one the divergence guard froze (out of BN's statistics)
    # the last lbfgs_memory measured pairs (p, q) for the L-BFGS part of B (LBFGSMemory's fields, kept flat
    # so that torch.optim's state_dict round trip rebuilds them); no slots when lbfgs_memory is 0
    pair_p: Tensor  # (B, m, N)
    pair_q: Tensor  # (B, m, N)
    pair_rho: Tensor  # (B, m)

    @property
    def pairs(self) -> LBFGSMemory:
        return LBFGSMemory(self.pair_p, self.pair_q, self.pair_rho)


def precondition(buffer: Tensor, g: Tensor, identity_weight: float | Tensor) -> Tensor:
    """(c I + sum_i v_i v_i^T) g without forming the matrix.

    buffer: (B, L, N); g: (B, N); identity_weight: c, a number or (B, 1). Returns (B, N).
    """
    coeff = torch.bmm(buffer, g.unsqueeze(-1))  # (B, L, 1): v_i . g
    low_rank = torch.bmm(buffer.transpose(1, 2), coeff).squeeze(-1)  # (B, N): sum_i v_i (v_i . g)
    return low_rank + identity_weight * g if isinstance(identity_weight, Tensor) or identity_weight else low_rank


def secant_residual(buffer: Tensor, p: Tensor, q: Tensor) -> Tensor:
    """||p - B~ q||^2 with B~ = I + sum_i v_i v_i^T (Eq. 8, the `paper` penalty). buffer: (B, L, N); p, q:
    (B, N) -> (B,)."""
    return (p - precondition(buffer, q, 1.0)).pow(2).sum(-1)


def applied_secant_residual(buffer: Tensor, alpha: Tensor, identity: Tensor | float, p: Tensor, q: Tensor) -> Tensor:
    """||p - M q||^2 / ||p||^2 with M = diag(alpha) (identity I + sum_i v_i v_i^T), the operator the step
    applied (the `applied` penalty). alpha, p, q: (B, N); identity: c s, a number or (B, 1) -> (B,)."""
    return _relative_miss(p, alpha * precondition(buffer, q, identity))


def _relative_miss(p: Tensor, mq: Tensor) -> Tensor:
    return (p - mq).pow(2).sum(-1) / p.pow(2).sum(-1).clamp_min(torch.finfo(p.dtype).tiny)


def _log_ratio(a: Tensor, b: Tensor, limit: float = 10.0) -> Tensor:
    tiny = torch.finfo(a.dtype).tiny
    return (torch.log(a.norm(dim=-1).clamp_min(tiny)) - torch.log(b.norm(dim=-1).clamp_min(tiny))).clamp(-limit, limit)


# P's last layer starts this much smaller than torch's default: a small untrained preconditioner keeps the first
# unrolls finite (with torch's scale, B = sum v v^T is large enough on ill-conditioned training quadratics that
# most batches diverge)
VECTOR_INIT_SCALE = 0.1


class LSR1(LearnedOptimizer):
    """The learned optimizer; `config` fixes the architecture, `buffer_size` may differ at test time.
    horizon: the last step meta-training reaches, K unrolled steps after up to meta.burn_in detached ones
    (`cap_step_index` needs it)."""

    def __init__(self, config: LSR1Config | None = None, horizon: int | None = None) -> None:
        super().__init__()
        self.config = config = config or LSR1Config()
        self.horizon = horizon
        self.last_trained_step = self._last_trained_step(config)  # the step index of the global features stops here
        self.buffer_size = config.buffer_size
        self.gamma1 = config.gamma1
        self.gamma2 = config.gamma2
        self.lambda_sec = config.lambda_sec
        self.identity_weight = 1.0 if config.identity_in_step else 0.0  # c
        self.learned_terms = True  # False: v = 0 and alpha = gamma1 (`without_learned_terms`)
        self._inputs = [ENCODER_INPUTS.index(name) for name in config.encoder_inputs]
        # eval_norm: BatchNorm at evaluation never mixes problems (docs/design.md §3): running statistics, or each
        # problem's own statistics over its coordinates
        mlp = dict(hidden=config.hidden_dim, dropout=config.dropout, bn_momentum=config.bn_momentum, norm=config.eval_norm)
        h = config.hidden_dim
        width = len(self._inputs) + (GLOBAL_FEATURES if config.global_features else 0)
        self.encoder = ElementwiseMLP(width, h, **mlp)  # E: state -> features
        self.vector_generator = ElementwiseMLP(h, 1, **mlp)  # P: features -> v
        self.lr_generator = ElementwiseMLP(h, 1, **mlp)  # G: features -> log step size
        with torch.no_grad():
            self.vector_generator.fc2.weight.mul_(VECTOR_INIT_SCALE)
            self.vector_generator.fc2.bias.mul_(VECTOR_INIT_SCALE)

    def init(self, x0: Tensor, g0: Tensor) -> LSR1State:
        check_pair(x0, g0, "LSR1")
        zeros = torch.zeros_like(x0)
        batch = x0.shape[0]
        buffer = x0.new_zeros(batch, self.buffer_size, x0.shape[1])
        return LSR1State(
            x_prev=zeros,
            g_prev=zeros,
            d=g0,
            buffer=buffer,
            count=0,
            alpha=zeros,
            scale=x0.new_ones(batch, 1),
            active=x0.new_ones(batch),
            **dict(zip(("pair_p", "pair_q", "pair_rho"), empty_memory(x0, self.config.lbfgs_memory))),
        )

    def _features(self, state: LSR1State, x: Tensor, g: Tensor, p: Tensor, q: Tensor, scale: Tensor) -> Tensor:
        """The encoder's input (B, N, I [+ 4]). Scales and global features are statistics of the state, held
        constant in the meta-gradient (their gradients are 0/0 where a frozen problem has p = 0)."""
        candidates = [x, p, state.d, g, q]  # the order of ENCODER_INPUTS
        inputs = torch.stack([candidates[i] for i in self._inputs], dim=-1)  # (B, N, I)
        if self.config.input_scaling == "rms":
            rms = inputs.detach().pow(2).mean(1, keepdim=True).sqrt()
            # an input that is 0 (p after a step the search did not take) stays 0 and passes no gradient:
            # dividing by a clamped rms would multiply its gradient by 1 / tiny and overflow the meta-gradient
            inputs = inputs / torch.where(rms >= torch.finfo(x.dtype).tiny, rms, math.inf)
        if self.config.global_features:
            with torch.no_grad():
                step = state.count if self.last_trained_step is None else min(state.count, self.last_trained_step)
                count = x.new_full((x.shape[0],), math.log1p(step))
                cosines = [F.cosine_similarity(a, b, dim=-1, eps=torch.finfo(x.dtype).tiny) for a, b in ((p, q), (state.d, g))]
                scalars = torch.stack([*cosines, _log_ratio(q, g), count], dim=-1)  # (B, 4)
            inputs = torch.cat([inputs, scalars.unsqueeze(1).expand(-1, x.shape[1], -1)], dim=-1)
        return inputs

    @torch.no_grad()
    def _scale(self, p: Tensor, q: Tensor) -> Tensor:
        """s = |p.q| / q.q per problem (B, 1) for `curvature_scale: secant` (the Barzilai-Borwein step that
        L-BFGS starts from: 1 / the curvature along p), where it is positive and finite (else 1); 1 for
        "none". A statistic, held constant in the meta-gradient."""
        if self.config.curvature_scale == "none":
            return p.new_ones(p.shape[0], 1)
        s = (p * q).sum(-1, keepdim=True).abs() / q.pow(2).sum(-1, keepdim=True)
        return torch.where(torch.isfinite(s) & (s > 0), s, torch.ones_like(s))

    def step(self, state: LSR1State, x: Tensor, g: Tensor) -> tuple[Tensor, LSR1State, Info]:
        p = x - state.x_prev  # p_{k-1}
        q = g - state.g_prev  # q_{k-1}
        scale = self._scale(p, q)  # (B, 1)
        pairs = state.pairs
        if self.config.lbfgs_memory and state.count > 0:  # (p_0, q_0) = (x_0, g_0) is not a step
            pairs, _ = lbfgs_memory_update(pairs, p.detach(), q.detach())  # a statistic, like s
        if self.learned_terms:
            v, alpha = self._learned_terms(state, x, g, p, q, scale)
        else:  # the ablation: no vectors, every step size gamma1 (`without_learned_terms`)
            v, alpha = torch.zeros_like(x), torch.full_like(x, self.gamma1)
        buffer = fifo_push(state.buffer, v)
        d = self._operator(buffer, pairs, scale, g)
        x_next = x - alpha * d
        info = {"step_size": alpha.mean(-1), "v_norm": v.norm(dim=-1), "curvature_scale": scale.squeeze(-1)}
        new_state = LSR1State(x, g, d, buffer, state.count + 1, alpha, scale, state.active, *pairs)
        return x_next, new_state, info

    def _learned_terms(self, state: LSR1State, x: Tensor, g: Tensor, p: Tensor, q: Tensor, scale: Tensor) -> tuple[Tensor, Tensor]:
        """v_k and alpha_k (B, N) from the three networks."""
        inputs = self._features(state, x, g, p, q, scale)
        weights = None  # every row counts equally in BN's training statistics: the unweighted kernels
        if not bool(state.active.all()):  # a frozen problem's state may hold the Inf it diverged to
            weights = state.active.unsqueeze(-1)  # (B, 1): each coordinate's weight, 0 for a frozen problem
            inputs = torch.where(weights.unsqueeze(-1) > 0, inputs, torch.zeros_like(inputs))
        features = self.encoder(inputs, weights)  # (B, N, M)
        v = self.vector_generator(features, weights).squeeze(-1)  # (B, N)
        vector_scale = scale / x.shape[-1] if self.config.vector_norm == "sqrt_dim" else scale
        v = v * vector_scale.sqrt()
        log_step = self.lr_generator(features, weights).squeeze(-1)  # (B, N)
        if self.config.bounded_step_size:  # alpha within gamma1 * [e^-gamma2, e^gamma2]
            log_step = torch.tanh(log_step)
        return v, self.gamma1 * torch.exp(self.gamma2 * log_step)

    def _last_trained_step(self, config: LSR1Config) -> int | None:
        if not config.cap_step_index:
            return None
        if self.horizon is None:
            raise ValueError(
                "lsr1.cap_step_index holds the step index at the meta-training horizon: pass horizon (meta.burn_in + meta.unroll_steps)"
            )
        return self.horizon - 1

    def with_settings(self, *, buffer_size: int | None = None, lbfgs_memory: int | None = None, cap_step_index: bool | None = None) -> LSR1:
        """The same trained weights (shared, not copied) with the settings that may change after training: the
        buffer size L (the paper tests with other L than trained), the L-BFGS memory m of a model trained with
        the L-BFGS operator (its pairs are measured statistics, not learned, so it can keep as many as L-BFGS
        does), and whether the step index of the global features is held at the training horizon (the hold
        never binds in meta-training, so it only decides what the model sees past its horizon). The one way to
        change a trained setting; `lsr1.pretrained.load` passes its keywords here."""
        changes: dict[str, int | bool] = {}
        if buffer_size is not None:
            if buffer_size < 1:
                raise ValueError(f"buffer_size must be >= 1, got {buffer_size}")
            changes["buffer_size"] = buffer_size
        if lbfgs_memory is not None:
            if not self.config.lbfgs_memory:
                raise ValueError("lbfgs_memory can only be changed on a model trained with the L-BFGS operator (lsr1.lbfgs_memory > 0)")
            if lbfgs_memory < 1:
                raise ValueError(f"lbfgs_memory must be >= 1, got {lbfgs_memory}")
            changes["lbfgs_memory"] = lbfgs_memory
        if cap_step_index is not None:
            changes["cap_step_index"] = cap_step_index
        other = copy.copy(self)  # shares the parameter tensors
        other.config = dataclasses.replace(self.config, **changes)
        other.buffer_size = other.config.buffer_size
        other.last_trained_step = other._last_trained_step(other.config)
        return other

    def _identity(self, scale: Tensor) -> Tensor | float:
        """c s: the identity's weight in B, (B, 1); 0 without `identity_in_step` (Alg. 1)."""
        return self.identity_weight * scale if self.identity_weight else 0.0

    def _operator(self, buffer: Tensor, pairs: LBFGSMemory, scale: Tensor, u: Tensor) -> Tensor:
        """B u (B, N) without forming B: c s u + sum v v^T u, or with `lbfgs_memory` c H u + sum v v^T u."""
        if not self.config.lbfgs_memory:
            return precondition(buffer, u, self._identity(scale))
        measured = pairs.rho[:, -1:] > 0  # (B, 1): a pair has passed the curvature test
        base = torch.where(measured, two_loop(pairs, u), scale * u)
        return precondition(buffer, u, 0.0) + self.identity_weight * base

    def _residual(self, buffer: Tensor, pairs: LBFGSMemory, alpha: Tensor, scale: Tensor, p: Tensor, q: Tensor) -> Tensor:
        if self.config.formulation == "project":
            return _relative_miss(p, alpha * self._operator(buffer, pairs, scale, q))
        return secant_residual(buffer, p, q)

    def with_step_length(self, state: LSR1State, t: Tensor) -> LSR1State:
        """A line search took t times the step: the applied operator is t diag(alpha) B, so that the secant
        penalty measures the step actually taken (a penalty on the untaken one would
        charge every shortened step, as the paper's form charges the Newton step)."""
        return state._replace(alpha=state.alpha * t.unsqueeze(-1))

    def meta_penalty(self, state: LSR1State, x: Tensor, g: Tensor) -> tuple[Tensor, Info]:
        """lambda_sec * the secant residual (Eq. 9) of the operator of step k on the step (p, q) it produced
        (docs/design.md §3)."""
        residual = self._residual(state.buffer, state.pairs, state.alpha, state.scale, x - state.x_prev, g - state.g_prev)
        return self.lambda_sec * residual, {"secant_residual": residual}


def without_learned_terms(model: LearnedOptimizer) -> LearnedOptimizer:
    """The same optimizer with its learned terms switched off: no vectors (v = 0) and every step size gamma1,
    the identity kept. What a learned model adds is its distance from this. For our formulation that is
    gamma1 times the base operator (the L-BFGS inverse Hessian with `lbfgs_memory`, else s I; the identity
    with weight 1 where the formulation has none, as the paper's), with the same search; for the authors'
    (`OfficialLSR1`) it is x - alpha1 g. An HMR learner keeps its initializer and loses its update's terms.
    The weights are shared, not copied."""
    if isinstance(model, WithInitializer):  # a new module: a copy would share the original's module registry
        other = WithInitializer(model.initializer, without_learned_terms(model.update))
        return other.train(model.training)
    if isinstance(model, OfficialLSR1):
        return model.with_learned_terms(False)
    if isinstance(model, Blocks):  # each block's learner (the authors' HMR: pose and shape)
        return model.with_parts(without_learned_terms)
    if not isinstance(model, LSR1):
        raise TypeError(f"without_learned_terms: an L-SR1 model, got {type(model).__name__}")
    other = copy.copy(model)
    other.learned_terms, other.identity_weight = False, 1.0
    return other
