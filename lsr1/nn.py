"""Element-wise MLPs of L-SR1 (paper App. C.1, Tables 5 and 6).

Every module of L-SR1 acts on each coordinate of the problem independently: an input of shape (B, N, d_in)
is flattened to (B*N, d_in) rows, so one set of weights serves any dimension N. In training BatchNorm
normalises over all B*N coordinates of the batch, leaving out rows of weight 0 (problems frozen by the
divergence guard). At evaluation it must not couple problems (docs/design.md §3): `norm="running"` uses the running
statistics (torch's eval mode), `norm="problem"` the statistics of each problem's own N coordinates.

The layers are plain nn.Linear, nn.BatchNorm1d and nn.PReLU (standard state-dict keys), but each
Linear -> BatchNorm [-> PReLU] group runs through `linear_bn`: in training one autograd node with a
hand-written backward (the residual of a block included), in eval mode the BatchNorm folded into the
Linear. On the CPU, torch's own BatchNorm and PReLU kernels for (rows, features) inputs cost several times
the matmuls between them, and a meta-iteration calls them hundreds of times (benchmarks/meta_step.py); the
element-wise work of a training node runs in C there (lsr1/native), where a C compiler is found. Tests check
every path against the modules applied one after the other.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx, once_differentiable

from lsr1 import native
from lsr1.config import NORMS  # BatchNorm at evaluation; training always uses batch statistics

__all__ = ["NORMS", "BasicBlock", "ElementwiseMLP", "linear_bn"]


class _LinearBatchNorm(torch.autograd.Function):
    """act(BN(x W^T + b)) [+ residual] with batch statistics over the rows; act is PReLU(slope) or the identity.

    share: None (every row counts 1/R) or (R, 1) row weights summing to 1; the statistics are the weighted
    mean and variance, so a row of weight 0 is normalised with them but does not move them. running: the
    BatchNorm's running mean and variance, moved toward the batch's by `factor` (the variance times
    `unbias`). On the CPU the element-wise work between the matmuls runs in lsr1/native's C kernels when
    they could be built; torch's operators otherwise (and on other devices)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: FunctionCtx,
        x: Tensor,
        weight: Tensor,
        bias: Tensor,
        gamma: Tensor,
        beta: Tensor,
        slope: Tensor | None,
        residual: Tensor | None,
        share: Tensor | None,
        eps: float,
        running: tuple[Tensor, Tensor, float, float],
    ) -> Tensor:
        kernels = native.linear_bn()
        ctx.kernels = kernels if kernels is not None and kernels.supports(x, weight, residual, share) else None
        if ctx.kernels is not None:
            centered = torch.mm(x, weight.t())  # centred in place by the kernel
            res = residual.contiguous() if residual is not None else None
            out, stats = kernels.forward(centered, bias, gamma, beta, slope, res, share, eps, *running)
            ctx.save_for_backward(x, weight, centered, stats, beta, slope, share)  # normed is recomputed from centered
            return out
        out, centered, rstd, scale, normed = _batch_norm_ops(x, weight, bias, gamma, beta, slope, share, eps, running)
        ctx.save_for_backward(x, weight, centered, rstd, scale, normed if slope is not None else None, slope, share)
        return _plus(out, residual)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        if ctx.kernels is not None:
            x, weight, centered, stats, beta, slope, share = ctx.saved_tensors
            grad_z, grad_bias, grad_gamma, grad_beta, grad_slope = ctx.kernels.backward(grad_out, centered, stats, beta, slope, share)
        else:
            x, weight, centered, rstd, scale, normed, slope, share = ctx.saved_tensors
            grad_z, grad_gamma, grad_beta, grad_slope = _batch_norm_backward_ops(grad_out, centered, rstd, scale, normed, slope, share)
            grad_bias = grad_z.sum(0)
        grad_x = grad_z @ weight if ctx.needs_input_grad[0] else None
        grad_residual = grad_out if ctx.needs_input_grad[6] else None
        return grad_x, grad_z.t() @ x, grad_bias, grad_gamma, grad_beta, grad_slope, grad_residual, None, None, None


