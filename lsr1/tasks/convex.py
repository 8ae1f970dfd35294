"""Smooth convex problems of the coordinate-wise BFGS step-size paper (arXiv 2412.00059): least squares,
logistic regression and log-sum-exp, batched and seeded, with analytic gradients, Hessians and optima.

Every family is built on a data matrix A (B, m, N), m = 2N rows, whose conditioning is set: A = U S V^T
with random orthogonal U, V and singular values log-spaced so that A^T A / m has eigenvalues in [1/cond, 1].

    least squares   f(x) = 1/(2m) ||A x - b||^2                                   x* by a linear solve
    logistic        f(x) = 1/m sum_i log(1 + exp(-y_i a_i.x)) + mu/2 ||x||^2        y = sign(A x_true + noise)
    log-sum-exp     f(x) = rho log sum_i exp((a_i.x - b_i) / rho) + mu/2 ||x||^2

x* of the last two comes from Newton's method in float64 (strictly convex through mu), so the relative
suboptimality (f(x_k) - f*) / (f(x_0) - f*) of any optimizer can be measured down to ~1e-12.
"""

from __future__ import annotations

import abc
import math

import torch
from torch import Tensor

from lsr1.tasks.base import Problem, make_generator

__all__ = ["ConvexProblem", "LeastSquares", "LogSumExp", "Logistic", "convex_problems", "design_matrix"]

MU = 1e-3  # the ridge of logistic regression and log-sum-exp
RHO = 1.0  # the log-sum-exp temperature


