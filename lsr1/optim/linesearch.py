"""Batched line searches along d from x: every problem of the batch searches its own step size.

All problems are evaluated together at each trial (analytic problems are cheap to evaluate in batch);
problems that have finished keep their accepted point. Each search returns the step t (B,), f and g at
x + t d, and the number of trial evaluations per problem. A search that fails keeps the best point that
satisfies the sufficient-decrease condition, which may be t = 0 (no move).

`armijo` is the one Armijo backtracking of the project, on the line function phi(t) = f(x + t d): the
hand-designed optimizers (`backtracking`), the driver's search behind a learner (`lsr1.optim.Backtracked`)
and `lsr1.LearnedSR1`, whose phi calls the user's closure, all run it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from lsr1.optim.base import Objective

__all__ = [
    "LINE_SEARCHES",
    "SHRINK_RULES",
    "LineSearchResult",
    "armijo",
    "backtracking",
    "fixed_step",
    "line_search",
    "stepped",
    "strong_wolfe",
]

LINE_SEARCHES = ("strong_wolfe", "armijo", "fixed")
SHRINK_RULES = ("interpolate", "halve")


class LineSearchResult(NamedTuple):
    t: Tensor  # (B,) accepted step
    f: Tensor  # (B,) f(x + t d)
    g: Tensor  # (B, N) grad f(x + t d)
    evaluations: Tensor  # (B,) trial points evaluated


def _cubic_minimizer(t1: Tensor, f1: Tensor, d1: Tensor, t2: Tensor, f2: Tensor, d2: Tensor) -> Tensor:
    """Minimiser of the cubic through (t1, f1, f'1) and (t2, f2, f'2) (Nocedal & Wright Eq. 3.59);
    NaN where it does not exist."""
    a = d1 + d2 - 3.0 * (f1 - f2) / (t1 - t2)
    disc = a * a - d1 * d2
    b = torch.sign(t2 - t1) * torch.sqrt(disc.clamp_min(0.0))
    t = t2 - (t2 - t1) * (d2 + b - a) / (d2 - d1 + 2.0 * b)
    return torch.where(disc >= 0, t, torch.full_like(t, float("nan")))


def _where(mask: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """torch.where with a (B,) mask broadcast over trailing axes."""
    return torch.where(mask.reshape(-1, *([1] * (a.dim() - 1))), a, b)


def strong_wolfe(
    problem: Objective,
    x: Tensor,
    f0: Tensor,
    g0: Tensor,
    d: Tensor,
    t0: Tensor,
    c1: float = 1e-4,
    c2: float = 0.9,
    max_evals: int = 25,
    tolerance: float = 1e-9,
) -> LineSearchResult:
    """Strong-Wolfe search (Nocedal & Wright Algs. 3.5 and 3.6, cubic interpolation), batched.

    x, g0, d: (B, N); f0, t0: (B,). d must be a descent direction (g0 . d < 0).
    """
    gtd0 = (g0 * d).sum(-1)
    zeros = torch.zeros_like(f0)
    done = torch.zeros_like(f0, dtype=torch.bool)
    zoom = torch.zeros_like(done)
    evaluations = torch.zeros_like(f0, dtype=torch.long)
    # 'lo' is the best point so far that satisfies sufficient decrease (the previous trial while bracketing)
    t_lo, f_lo, gtd_lo, g_lo = zeros, f0, gtd0, g0
    t_hi, f_hi, gtd_hi = zeros, f0, gtd0
    t_out, f_out, g_out = zeros, f0, g0
    t = t0
    d_scale = d.abs().amax(-1)
    for _ in range(max_evals):
        active = ~done
        if not bool(active.any()):
            break
        t = torch.where(active, t, t_out)
        g = problem.grad(x + t.unsqueeze(-1) * d)
        f = problem.value(x + t.unsqueeze(-1) * d)
        gtd = (g * d).sum(-1)
        evaluations = evaluations + active.long()
        decrease = (f <= f0 + c1 * t * gtd0) & torch.isfinite(f)
        curvature = gtd.abs() <= -c2 * gtd0
        # bracketing (Alg. 3.5)
        bracketing = active & ~zoom
        too_far = bracketing & (~decrease | (f >= f_lo))  # minimiser lies in [lo, t]
        accept = bracketing & ~too_far & curvature
        overshoot = bracketing & ~too_far & ~curvature & (gtd >= 0)  # minimiser lies in [t, lo]
        extend = bracketing & ~too_far & ~curvature & (gtd < 0)
        # zoom (Alg. 3.6)
        zooming = active & zoom
        new_hi = zooming & (~decrease | (f >= f_lo))
        accept = accept | (zooming & ~new_hi & curvature)
        new_lo = zooming & ~new_hi & ~curvature
        flip = new_lo & (gtd * (t_hi - t_lo) >= 0)
        # hi first (it may take the old lo), then lo
        take_cur_hi = too_far | new_hi
        take_lo_hi = overshoot | flip
        t_hi = torch.where(take_cur_hi, t, torch.where(take_lo_hi, t_lo, t_hi))
        f_hi = torch.where(take_cur_hi, f, torch.where(take_lo_hi, f_lo, f_hi))
        gtd_hi = torch.where(take_cur_hi, gtd, torch.where(take_lo_hi, gtd_lo, gtd_hi))
        t_prev, f_prev, gtd_prev = t_lo, f_lo, gtd_lo
        take_cur_lo = overshoot | extend | new_lo
        t_lo = torch.where(take_cur_lo, t, t_lo)
        f_lo = torch.where(take_cur_lo, f, f_lo)
        gtd_lo = torch.where(take_cur_lo, gtd, gtd_lo)
        g_lo = _where(take_cur_lo, g, g_lo)
        t_out = torch.where(accept, t, t_out)
        f_out = torch.where(accept, f, f_out)
        g_out = _where(accept, g, g_out)
        done = done | accept
        zoom = zoom | too_far | overshoot
        # a bracket that has shrunk to nothing: settle for lo
        collapsed = zoom & ~done & ((t_hi - t_lo).abs() * d_scale < tolerance)
        t_out = torch.where(collapsed, t_lo, t_out)
        f_out = torch.where(collapsed, f_lo, f_out)
        g_out = _where(collapsed, g_lo, g_out)
        done = done | collapsed
        # next trial: extrapolate while bracketing, interpolate (safeguarded) inside the bracket
        lo_ext, hi_ext = t + 0.01 * (t - t_prev), 10.0 * t
        t_ext = _cubic_minimizer(t_prev, f_prev, gtd_prev, t, f, gtd)
        t_ext = torch.where(torch.isfinite(t_ext), t_ext, hi_ext).clamp(min=lo_ext, max=hi_ext)
        left, right = torch.minimum(t_lo, t_hi), torch.maximum(t_lo, t_hi)
        margin = 0.1 * (right - left)
        t_zoom = _cubic_minimizer(t_lo, f_lo, gtd_lo, t_hi, f_hi, gtd_hi)
        t_zoom = torch.where(torch.isfinite(t_zoom), t_zoom, 0.5 * (left + right))
        t_zoom = torch.minimum(torch.maximum(t_zoom, left + margin), right - margin)
        t = torch.where(zoom, t_zoom, torch.where(extend, t_ext, t))
    # out of evaluations: keep lo (t = 0 if nothing decreased f)
    t_out = torch.where(done, t_out, t_lo)
    f_out = torch.where(done, f_out, f_lo)
    g_out = _where(done, g_out, g_lo)
    return LineSearchResult(t_out, f_out, g_out, evaluations)


def armijo(
    phi: Callable[[Tensor], Tensor],
    f0: Tensor,
    slope: Tensor,
    t0: Tensor,
    c1: float = 1e-4,
    max_evals: int = 30,
    shrink: str = "interpolate",
) -> tuple[Tensor, Tensor, Tensor]:
    """Armijo backtracking on the line function phi: (B,) steps -> (B,) values, batched: the first trial t,
    from t0, with phi(t) <= f0 + c1 t slope (slope = g0 . d < 0) and phi(t) finite. After a rejected trial t
    shrinks by safeguarded quadratic interpolation ("interpolate": to 0.1 to 0.5 of itself) or by half
    ("halve"). A problem that accepts no trial within max_evals keeps t = 0 (no move) and f0; one whose slope
    is not finite (a direction with an Inf or NaN) evaluates nothing. -> (t, phi(t), evaluations), each (B,)."""
    if shrink not in SHRINK_RULES:
        raise ValueError(f"unknown shrink rule {shrink!r}; valid: {list(SHRINK_RULES)}")
    done = ~torch.isfinite(slope)
    evaluations = torch.zeros_like(f0, dtype=torch.long)
    t_out, f_out, t = torch.zeros_like(f0), f0, t0
    for _ in range(max_evals):
        active = ~done
        if not bool(active.any()):
            break
        f = phi(t)
        evaluations = evaluations + active.long()
        accept = active & (f <= f0 + c1 * t * slope) & torch.isfinite(f)
        t_out = torch.where(accept, t, t_out)
        f_out = torch.where(accept, f, f_out)
        done = done | accept
        if shrink == "halve":
            t_next = 0.5 * t
        else:
            t_quad = -slope * t * t / (2.0 * (f - f0 - slope * t))
            t_quad = torch.where(torch.isfinite(t_quad), t_quad, 0.5 * t)
            t_next = torch.minimum(torch.maximum(t_quad, 0.1 * t), 0.5 * t)
        t = torch.where(done, t, t_next)
    return t_out, f_out, evaluations


def backtracking(
    problem: Objective,
    x: Tensor,
    f0: Tensor,
    g0: Tensor,
    d: Tensor,
    t0: Tensor,
    c1: float = 1e-4,
    max_evals: int = 30,
) -> LineSearchResult:
    """`armijo` along d from x (safeguarded quadratic interpolation), with the gradient at the accepted point.
    A problem whose g0.d is not finite stays at x (t = 0, f0, its gradient at x) without evaluating f."""
    t, f, evaluations = armijo(lambda t: problem.value(x + t.unsqueeze(-1) * d), f0, (g0 * d).sum(-1), t0, c1, max_evals)
    return LineSearchResult(t, f, problem.grad(stepped(x, t, d)), evaluations)


def stepped(x: Tensor, t: Tensor, d: Tensor) -> Tensor:
    """x + t d per problem, and x itself where t = 0: a direction with an Inf or NaN leaves x unmoved
    rather than NaN (0 * Inf)."""
    return torch.where((t != 0).unsqueeze(-1), x + t.unsqueeze(-1) * d, x)


def fixed_step(problem: Objective, x: Tensor, d: Tensor, t: Tensor) -> LineSearchResult:
    """No search: step t along d."""
    x_next = x + t.unsqueeze(-1) * d
    return LineSearchResult(t, problem.value(x_next), problem.grad(x_next), torch.ones_like(t, dtype=torch.long))


def line_search(
    kind: str,
    problem: Objective,
    x: Tensor,
    f0: Tensor,
    g0: Tensor,
    d: Tensor,
    t0: Tensor,
    max_evals: int = 25,
    c1: float = 1e-4,
    c2: float = 0.9,
) -> LineSearchResult:
    """Dispatch on kind in LINE_SEARCHES; t0 is the first trial (the step itself for "fixed").

    c1: sufficient decrease; c2: curvature (strong Wolfe only; small c2 approaches an exact search)."""
    if kind == "strong_wolfe":
        return strong_wolfe(problem, x, f0, g0, d, t0, c1=c1, c2=c2, max_evals=max_evals)
    if kind == "armijo":
        return backtracking(problem, x, f0, g0, d, t0, c1=c1, max_evals=max_evals)
    if kind == "fixed":
        return fixed_step(problem, x, d, t0)
    raise ValueError(f"unknown line search {kind!r}; valid: {list(LINE_SEARCHES)}")
