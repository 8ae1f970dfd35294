"""Iterations to a relative suboptimality of 1e-6: learned BFGS step sizes against their paper's baselines.

    python -m lsr1.iterations [--dims 10 20 50 100] [--problems 32] [--out docs/bfgs_steps]

On held-out problems of each convex family (`lsr1.tasks.convex`, seeds never used in training, float64),
every method runs until (f(x_k) - f*) / (f(x_0) - f*) <= 1e-6 or --max-steps:

    BFGS-LSTM               the shipped `bfgs_steps_<family>` model (learned coordinate-wise step sizes)
    BFGS-Armijo             BFGS with a backtracking (Armijo) line search
    BFGS fixed step         BFGS with the scalar step 1
    BFGS-HD scalar / coord  BFGS with hypergradient-descent step sizes (Baydin et al. 2018)

Per family and dimension: the median iterations and gradient evaluations (line searches add function
evaluations, counted separately) over the problems that converged, how many did, and the speed-up of the
learned model over the best scalar / hypergradient method (the paper reports "up to 4x"). Writes
results.md, iterations.csv and iterations.png into --out.
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
from collections.abc import Callable
from pathlib import Path

import torch

from lsr1 import pretrained
from lsr1.meta import run
from lsr1.optim import BFGS, HypergradientBFGS, Optimizer
from lsr1.tasks.base import derive_seed
from lsr1.tasks.convex import FAMILIES, ConvexProblem, convex_problems

__all__ = ["METHODS", "iterations_to_tolerance", "main"]

log = logging.getLogger("lsr1.iterations")

TOLERANCE = 1e-6
LEARNED = "BFGS-LSTM"
METHODS: dict[str, Callable[[ConvexProblem, str], Optimizer]] = {
    LEARNED: lambda p, family: pretrained.load(f"bfgs_steps_{family}", dtype=torch.float64),
    "BFGS-Armijo": lambda p, family: BFGS(p, line_search="armijo"),
    "BFGS fixed step": lambda p, family: BFGS(p, line_search="fixed", lr=1.0),
    "BFGS-HD scalar": lambda p, family: HypergradientBFGS(per_coordinate=False),
    "BFGS-HD coord": lambda p, family: HypergradientBFGS(per_coordinate=True),
}
SCALAR_AND_HD = ("BFGS fixed step", "BFGS-HD scalar", "BFGS-HD coord")


def iterations_to_tolerance(
    optimizer: Optimizer, problem: ConvexProblem, max_steps: int, tolerance: float = TOLERANCE
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,) iterations until the relative suboptimality is <= tolerance (inf where never) and (B,) function
    evaluations of line searches up to then (0 for methods without one)."""
    result = run(optimizer, problem, max_steps)
    reached = torch.stack([problem.relative_suboptimality(x) <= tolerance for x in result.iterates])  # (K+1, B)
    first = torch.where(reached.any(0), reached.double().argmax(0), torch.full_like(reached[0], math.inf, dtype=torch.float64))
    evaluations = result.info.get("evaluations")
    if evaluations is None:
        return first, torch.zeros_like(first)
    cumulative = torch.cat([torch.zeros_like(evaluations[:1]), evaluations.double().cumsum(0)])  # after k steps
    index = torch.where(torch.isfinite(first), first, torch.full_like(first, max_steps)).long()
    return first, cumulative.gather(0, index.unsqueeze(0)).squeeze(0)


def _median(values: torch.Tensor) -> float:
    finite = values[torch.isfinite(values)]
    return float(finite.median()) if len(finite) else math.inf


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lsr1.iterations", description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--dims", type=int, nargs="+", default=[10, 20, 50, 100])
    parser.add_argument("--problems", type=int, default=32, help="held-out problems per family and dimension")
    parser.add_argument("--cond", type=float, default=100.0, help="condition number of the data (training: 100)")
    parser.add_argument("--max-steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("docs/bfgs_steps"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)  # results are per-iteration counts; one thread keeps the run reproducible
    rows = []
    for family in args.families:
        for n in args.dims:
            problem = convex_problems(family, args.problems, n, derive_seed(args.seed, "iterations", family, n), args.cond, torch.float64)
            row = {"family": family, "N": n}
            for name, make in METHODS.items():
                its, evals = iterations_to_tolerance(make(problem, family), problem, args.max_steps)
                solved = torch.isfinite(its)
                row[f"{name} iterations"] = _median(its)
                row[f"{name} solved"] = int(solved.sum())
                row[f"{name} f-evals"] = _median(torch.where(solved, evals, math.inf)) if bool(evals.any()) else 0.0
            best = min(row[f"{m} iterations"] for m in SCALAR_AND_HD)
            row["speed-up vs best scalar/HD"] = best / row[f"{LEARNED} iterations"]
            rows.append(row)
            log.info("%s N=%d: %s", family, n, ", ".join(f"{m} {row[f'{m} iterations']:.0f}" for m in METHODS))
    _write(rows, args)
    print((args.out / "results.md").read_text())
    return 0


def _write(rows: list[dict], args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "iterations.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    cell = lambda v: "—" if v == math.inf else f"{v:.0f}"  # noqa: E731
    header = "| family | N | " + " | ".join(METHODS) + " | speed-up vs best scalar/HD |"
    lines = [header, "|" + "---|" * (len(METHODS) + 3)]
    for r in rows:
        its = " | ".join(f"{cell(r[f'{m} iterations'])} ({r[f'{m} solved']}/{args.problems})" for m in METHODS)
        lines.append(f"| {r['family']} | {r['N']} | {its} | {r['speed-up vs best scalar/HD']:.2f}x |")
    evals = [f"| {r['family']} | {r['N']} | {cell(r['BFGS-Armijo f-evals'])} |" for r in rows]
    (args.out / "results.md").write_text(
        f"# Iterations to a relative suboptimality of {TOLERANCE:g}\n\n"
        f"Median over the problems that reached it within {args.max_steps} iterations (how many did, of "
        f"{args.problems}); held-out problems, data condition number {args.cond:g}, float64. Every method takes "
        "one gradient per iteration; BFGS-Armijo's line search also evaluates f.\n\n"
        f"Command: `python -m lsr1.iterations --dims {' '.join(map(str, args.dims))} --problems {args.problems} "
        f"--cond {args.cond:g} --max-steps {args.max_steps} --out {args.out}`\n\n"
        + "\n".join(lines)
        + "\n\n## Function evaluations of BFGS-Armijo's line searches (median, to the tolerance)\n\n"
        "| family | N | f-evals |\n|---|---|---|\n" + "\n".join(evals) + "\n"
    )
    families = sorted({r["family"] for r in rows}, key=list(FAMILIES).index)
    fig, axes = plt.subplots(1, len(families), figsize=(4.4 * len(families), 3.4), squeeze=False)
    for ax, family in zip(axes[0], families):
        mine = [r for r in rows if r["family"] == family]
        dims = [r["N"] for r in mine]
        for name in METHODS:
            ax.plot(dims, [r[f"{name} iterations"] for r in mine], marker="o", label=name)
        ax.set_xscale("log")
        ax.set_xticks(dims, [str(d) for d in dims])
        ax.set_title(family)
        ax.set_xlabel("dimension N")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"median iterations to {TOLERANCE:g}")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out / "iterations.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
