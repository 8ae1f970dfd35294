"""Quadratics f(x) = 1/2 x^T H x + b^T x (paper Eq. 14, App. C.2.1 and C.2.2).

`random_quadratics`: H = A^T A with A standard normal, scaled to unit Frobenius norm, b standard normal with
unit norm; validation and test sets reject cond(H) > max_cond, training batches take every draw.
`official_quadratics`: the same family as the authors' example draws it (x0 uniform in a box, no condition
filter), with the draws that are singular in float32 redrawn and counted, where their script crashes.
`diagonal_quadratics`: H diagonal with a given condition number, b = 0 (the performance-profile problems);
H is kept as its diagonal so that N = 1000 costs O(N).
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from lsr1.tasks.base import Problem, make_generator

__all__ = ["OFFICIAL_BOX", "Quadratic", "diagonal_quadratics", "official_quadratics", "random_quadratics"]

log = logging.getLogger(__name__)

OFFICIAL_BOX = 5.12  # the authors' example: x0 uniform in [-5.12, 5.12]^N


class Quadratic(Problem):
    """A batch of quadratics; h is dense (B, N, N) or diagonal (B, N); b: (B, N).

    log_gap: the meta-loss term is log10 of the relative gap (f(x) - f*) / (f(x0) - f*), floored at 1e-7,
    instead of f itself (Eq. 9). Raw f lets the few ill-conditioned problems of a training batch, whose f*
    is far below the others', decide the meta-gradient; the log gap weighs every problem and every decade of
    progress the same.
    """

    def __init__(self, h: Tensor, b: Tensor, x0: Tensor, log_gap: bool = False) -> None:
        super().__init__(x0)
        batch, n = x0.shape
        if h.shape not in ((batch, n, n), (batch, n)):
            raise ValueError(f"Quadratic: h must be ({batch}, {n}, {n}) or ({batch}, {n}), got {tuple(h.shape)}")
        if b.shape != x0.shape:
            raise ValueError(f"Quadratic: b must be {tuple(x0.shape)}, got {tuple(b.shape)}")
        self.h, self.b = h, b
        self.log_gap = log_gap
        if log_gap:
            self.f_star = self.value(self.x_star)
            self.initial_gap = (self.value(x0) - self.f_star).clamp_min(torch.finfo(x0.dtype).tiny)

    def evaluation_metrics(self, x: Tensor) -> dict[str, Tensor]:
        """distance: ||x - x*||, the authors' validation metric."""
        return {"distance": (x - self.x_star).norm(dim=-1)}

    def meta_objective(self, x: Tensor, value: Tensor, initial: bool = False) -> Tensor:
        if not self.log_gap:
            return value
        return torch.log10(((value - self.f_star) / self.initial_gap).clamp_min(1e-7))

    @property
    def diagonal(self) -> bool:
        return self.h.dim() == 2

    def matvec(self, v: Tensor) -> Tensor:
        """H v for v: (B, N)."""
        return self.h * v if self.diagonal else torch.bmm(self.h, v.unsqueeze(-1)).squeeze(-1)

    def value(self, x: Tensor) -> Tensor:
        return 0.5 * (x * self.matvec(x)).sum(-1) + (self.b * x).sum(-1)

    def grad(self, x: Tensor) -> Tensor:
        return self.matvec(x) + self.b

    def hvp(self, x: Tensor, v: Tensor) -> Tensor:
        return self.matvec(v)

    def newton_direction(self, g: Tensor) -> Tensor:
        """-H^{-1} g: (B, N)."""
        if self.diagonal:
            return -g / self.h
        return -torch.linalg.solve(self.h, g.unsqueeze(-1)).squeeze(-1)

    @property
    def x_star(self) -> Tensor:
        return self.newton_direction(self.b)

    def hessian(self) -> Tensor:
        """Dense H: (B, N, N)."""
        return torch.diag_embed(self.h) if self.diagonal else self.h


def _unit_quadratic(batch: int, n: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    a = torch.randn(batch, n, n, generator=gen, dtype=torch.float64)
    h = a.transpose(1, 2) @ a
    h = h / torch.linalg.matrix_norm(h, ord="fro", keepdim=True)
    b = torch.randn(batch, n, generator=gen, dtype=torch.float64)
    return h, b / b.norm(dim=-1, keepdim=True)


def random_quadratics(
    batch: int,
    n: int,
    seed: int,
    max_cond: float | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    log_gap: bool = False,
) -> Quadratic:
    """B random quadratics of paper Eq. 14 with standard normal starting points.

    max_cond: reject (and redraw) matrices with a larger condition number, as for validation and test sets.
    log_gap: the meta-loss term (`Quadratic`).
    """
    gen = make_generator(seed)
    hs, bs, kept, drawn = [], [], 0, 0
    while kept < batch:
        if drawn >= 100 * batch and kept == 0:  # cond(A^T A) grows like n^2 or faster: a bound can be out of reach
            raise ValueError(
                f"max_cond={max_cond:g} accepted none of {drawn} random quadratics at N = {n}; "
                "raise task.max_cond (the median condition number grows quickly with N)"
            )
        h, b = _unit_quadratic(batch, n, gen)
        drawn += batch
        if max_cond is not None:
            keep = torch.linalg.cond(h) <= max_cond
            h, b = h[keep], b[keep]
        hs.append(h)
        bs.append(b)
        kept += h.shape[0]
    h, b = torch.cat(hs)[:batch], torch.cat(bs)[:batch]
    x0 = torch.randn(batch, n, generator=gen, dtype=torch.float64)
    return Quadratic(h, b, x0, log_gap).to(device, dtype)  # f* in float64, then cast


def official_quadratics(batch: int, n: int, seed: int, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> Quadratic:
    """B quadratics of the family of the authors' example: H and b as `random_quadratics`, every condition
    number, x0 uniform in [-OFFICIAL_BOX, OFFICIAL_BOX]^N. A draw whose H is singular in float32 (their
    torch.linalg.inv fails there and the script stops) is redrawn; the count is `problem.redrawn`."""
    gen = make_generator(seed)
    hs, bs, kept, redrawn = [], [], 0, 0
    while kept < batch:
        h, b = _unit_quadratic(batch - kept, n, gen)
        invertible = torch.linalg.inv_ex(h.float()).info == 0
        redrawn += int((~invertible).sum())
        hs.append(h[invertible])
        bs.append(b[invertible])
        kept += int(invertible.sum())
    if redrawn:
        log.info("official_quadratics(seed=%d): redrew %d draw(s) singular in float32", seed, redrawn)
    x0 = OFFICIAL_BOX * (2.0 * torch.rand(batch, n, generator=gen, dtype=torch.float64) - 1.0)
    problem = Quadratic(torch.cat(hs), torch.cat(bs), x0).to(device, dtype)
    problem.redrawn = redrawn
    return problem


def diagonal_quadratics(
    batch: int,
    n: int,
    seed: int,
    cond: float,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> Quadratic:
    """B copies of a diagonal quadratic, b = 0, eigenvalues log-spaced in [1/cond, 1], from B seeded starts."""
    if cond < 1:
        raise ValueError(f"cond must be >= 1, got {cond}")
    gen = make_generator(seed)
    eig = torch.logspace(0.0, -torch.log10(torch.tensor(float(cond))).item(), n, dtype=torch.float64)
    h = eig.expand(batch, n).clone()
    x0 = torch.randn(batch, n, generator=gen, dtype=torch.float64)
    return Quadratic(h, torch.zeros_like(x0), x0).to(device, dtype)
