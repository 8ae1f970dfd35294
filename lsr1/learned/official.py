"""The authors' L-SR1 step (the `LSR1Optimizer` of the published code, gallif/lsr1), written again in our style
and batched: their numbers to 1e-10 (tests/test_official.py, against a fixture made by running their module),
without their Python loop over the problems of a batch.

Each call, with dx = x - x_prev and dg = g - g_prev (x and g themselves on the first call):
    b_old   = B~_old dg                      the operator that made the last step, before this call's v
    f       = E([x, dx, b_old, g, dg])       (B, D, 128), the five inputs detached
    v       = P(f)                           (B, D), raw, pushed into a FIFO buffer of L
    d       = -B~_new g
    alpha   = min(alpha1 exp(alpha2 G(f)), 10)   per coordinate
    x_next  = x + alpha d
with B~ X = y ||X|| / ||y||, y = X + sum_i v_i (v_i . X) while fewer than L vectors were pushed and
y = sum_i v_i (v_i . X) from then on (the identity drops out once the buffer is full): the step length is
about alpha1 ||g||, the vectors only turn the direction. E, P and G are element-wise MLPs of width 256 with
dropout 0.2 and non-residual blocks whose two PReLUs share one slope; BatchNorm (momentum 0.1) pools each
channel over all B*D coordinates of the batch, so in training mode problems share statistics, as theirs do.

Deliberate deviations, all here: `SAFE_NORM`, an epsilon under the renormalisation's division so that y = 0
(possible once the identity is gone) gives a zero direction instead of their NaN.

Speed: the three networks are nearly all of a step's work (benchmarks/official_step.py). `with_settings(
network_dtype=torch.bfloat16)` runs them under autocast in bfloat16, which a CPU with AVX512-BF16 multiplies
several times faster than float32; the operator, the renormalisation and the step stay in x's precision. It is
an opt-in approximation (the benchmark reports how far its steps are from float32's), never the default.
"""

from __future__ import annotations

import copy
from typing import NamedTuple

import torch
from torch import Tensor, nn

from lsr1.learned.base import LearnedOptimizer
from lsr1.optim.base import Info, check_pair

__all__ = ["OfficialLSR1", "OfficialState", "SAFE_NORM"]

SAFE_NORM = 1e-30  # added to ||y|| in the renormalisation: theirs divides by ||y|| = 0 into NaN
STEP_CAP = 10.0  # their clamp of the per-coordinate step size


class _Block(nn.Module):
    """Linear, BN, PReLU, dropout, Linear, BN, the same PReLU, dropout: their BasicBlock (no residual)."""

    def __init__(self, width: int, dropout: float) -> None:
        super().__init__()
        self.fc1, self.bn1 = nn.Linear(width, width), nn.BatchNorm1d(width)
        self.fc2, self.bn2 = nn.Linear(width, width), nn.BatchNorm1d(width)
        self.prelu = nn.PReLU()  # one slope for both activations
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: Tensor) -> Tensor:
        h = self.dropout(self.prelu(self.bn1(self.fc1(h))))
        return self.dropout(self.prelu(self.bn2(self.fc2(h))))