def _batch_norm_ops(
    x: Tensor,
    weight: Tensor,
    bias: Tensor,
    gamma: Tensor,
    beta: Tensor,
    slope: Tensor | None,
    share: Tensor | None,
    eps: float,
    running: tuple[Tensor, Tensor, float, float],
) -> tuple[Tensor, ...]:
    """The forward of `_LinearBatchNorm` with torch's operators: out, centered, rstd, scale, normed."""
    rows = x.shape[0]
    centered = torch.addmm(bias, x, weight.t())  # (R, C), centred in place below
    if share is None:
        mean = centered.sum(0).div_(rows)
        centered.sub_(mean)
        var = torch.linalg.vecdot(centered, centered, dim=0).div_(rows)
    else:
        mean = (centered * share).sum(0)
        centered.sub_(mean)
        var = (centered * centered * share).sum(0)
    running_mean, running_var, factor, unbias = running
    running_mean.lerp_(mean, factor)
    running_var.lerp_(var * unbias, factor)
    rstd = (var + eps).rsqrt_()
    scale = rstd * gamma
    normed = torch.addcmul(beta, centered, scale)
    out = normed if slope is None else F.prelu(normed, slope)
    return out, centered, rstd, scale, normed


def _batch_norm_backward_ops(
    grad_out: Tensor, centered: Tensor, rstd: Tensor, scale: Tensor, normed: Tensor | None, slope: Tensor | None, share: Tensor | None
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """The backward of `_batch_norm_ops` with torch's operators: grad_z, grad_gamma, grad_beta, grad_slope."""
    rows = grad_out.shape[0]
    grad_slope = None
    if slope is not None:
        grad_slope = torch.dot(grad_out.reshape(-1), normed.clamp(max=0).reshape(-1)).reshape(1)
        local = torch.relu(normed).sign_().mul_(1.0 - slope).add_(slope)  # 1 where positive, else slope
        grad_normed = grad_out * local
    else:
        grad_normed = grad_out
    grad_beta = grad_normed.sum(0)
    grad_dot = torch.linalg.vecdot(grad_normed, centered, dim=0)
    grad_gamma = grad_dot * rstd
    # d/dz_j of BN: scale * (g_j - s_j sum_i g_i - s_j centered_j rstd^2 sum_i g_i centered_i), s_j the
    # row's share of the statistics (1/R without weights)
    if share is None:
        grad_z = torch.addcmul(-(grad_beta / rows) * scale, grad_normed, scale)
        grad_z.addcmul_(centered, -(grad_dot * rstd * rstd / rows) * scale)
    else:
        grad_z = grad_normed - share * grad_beta
        grad_z.sub_(share * centered * (grad_dot * rstd * rstd)).mul_(scale)
    return grad_z, grad_gamma, grad_beta, grad_slope


def linear_bn(
    x: Tensor,
    linear: nn.Linear,
    bn: nn.BatchNorm1d,
    prelu: nn.PReLU | None = None,
    norm: str = "running",
    weights: Tensor | None = None,
    problems: int = 1,
    residual: Tensor | None = None,
) -> Tensor:
    """prelu(bn(linear(x))) (or bn(linear(x))) for x: (R, in), plus `residual` (R, out) where given.

    In training: batch statistics over the rows, each row weighted by `weights` (R,) (0 leaves a row out;
    None: all equal), and the running statistics updated. In eval mode: `norm` "running" folds the running
    statistics into the Linear; "problem" normalises each of `problems` equal consecutive groups of rows
    (one problem's coordinates) with its own statistics.
    """
    if not bn.training and norm == "running":
        scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        z = torch.addmm((linear.bias - bn.running_mean) * scale + bn.bias, x, (linear.weight * scale.unsqueeze(1)).t())
        return _plus(z if prelu is None else F.prelu(z, prelu.weight), residual)
    if not bn.training:
        if norm != "problem":
            raise ValueError(f"norm must be one of {list(NORMS)}, got {norm!r}")
        z = linear(x).reshape(problems, -1, linear.out_features)  # (problems, rows per problem, C)
        var, mean = torch.var_mean(z, dim=1, keepdim=True, correction=0)
        z = ((z - mean) * torch.rsqrt(var + bn.eps) * bn.weight + bn.bias).reshape(x.shape[0], -1)
        return _plus(z if prelu is None else F.prelu(z, prelu.weight), residual)
    if prelu is not None and prelu.weight.numel() != 1:
        raise ValueError("linear_bn supports a PReLU with one shared slope")
    share, rows = None, x.shape[0]
    if weights is not None:
        weights = weights.detach().to(x.dtype).reshape(-1, 1)
        total = weights.sum()
        share = weights / total.clamp_min(1.0)  # no live row at all: zero statistics, still finite
        rows = float(total)
    slope = prelu.weight if prelu else None
    bn.num_batches_tracked.add_(1)
    factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    running = (bn.running_mean, bn.running_var, factor, rows / max(rows - 1.0, 1.0))
    return _LinearBatchNorm.apply(x, linear.weight, linear.bias, bn.weight, bn.bias, slope, residual, share, bn.eps, running)


def _plus(out: Tensor, residual: Tensor | None) -> Tensor:
    return out if residual is None else out + residual


class BasicBlock(nn.Module):
    """Residual block of Table 6: fc -> BN -> PReLU -> Dropout -> fc -> BN -> Dropout, plus the input.

    bn_momentum: the running statistics must average over every step of an unroll (a meta-iteration calls
    the block K times), hence 0.01 rather than torch's 0.1, which would keep mostly the last steps.
    norm: BatchNorm's statistics in eval mode (`linear_bn`).
    """

    def __init__(self, features: int, dropout: float = 0.0, bn_momentum: float | None = 0.01, norm: str = "running") -> None:
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {list(NORMS)}, got {norm!r}")
        self.norm = norm
        self.fc1 = nn.Linear(features, features)
        self.bn1 = nn.BatchNorm1d(features, momentum=bn_momentum)
        self.prelu = nn.PReLU()
        self.do1 = nn.Dropout(dropout)
        self.fc2 = nn.Linear(features, features)
        self.bn2 = nn.BatchNorm1d(features, momentum=bn_momentum)
        self.do2 = nn.Dropout(dropout)

    def forward(self, x: Tensor, weights: Tensor | None = None, problems: int = 1) -> Tensor:
        """x: (R, features) -> (R, features); weights and problems as in `linear_bn`."""
        h = self.do1(linear_bn(x, self.fc1, self.bn1, self.prelu, self.norm, weights, problems))
        if self.training and self.do2.p > 0:  # dropout comes before the residual
            return self.do2(linear_bn(h, self.fc2, self.bn2, None, self.norm, weights, problems)) + x
        return linear_bn(h, self.fc2, self.bn2, None, self.norm, weights, problems, residual=x)


class ElementwiseMLP(nn.Module):
    """MLP of Table 5: fc -> BN -> PReLU -> Dropout -> BasicBlock -> BasicBlock -> fc.

    Applied to the last axis of any (..., d_in) tensor; all leading axes are treated as one batch of rows.
    norm "problem" (eval mode) takes the first axis as the problems and the others as their coordinates.
    """

    def __init__(
        self,
        d_in: int,
        d_out: int,
        hidden: int = 128,
        dropout: float = 0.0,
        bn_momentum: float | None = 0.01,
        norm: str = "running",
    ) -> None:
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {list(NORMS)}, got {norm!r}")
        self.norm = norm
        if d_in < 1 or d_out < 1 or hidden < 1:
            raise ValueError(f"ElementwiseMLP sizes must be positive, got d_in={d_in}, d_out={d_out}, hidden={hidden}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.fc1 = nn.Linear(d_in, hidden)
        self.bn1 = nn.BatchNorm1d(hidden, momentum=bn_momentum)
        self.prelu = nn.PReLU()
        self.do1 = nn.Dropout(dropout)
        self.mlp1 = BasicBlock(hidden, dropout, bn_momentum, norm)
        self.mlp2 = BasicBlock(hidden, dropout, bn_momentum, norm)
        self.fc2 = nn.Linear(hidden, d_out)

    def forward(self, x: Tensor, weights: Tensor | None = None) -> Tensor:
        """x: (..., d_in) -> (..., d_out). weights: broadcastable to x.shape[:-1], each row's weight in the
        training statistics (0: left out, e.g. a frozen problem); None: all rows count."""
        rows = x.reshape(-1, x.shape[-1])  # (R, d_in), R = product of the leading axes
        if weights is not None:
            weights = weights.expand(x.shape[:-1]).reshape(-1)
        if not self.training and self.norm == "problem" and x.dim() < 3:
            raise ValueError(f"norm 'problem' needs (problems, coordinates, features) inputs, got {tuple(x.shape)}")
        problems = x.shape[0] if x.dim() > 2 else 1
        h = self.do1(linear_bn(rows, self.fc1, self.bn1, self.prelu, self.norm, weights, problems))
        h = self.mlp2(self.mlp1(h, weights, problems), weights, problems)
        return self.fc2(h).reshape(*x.shape[:-1], -1)
