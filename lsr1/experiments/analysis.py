"""Per-step test curves of several optimizers on one problem set (paper Fig. 3a, 3b and 4).

curves       analytic problems with a known optimum: mean objective f(x_k), mean gap f(x_k) - f*, mean
             relative distance ||x_k - x*|| / ||x_0 - x*||, and for quadratics the mean cosine between
             the step x_k - x_{k-1} and the Newton direction -H^{-1} g_{k-1}
step_curves  any problem with `evaluation_metrics` (HMR: PA-MPJPE, MPJPE, reprojection error per step),
             evaluated in chunks so that a whole test split (3DPW: ~35k frames) fits in memory
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from lsr1.meta import run
from lsr1.optim.base import Optimizer
from lsr1.tasks import Problem, Quadratic

__all__ = ["Curves", "Method", "StepCurves", "curves", "markdown_table", "newton_cosine", "plot_curves", "step_curves"]


@dataclass
class Curves:
    name: str
    objective: Tensor  # (K+1,) mean over problems of f(x_k)
    gap: Tensor  # (K+1,) mean f(x_k) - f*
    distance: Tensor  # (K+1,) mean ||x_k - x*|| / ||x_0 - x*||
    newton_cosine: Tensor | None  # (K,) mean cos(x_k - x_{k-1}, -H^{-1} g_{k-1}); quadratics only
    evaluations: Tensor | None  # (K,) mean function evaluations per step (line searches)

    def as_dict(self) -> dict[str, list[float] | str]:
        out: dict[str, list[float] | str] = {"name": self.name}
        for key in ("objective", "gap", "distance", "newton_cosine", "evaluations"):
            value = getattr(self, key)
            if value is not None:
                out[key] = [float(v) for v in value]
        return out

    def series(self, metric: str) -> Tensor | None:
        return getattr(self, metric)


@dataclass
class StepCurves:
    name: str
    metrics: dict[str, Tensor]  # metric -> (K+1,) mean over problems of evaluation_metrics(x_k)[metric]

    def as_dict(self) -> dict[str, list[float] | str]:
        return {"name": self.name} | {key: [float(v) for v in value] for key, value in self.metrics.items()}

    def series(self, metric: str) -> Tensor | None:
        return self.metrics.get(metric)


# A method to evaluate: given a chunk of problems, the optimizer and the problem it starts from (the
# chunk itself, or a copy with another x0, e.g. L-BFGS from a learned initializer's prediction)
Method = Callable[[Problem], tuple[Optimizer, Problem]]


def step_curves(problem: Problem, methods: dict[str, Method], steps: int, chunk: int = 1024) -> list[StepCurves]:
    """Run every method for `steps` iterations (no graph, eval mode) on `chunk` problems at a time and
    average `problem.evaluation_metrics` over all problems at every iterate x_0..x_K, and "evaluations":
    the evaluations of f and its gradient spent by step k (one per step, or a line search's trials)."""
    sums: dict[str, dict[str, Tensor]] = {name: {} for name in methods}
    for start in range(0, problem.batch_size, chunk):
        part = problem.select(slice(start, start + chunk))
        for name, method in methods.items():
            optimizer, begin = method(part)
            result = run(optimizer, begin, steps)
            per_step = result.info.get("evaluations", torch.ones(steps, part.batch_size)).double().sum(1).cpu()
            spent = sums[name].setdefault("evaluations", torch.zeros(steps + 1, dtype=torch.float64))
            spent[1:] += per_step.cumsum(0)
            for k, x in enumerate(result.iterates):
                for metric, value in part.evaluation_metrics(x).items():
                    total = sums[name].setdefault(metric, torch.zeros(steps + 1, dtype=torch.float64))
                    total[k] += value.double().sum().cpu()
    return [StepCurves(name, {metric: total / problem.batch_size for metric, total in totals.items()}) for name, totals in sums.items()]


def newton_cosine(problem: Quadratic, iterates: Tensor) -> Tensor:
    """cos(x_k - x_{k-1}, -H^{-1} g(x_{k-1})) for iterates (K+1, B, N) -> (K, B)."""
    steps = iterates[1:] - iterates[:-1]
    newton = torch.stack([problem.newton_direction(problem.grad(x)) for x in iterates[:-1]])
    return torch.nn.functional.cosine_similarity(steps, newton, dim=-1)


def curves(name: str, optimizer: Optimizer, problem: Problem, steps: int) -> Curves:
    """Run `optimizer` for `steps` iterations on `problem` (no graph, eval mode) and average over problems."""
    result = run(optimizer, problem, steps)
    x_star = problem.x_star
    if x_star is None:
        raise ValueError(f"curves need problems with a known optimum, got {type(problem).__name__}")
    f_star = problem.value(x_star)
    start = (problem.x0 - x_star).norm(dim=-1)
    distance = (result.iterates - x_star).norm(dim=-1) / start
    cosine = newton_cosine(problem, result.iterates).mean(-1) if isinstance(problem, Quadratic) else None
    evaluations = result.info["evaluations"].double().mean(-1) if "evaluations" in result.info else None
    return Curves(name, result.values.mean(-1), (result.values - f_star).mean(-1), distance.mean(-1), cosine, evaluations)


def markdown_table(all_curves: list[Curves] | list[StepCurves], metric: str, at: list[int]) -> str:
    """A table of `metric` (objective, gap, distance, newton_cosine; or a StepCurves metric) at the given iterations."""
    header = "| optimizer | " + " | ".join(f"k = {k}" for k in at) + " |"
    rows = [header, "|" + "---|" * (len(at) + 1)]
    for c in all_curves:
        values = c.series(metric)
        if values is None:
            continue
        # per-step values start at step 1; a StepCurves' evaluations are cumulative from x_0 (0 there)
        offset = 1 if metric == "newton_cosine" or (metric == "evaluations" and isinstance(c, Curves)) else 0
        cells = [f"{float(values[k - offset]):.4g}" if 0 <= k - offset < len(values) else "" for k in at]
        rows.append(f"| {c.name} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def plot_curves(
    groups: dict[str, list[Curves]] | dict[str, list[StepCurves]], metric: str, path: str | Path, ylabel: str, log: bool = False
) -> Path:
    """One panel per group (e.g. per buffer size), one line per optimizer; saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 3.4), squeeze=False, sharey=True)
    for ax, (title, group) in zip(axes[0], groups.items()):
        for c in group:
            values = c.series(metric)
            if values is None:
                continue
            start = 1 if metric == "newton_cosine" else 0
            ax.plot(range(start, start + len(values)), values.numpy(), marker="o", markersize=3, label=c.name)
        ax.set_title(title)
        ax.set_xlabel("iteration k")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if log:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(ylabel)
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