def design_matrix(batch: int, n: int, cond: float, gen: torch.Generator) -> Tensor:
    """A (B, 2N, N) float64 with the eigenvalues of A^T A / (2N) log-spaced in [1/cond, 1]."""
    if cond < 1:
        raise ValueError(f"cond must be >= 1, got {cond}")
    m = 2 * n
    u, _ = torch.linalg.qr(torch.randn(batch, m, n, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(batch, n, n, generator=gen, dtype=torch.float64))
    singular = math.sqrt(m) * torch.logspace(0.0, -0.5 * math.log10(cond), n, dtype=torch.float64)
    return u * singular @ v.transpose(1, 2)


class ConvexProblem(Problem):
    """Base: A (B, m, N), a target vector (B, m), `hessian(x)` (B, N, N), and x* found at construction."""

    def __init__(self, a: Tensor, target: Tensor, x0: Tensor, x_star: Tensor | None = None) -> None:
        super().__init__(x0)
        if a.dim() != 3 or a.shape[0] != x0.shape[0] or a.shape[2] != x0.shape[1] or target.shape != a.shape[:2]:
            raise ValueError(
                f"{type(self).__name__}: A must be (B, m, N) and the target (B, m); got {tuple(a.shape)}, {tuple(target.shape)}"
            )
        self.a, self.target = a, target
        self._x_star = self.newton(x0.double()) if x_star is None else x_star
        self.f_star = self.value(self._x_star)  # (B,) kept: batch-first tensors follow select() and to()
        self.initial_gap = self.value(x0) - self.f_star

    @property
    def rows(self) -> int:
        return self.a.shape[1]

    def _av(self, x: Tensor) -> Tensor:
        return torch.bmm(self.a, x.unsqueeze(-1)).squeeze(-1)  # (B, m)

    def _atv(self, r: Tensor) -> Tensor:
        return torch.bmm(self.a.transpose(1, 2), r.unsqueeze(-1)).squeeze(-1)  # (B, N)

    @abc.abstractmethod
    def hessian(self, x: Tensor) -> Tensor:
        """x: (B, N) -> the Hessian of f at x: (B, N, N)."""

    def hvp(self, x: Tensor, v: Tensor) -> Tensor:
        return torch.bmm(self.hessian(x), v.unsqueeze(-1)).squeeze(-1)

    def newton(self, x: Tensor, iterations: int = 100) -> Tensor:
        """The minimiser by damped Newton steps (backtracking on f), in float64."""
        problem = self.to(x.device, torch.float64) if self.a.dtype != torch.float64 else self
        x = x.double()
        for _ in range(iterations):
            g = problem.grad(x)
            if float(g.norm(dim=-1).max()) < 1e-13:
                break
            step = torch.linalg.solve(problem.hessian(x), g.unsqueeze(-1)).squeeze(-1)
            f, t = problem.value(x), torch.ones_like(x[:, 0])
            for _ in range(30):  # Armijo, per problem
                worse = problem.value(x - t.unsqueeze(-1) * step) > f - 1e-4 * t * (g * step).sum(-1)
                if not bool(worse.any()):
                    break
                t = torch.where(worse, 0.5 * t, t)
            x = x - t.unsqueeze(-1) * step
        return x.to(self.x0.dtype)

    @property
    def x_star(self) -> Tensor:
        return self._x_star

    def relative_suboptimality(self, x: Tensor) -> Tensor:
        """(f(x) - f*) / (f(x0) - f*): (B,), 1 at the start, 0 at the optimum."""
        return (self.value(x) - self.f_star) / self.initial_gap

    def evaluation_metrics(self, x: Tensor) -> dict[str, Tensor]:
        with torch.no_grad():
            return {"log10_suboptimality": torch.log10(self.relative_suboptimality(x).clamp_min(1e-16))}

    def meta_objective(self, x: Tensor, value: Tensor, initial: bool = False) -> Tensor:
        """log10 of the relative suboptimality, floored at 1e-7 (float32's resolution of f): every decade of
        progress weighs the same, as in the evaluation (iterations to 1e-6), not only the first steps."""
        return torch.log10(((value - self.f_star) / self.initial_gap).clamp_min(1e-7))


class LeastSquares(ConvexProblem):
    def __init__(self, a: Tensor, target: Tensor, x0: Tensor, x_star: Tensor | None = None) -> None:
        if x_star is None:  # the normal equations, exactly
            x_star = torch.linalg.lstsq(a, target.unsqueeze(-1)).solution.squeeze(-1)
        super().__init__(a, target, x0, x_star)

    def value(self, x: Tensor) -> Tensor:
        return 0.5 * ((self._av(x) - self.target) ** 2).sum(-1) / self.rows

    def grad(self, x: Tensor) -> Tensor:
        return self._atv(self._av(x) - self.target) / self.rows

    def hessian(self, x: Tensor) -> Tensor:
        return self.a.transpose(1, 2) @ self.a / self.rows


class Logistic(ConvexProblem):
    """target: labels y in {-1, +1}."""

    def value(self, x: Tensor) -> Tensor:
        margins = self.target * self._av(x)
        return torch.nn.functional.softplus(-margins).mean(-1) + 0.5 * MU * (x * x).sum(-1)

    def grad(self, x: Tensor) -> Tensor:
        margins = self.target * self._av(x)
        return self._atv(-self.target * torch.sigmoid(-margins)) / self.rows + MU * x

    def hessian(self, x: Tensor) -> Tensor:
        p = torch.sigmoid(self._av(x))
        weights = (p * (1 - p)).unsqueeze(-1) / self.rows
        eye = torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
        return self.a.transpose(1, 2) @ (weights * self.a) + MU * eye


class LogSumExp(ConvexProblem):
    """target: offsets b (B, m)."""

    def _weights(self, x: Tensor) -> Tensor:
        return torch.softmax((self._av(x) - self.target) / RHO, dim=-1)

    def value(self, x: Tensor) -> Tensor:
        return RHO * torch.logsumexp((self._av(x) - self.target) / RHO, dim=-1) + 0.5 * MU * (x * x).sum(-1)

    def grad(self, x: Tensor) -> Tensor:
        return self._atv(self._weights(x)) + MU * x

    def hessian(self, x: Tensor) -> Tensor:
        w = self._weights(x)
        aw = self._atv(w)  # (B, N) = A^T w
        eye = torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
        return (self.a.transpose(1, 2) @ (w.unsqueeze(-1) * self.a) - aw.unsqueeze(-1) * aw.unsqueeze(-2)) / RHO + MU * eye


FAMILIES = {"least_squares": LeastSquares, "logistic": Logistic, "logsumexp": LogSumExp}


def convex_problems(
    family: str, batch: int, n: int, seed: int, cond: float, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
) -> ConvexProblem:
    """B problems of `family` (least_squares, logistic, logsumexp) at dimension N with standard normal x0."""
    if family not in FAMILIES:
        raise ValueError(f"unknown convex family {family!r}; valid: {list(FAMILIES)}")
    gen = make_generator(seed)
    a = design_matrix(batch, n, cond, gen)
    x_true = torch.randn(batch, n, generator=gen, dtype=torch.float64)
    noise = 0.1 * torch.randn(batch, 2 * n, generator=gen, dtype=torch.float64)
    clean = torch.bmm(a, x_true.unsqueeze(-1)).squeeze(-1)
    target = {"least_squares": clean + noise, "logistic": torch.sign(clean + noise), "logsumexp": noise * 10}[family]
    x0 = torch.randn(batch, n, generator=gen, dtype=torch.float64)
    problem = FAMILIES[family](a, target, x0)
    return problem.to(device, dtype)