class _MLP(nn.Module):
    """Linear, BN, PReLU, dropout, two blocks, Linear: their MLPBlock, on (rows, channels), with their
    attribute names, so that their state_dict keys map one to one (`lsr1.pretrained.from_official`)."""

    def __init__(self, d_in: int, d_out: int, width: int, dropout: float) -> None:
        super().__init__()
        self.fc1, self.bn1, self.prelu = nn.Linear(d_in, width), nn.BatchNorm1d(width), nn.PReLU()
        self.dropout = nn.Dropout(dropout)
        self.mlp1, self.mlp2 = _Block(width, dropout), _Block(width, dropout)
        self.fc2 = nn.Linear(width, d_out)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, D, d_in) -> (B, D, d_out); BatchNorm pools the B*D rows."""
        rows = x.reshape(-1, x.shape[-1])
        h = self.dropout(self.prelu(self.bn1(self.fc1(rows))))
        return self.fc2(self.mlp2(self.mlp1(h))).reshape(*x.shape[:-1], -1)


class OfficialState(NamedTuple):
    x_prev: Tensor  # (B, D); zero before the first call, so that dx = x there
    g_prev: Tensor  # (B, D); zero before the first call, so that dg = g
    buffer: Tensor  # (B, L, D) the last L vectors; unfilled slots are zero and add nothing
    pushed: int  # vectors pushed so far: the identity is in B~ while pushed < L


class OfficialLSR1(LearnedOptimizer):
    """The authors' L-SR1 step; `lsr1.pretrained.from_official` loads their weights into it."""

    def __init__(
        self,
        buffer_size: int = 4,
        alpha1: float = 0.4,
        alpha2: float = 0.001,
        width: int = 256,
        features: int = 128,
        dropout: float = 0.2,
        secant_weight: float = 10.0,
    ) -> None:
        super().__init__()
        if buffer_size < 1 or alpha1 <= 0:
            raise ValueError(f"OfficialLSR1: buffer_size must be >= 1 and alpha1 > 0, got {buffer_size} and {alpha1}")
        self.buffer_size, self.alpha1, self.alpha2, self.secant_weight = buffer_size, alpha1, alpha2, secant_weight
        self.learned_terms = True  # False: v = 0, the identity kept, alpha = alpha1: x - alpha1 g
        self.network_dtype: torch.dtype | None = None  # e.g. torch.bfloat16: the networks under autocast
        self.encoder = _MLP(5, features, width, dropout)  # E
        self.vector_generator = _MLP(features, 1, width, dropout)  # P
        self.lr_generator = _MLP(features, 1, width, dropout)  # G

    def init(self, x0: Tensor, g0: Tensor) -> OfficialState:
        check_pair(x0, g0, "OfficialLSR1")
        zeros = torch.zeros_like(x0)
        return OfficialState(zeros, zeros, x0.new_zeros(x0.shape[0], self.buffer_size, x0.shape[1]), 0)

    def with_settings(self, *, buffer_size: int | None = None, network_dtype: torch.dtype | None = None) -> OfficialLSR1:
        """The same weights (shared) with another buffer size L, as `LSR1.with_settings`: the vectors kept, and
        the step at which the identity drops out of B~; or with the networks computed in network_dtype
        (torch.bfloat16, under autocast; see the module's doc)."""
        if buffer_size is not None and buffer_size < 1:
            raise ValueError(f"buffer_size must be >= 1, got {buffer_size}")
        if network_dtype not in (None, torch.bfloat16):
            raise ValueError(f"network_dtype must be torch.bfloat16 (or None: unchanged), got {network_dtype}")
        other = copy.copy(self)
        other.buffer_size = self.buffer_size if buffer_size is None else buffer_size
        other.network_dtype = network_dtype or self.network_dtype
        return other

    def with_learned_terms(self, on: bool) -> OfficialLSR1:
        """The same weights (shared), with the learned terms on or off (`lsr1.learned.without_learned_terms`)."""
        other = copy.copy(self)
        other.learned_terms = on
        return other

    def operator(self, buffer: Tensor, pushed: int, u: Tensor) -> Tensor:
        """B~ u (B, D), renormalised to ||u|| per problem; u itself while the buffer is empty (and always
        without the learned terms, whose v = 0 leaves the identity alone)."""
        if pushed == 0 or not self.learned_terms:
            return u
        y = torch.einsum("bld,bl->bd", buffer, torch.einsum("bld,bd->bl", buffer, u))
        if pushed < self.buffer_size:
            y = u + y
        return y * (u.norm(dim=-1, keepdim=True) / (y.norm(dim=-1, keepdim=True) + SAFE_NORM))

    def step(self, state: OfficialState, x: Tensor, g: Tensor) -> tuple[Tensor, OfficialState, Info]:
        dx, dg = x - state.x_prev, g - state.g_prev
        b_old = self.operator(state.buffer, state.pushed, dg)
        if self.learned_terms:
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.network_dtype is not None):
                features = self.encoder(torch.stack([x, dx, b_old, g, dg], dim=-1).detach())
                v, rate = self.vector_generator(features).squeeze(-1), self.lr_generator(features).squeeze(-1)
            v, rate = v.to(x.dtype), rate.to(x.dtype)
            alpha = torch.clamp_max(self.alpha1 * torch.exp(self.alpha2 * rate), STEP_CAP)
        else:
            v, alpha = torch.zeros_like(x), torch.full_like(x, self.alpha1)
        buffer = torch.cat([state.buffer[:, 1:], v.unsqueeze(1)], dim=1)  # FIFO: the oldest drops out
        pushed = state.pushed + 1
        d = -self.operator(buffer, pushed, g)
        info = {"step_size": alpha.mean(-1), "v_norm": v.norm(dim=-1)}
        return x + alpha * d, OfficialState(x.detach(), g.detach(), buffer, pushed), info

    def meta_penalty(self, state: OfficialState, x: Tensor, g: Tensor) -> tuple[Tensor, Info]:
        """Their secant term for the step that produced x: secant_weight * mean_d (B~ dg - dx)^2, B~ the operator
        of that step (renormalised to ||dg||) and dx without a graph, so that only the vectors in B~ learn
        from it: it trains the alignment of B~ dg with dx."""
        dx, dg = (x - state.x_prev).detach(), (g - state.g_prev).detach()
        miss = (self.operator(state.buffer, state.pushed, dg) - dx).pow(2).mean(-1)
        return self.secant_weight * miss, {"secant_residual": miss}
