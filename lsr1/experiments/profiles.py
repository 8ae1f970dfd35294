"""Performance profiles (Dolan & Moré 2002; paper Sec. 5.1.2, Eq. 11) on the 30 analytic test problems.

    python -m lsr1.profiles [--steps 100] [--out runs/profiles]

Problems: diagonal quadratics (b = 0) with condition numbers 1, 100, 1000 and 10000, Rosenbrock and
Rastrigin, each at N in {50, 100, 250, 500, 1000}, from fixed seeded starting points. Every solver runs the
same number of steps; m_{p,s} = ||x_hat - x*|| / ||x_worst - x*||, r_{p,s} = m_{p,s} / min_s m_{p,s} and
rho_s(tau) = |{p : r_{p,s} <= tau}| / |P|. "L-SR1 (official)" is the authors' module trained by their protocol on
the problem's family (quadratic100_official, rosenbrock_official, rastrigin_official), at its trained L = 4, and
"L-SR1 (official) ablation" the same with its learned terms off (x - alpha1 g, alpha1 the family's).
"L-SR1" (the project's formulation) and "L-SR1 w/o projection" are tuned like the learning rates below: per
kind, the model (the family's own, `_noproj` without the secant penalty, or for "L-SR1" also the
general-purpose `mix`, `mix_lbfgs` and `mix_lbfgs_long`), the test-time L of BUFFER_GRID, for a model with the L-BFGS
operator its L-BFGS memory (as trained, or L-BFGS's 64), and for a model with global features whether
their step index is held at the last step meta-training reached (`cap_step_index`: the models were
meta-trained on 16 to 64 steps and run here for 100), with the best tuning score. "L-SR1 + Armijo" is
"L-SR1" with Armijo backtracking along each learned step (`lsr1.optim.Backtracked`, as `lsr1.LearnedSR1`
does), tuned the same way: L-BFGS's steps come from a line search too. "L-SR1 ablation" and "L-SR1 ablation +
Armijo" are the two with each setting's learned terms off (`without_learned_terms`: v = 0, every step size
gamma1, the same base operator), tuned over the same settings: what the learning adds is the distance to them.
The second learned optimizer, BFGS-LSTM (learned coordinate-wise BFGS step sizes), was meta-trained on
convex families only: the quadratics get its least-squares model, Rosenbrock and Rastrigin its log-sum-exp
model (the non-quadratic one); it keeps a dense N x N BFGS matrix.
The learning rates of GD, Adam and AdaHessian are tuned per kind (quadratic, Rosenbrock, Rastrigin) by a
grid, written to the output with the chosen values, on other functions of the kind (`tuning_set`): diagonal
quadratics of other condition numbers, Rosenbrock and Rastrigin with other coefficients, all at other
dimensions. No test function is used for tuning, not even at other starting points.
A solver whose iterate is not finite at the end has r = inf on that problem.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lsr1 import pretrained
from lsr1.learned import without_learned_terms
from lsr1.meta import run
from lsr1.optim import LBFGS, AdaHessian, Adam, Backtracked, GradientDescent
from lsr1.optim.base import Optimizer
from lsr1.tasks import Problem, derive_seed, diagonal_quadratics, rastrigin, rosenbrock

__all__ = [
    "FAMILIES",
    "DIMS",
    "LR_GRID",
    "ProfileResult",
    "ProfileProblem",
    "performance_ratios",
    "profile",
    "run_profiles",
    "evaluation_problems",
]

log = logging.getLogger(__name__)

FAMILIES = ("quadratic_cond1", "quadratic_cond100", "quadratic_cond1000", "quadratic_cond10000", "rosenbrock", "rastrigin")
DIMS = (50, 100, 250, 500, 1000)
LR_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0)
BUFFER_SIZE = 64  # test-time L of Table 7, and the L-BFGS memory
BUFFER_GRID = (8, 16, 32, 64)  # the test-time L that the project's L-SR1 solvers are tuned over
LEARNED_MODEL = {"quadratic": "quadratic100", "rosenbrock": "rosenbrock", "rastrigin": "rastrigin"}
GENERAL_MODELS = ("mix", "mix_lbfgs", "mix_lbfgs_long")  # general-purpose models that "L-SR1" is also tuned over
BFGS_STEPS_MODEL = {"quadratic": "bfgs_steps_least_squares", "rosenbrock": "bfgs_steps_logsumexp", "rastrigin": "bfgs_steps_logsumexp"}
RELATIVE_FLOOR = 1e-15  # distances below this fraction of the start count as exact (keeps ratios finite)


@dataclass(frozen=True)
class ProfileProblem:
    family: str
    dim: int
    problem: Problem  # one objective (B = 1)

    @property
    def name(self) -> str:
        return f"{self.family}_n{self.dim}"

    @property
    def kind(self) -> str:
        """quadratic, rosenbrock or rastrigin: which learned model and which tuned learning rate apply."""
        return self.family.split("_")[0]


def make_problem(family: str, dim: int, seed: int) -> Problem:
    if family.startswith("quadratic_cond"):
        return diagonal_quadratics(1, dim, seed, cond=float(family.removeprefix("quadratic_cond")), dtype=torch.float64)
    if family == "rosenbrock":
        return rosenbrock(1, dim, seed, dtype=torch.float64)
    if family == "rastrigin":
        return rastrigin(1, dim, seed, dtype=torch.float64)
    raise ValueError(f"unknown problem family {family!r}; valid: {list(FAMILIES)}")


def evaluation_problems(seed: int = 0, dims: tuple[int, ...] = DIMS, families: tuple[str, ...] = FAMILIES) -> list[ProfileProblem]:
    """The 30 test problems (6 families x 5 dimensions), each from its own seeded starting point."""
    return [ProfileProblem(f, n, make_problem(f, n, derive_seed(seed, "profiles-test", f, n))) for f in families for n in dims]


TUNING_DIMS = (30, 75)


def tuning_set(seed: int = 0) -> list[ProfileProblem]:
    """Functions of each kind that are not in the test set, for tuning learning rates: diagonal quadratics
    with condition numbers 10, 300 and 3000 (the test has 1, 100, 1000, 10000), Rosenbrock with
    coefficient 30 and 300 (test: 100), Rastrigin with amplitude 5 and 20 (test: 10), at N = 30 and 75."""

    def seeded(name: str, n: int) -> int:
        return derive_seed(seed, "profiles-tuning", name, n)

    out = []
    for n in TUNING_DIMS:
        out += [
            ProfileProblem(f"quadratic_cond{c:g}", n, diagonal_quadratics(1, n, seeded(f"quadratic{c:g}", n), cond=c, dtype=torch.float64))
            for c in (10.0, 300.0, 3000.0)
        ]
        out += [
            ProfileProblem(f"rosenbrock_c{c:g}", n, rosenbrock(1, n, seeded(f"rosenbrock{c:g}", n), dtype=torch.float64, coefficient=c))
            for c in (30.0, 300.0)
        ]
        out += [
            ProfileProblem(f"rastrigin_a{a:g}", n, rastrigin(1, n, seeded(f"rastrigin{a:g}", n), dtype=torch.float64, amplitude=a))
            for a in (5.0, 20.0)
        ]
    return out


Setting = (
    Any  # what a solver is tuned over: a learning rate, or (shipped model, test-time L, L-BFGS memory or None, step index held or None)
)
SolverFactory = Callable[[ProfileProblem, Setting], Optimizer]
Grid = Callable[[str], tuple[Setting, ...]] | None  # kind -> the settings to tune over; None: not tuned


def hand_designed_solvers() -> dict[str, tuple[SolverFactory, Grid]]:
    """name -> (factory(problem, setting), the grid its learning rate is tuned over)."""
    return {
        "L-BFGS": (lambda p, lr: LBFGS(p.problem, memory=BUFFER_SIZE), None),
        "Adam": (lambda p, lr: Adam(lr), lambda kind: LR_GRID),
        "AdaHessian": (lambda p, lr: AdaHessian(p.problem, lr=lr), lambda kind: LR_GRID),
        "GD": (lambda p, lr: GradientDescent(lr), lambda kind: LR_GRID),
    }


def _shipped(setting: tuple[str, int | None, int | None, bool | None]) -> Optimizer:
    name, buffer_size, lbfgs_memory, cap_step_index = setting
    return pretrained.load(name, buffer_size=buffer_size, dtype=torch.float64, lbfgs_memory=lbfgs_memory, cap_step_index=cap_step_index)


def _settings(name: str) -> tuple[Setting, ...]:
    """Every (name, L, m, hold) a shipped model is tuned over: each test-time L; the L-BFGS memory as
    trained, and L-BFGS's own where it has the operator; the step index as trained, and held where it has
    global features that it does not hold already. Options added after a model was trained are absent
    from its stored config: off."""
    config = pretrained.info(name)["config"]["lsr1"]  # read once: info loads the checkpoint
    memories = (None, BUFFER_SIZE) if config.get("lbfgs_memory") else (None,)
    caps = (None, True) if config.get("global_features") and not config.get("cap_step_index") else (None,)
    return tuple((name, size, m, cap) for size in BUFFER_GRID for m in memories for cap in caps)


def _models(suffix: str, general: tuple[str, ...] = ()) -> Grid:
    return lambda kind: tuple(setting for name in (LEARNED_MODEL[kind] + suffix, *general) for setting in _settings(name))


def learned_solvers() -> dict[str, tuple[SolverFactory, Grid]]:
    """L-SR1 (ours, ours with Armijo backtracking, each beside its ablation, and ours without its secant penalty:
    model and L tuned; the authors' one as trained) and BFGS-LSTM, from the shipped models."""
    return {
        "L-SR1": (lambda p, setting: _shipped(setting), _models("", GENERAL_MODELS)),
        "L-SR1 + Armijo": (lambda p, setting: Backtracked(_shipped(setting)), _models("", GENERAL_MODELS)),
        # the same, each setting with its learned terms off (v = 0, every step size gamma1): what the learning adds
        "L-SR1 ablation": (lambda p, setting: without_learned_terms(_shipped(setting)), _models("", GENERAL_MODELS)),
        "L-SR1 ablation + Armijo": (lambda p, setting: Backtracked(without_learned_terms(_shipped(setting))), _models("", GENERAL_MODELS)),
        "L-SR1 w/o projection": (lambda p, setting: _shipped(setting), _models("_noproj")),
        "L-SR1 (official)": (lambda p, _: _shipped((LEARNED_MODEL[p.kind] + "_official", None, None, None)), None),
        "L-SR1 (official) ablation": (
            lambda p, _: without_learned_terms(_shipped((LEARNED_MODEL[p.kind] + "_official", None, None, None))),
            None,
        ),
        "BFGS-LSTM": (lambda p, _: pretrained.load(BFGS_STEPS_MODEL[p.kind], dtype=torch.float64), None),
    }


def learned_models(problems: list[ProfileProblem]) -> set[str]:
    """The shipped models that the learned solvers need on these problems."""
    return (
        {LEARNED_MODEL[p.kind] + s for p in problems for s in ("", "_noproj", "_official")}
        | set(GENERAL_MODELS)
        | {BFGS_STEPS_MODEL[p.kind] for p in problems}
    )


def relative_distance(solver: Optimizer, p: ProfileProblem, steps: int) -> float:
    """||x_K - x*|| / ||x_0 - x*|| (inf if x_K is not finite)."""
    x_star = p.problem.x_star
    x_final = run(solver, p.problem, steps).x
    if not bool(torch.isfinite(x_final).all()):
        return math.inf
    return float((x_final - x_star).norm() / (p.problem.x0 - x_star).norm())


def label(setting: Setting) -> str:
    """A setting as tuning.json and results.md write it: "0.3", "mix, L = 64" or
    "mix_lbfgs, L = 8, m = 64, step index held"."""
    if not isinstance(setting, tuple):
        return f"{setting:g}"
    name, size, memory, cap = setting
    return f"{name}, L = {size}" + ("" if memory is None else f", m = {memory}") + (", step index held" if cap else "")


def tune(
    factory: SolverFactory, problems: list[ProfileProblem], steps: int, grid: tuple[Setting, ...] = LR_GRID
) -> tuple[Setting, dict[str, float]]:
    """The grid value with the lowest mean log10 relative distance (a diverged run scores +10)."""
    if not problems:
        raise ValueError("tuning needs at least one problem of the family")
    scores = {}
    for setting in grid:
        logs = [min(math.log10(max(relative_distance(factory(p, setting), p, steps), RELATIVE_FLOOR)), 10.0) for p in problems]
        scores[label(setting)] = sum(logs) / len(logs)
    return min(grid, key=lambda setting: scores[label(setting)]), scores


def performance_ratios(distances: Tensor) -> Tensor:
    """distances (P, S) of the final iterates to x* -> r (P, S) of Eq. 11 (inf where a solver diverged)."""
    finite = torch.isfinite(distances)
    worst = torch.where(finite, distances, torch.zeros_like(distances)).amax(1, keepdim=True)
    m = distances / worst.clamp_min(torch.finfo(distances.dtype).tiny)  # m_{p,s}
    best = torch.where(finite, m, torch.full_like(m, math.inf)).amin(1, keepdim=True)
    return m / best.clamp_min(torch.finfo(distances.dtype).tiny)


def profile(ratios: Tensor, taus: Tensor) -> Tensor:
    """rho_s(tau): the fraction of problems with r_{p,s} <= tau; ratios (P, S), taus (T,) -> (S, T)."""
    return (ratios.unsqueeze(-1) <= taus).double().mean(0)


@dataclass
class ProfileResult:
    problems: list[str]
    solvers: list[str]
    distances: Tensor  # (P, S) ||x_K - x*|| / ||x_0 - x*||, floored at RELATIVE_FLOOR
    ratios: Tensor  # (P, S)
    tuning: dict[str, dict]  # solver -> kind -> {"chosen": label, "scores": {label: mean log10 distance}}
    steps: int
    seconds: float

    def area(self, taus: Tensor) -> Tensor:
        """Area under each solver's profile over log10(tau) (higher is better), normalised to [0, 1]."""
        rho = profile(self.ratios, taus)
        return torch.trapezoid(rho, torch.log10(taus), dim=-1) / float(torch.log10(taus[-1] / taus[0]))

    def wins(self) -> Tensor:
        """How many problems each solver is best on (ratio 1; ties count for all)."""
        return (self.ratios <= 1.0 + 1e-12).sum(0)


def run_profiles(
    solvers: dict[str, tuple[SolverFactory, Grid]], problems: list[ProfileProblem], steps: int, tuning_problems: list[ProfileProblem]
) -> ProfileResult:
    """Tune what needs tuning (per family kind), run every solver on every problem, compute the ratios."""
    tic = time.time()
    tuning: dict[str, dict] = {}
    chosen: dict[tuple[str, str], Setting] = {}
    for name, (factory, grid) in solvers.items():
        if grid is None:
            continue
        tuning[name] = {}
        for kind in sorted({p.kind for p in problems}):
            setting, scores = tune(factory, [p for p in tuning_problems if p.kind == kind], steps, grid(kind))
            chosen[name, kind] = setting
            tuning[name][kind] = {"chosen": label(setting), "scores": scores}
            log.info("tuned %s on %s: %s", name, kind, label(setting))
    distances = torch.empty(len(problems), len(solvers), dtype=torch.float64)
    for i, p in enumerate(problems):
        for j, (name, (factory, _)) in enumerate(solvers.items()):
            distances[i, j] = max(relative_distance(factory(p, chosen.get((name, p.kind))), p, steps), RELATIVE_FLOOR)
        log.info("%-26s %s", p.name, "  ".join(f"{d:9.3g}" for d in distances[i].tolist()))
    ratios = performance_ratios(distances)
    return ProfileResult([p.name for p in problems], list(solvers), distances, ratios, tuning, steps, time.time() - tic)


def write_outputs(result: ProfileResult, out: Path, taus: Tensor) -> None:
    """profile.png, distances.csv (m before normalisation, per problem and solver), results.md, tuning.json."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    rho = profile(result.ratios, taus)
    fig, ax = plt.subplots(figsize=(6, 4))
    for s, name in enumerate(result.solvers):
        ax.step(taus.numpy(), rho[s].numpy(), where="post", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("tau")
    ax.set_ylabel("rho_s(tau)")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"Performance profiles: {len(result.problems)} problems, {result.steps} steps")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "profile.png", dpi=120)
    plt.close(fig)
    with (out / "distances.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["problem", *result.solvers])
        for name, row in zip(result.problems, result.distances.tolist()):
            writer.writerow([name, *[f"{v:.6g}" for v in row]])
    (out / "tuning.json").write_text(
        json.dumps(
            {
                "criterion": "mean log10 ||x_K - x*|| / ||x_0 - x*|| on the tuning functions (tuning_set: other functions of each kind, other N)",
                "solvers": result.tuning,
            },
            indent=1,
        )
    )
    area, wins = result.area(taus), result.wins()
    lines = [
        f"# Performance profiles ({len(result.problems)} problems, {result.steps} steps each)\n",
        "| solver | area under rho(tau), log tau in [1, 1e4] | wins | rho(1) | rho(10) | rho(100) |",
        "|---|---|---|---|---|---|",
    ]
    for s, name in enumerate(result.solvers):
        at = [float(profile(result.ratios[:, s : s + 1], torch.tensor([t], dtype=torch.float64))[0, 0]) for t in (1.0, 10.0, 100.0)]
        lines.append(f"| {name} | {float(area[s]):.3f} | {int(wins[s])} | {at[0]:.2f} | {at[1]:.2f} | {at[2]:.2f} |")
    lines += ["", "Tuned settings (learning rates; shipped model and L), with every grid value's score in tuning.json:", ""]
    for name, kinds in result.tuning.items():
        lines.append(f"- {name}: " + ", ".join(f"{kind} {v['chosen']}" for kind, v in kinds.items()))
    lines += [
        "",
        "Relative distance ||x_K - x*|| / ||x_0 - x*|| per problem:",
        "",
        "| problem | " + " | ".join(result.solvers) + " |",
        "|---" * (len(result.solvers) + 1) + "|",
    ]
    for name, row in zip(result.problems, result.distances.tolist()):
        lines.append(f"| {name} | " + " | ".join(f"{v:.3g}" for v in row) + " |")
    lines.append(f"\nWall time {result.seconds:.0f} s.")
    (out / "results.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lsr1.profiles", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="iterations of every solver on every problem")
    parser.add_argument("--out", type=Path, default=Path("runs/profiles"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dims", type=int, nargs="+", default=list(DIMS))
    parser.add_argument("--no-learned", action="store_true", help="hand-designed solvers only")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    solvers = {**({} if args.no_learned else learned_solvers()), **hand_designed_solvers()}
    try:
        problems = evaluation_problems(args.seed, tuple(args.dims))
        if not args.no_learned:
            missing = sorted(learned_models(problems) - set(pretrained.available()))
            if missing:
                raise ValueError(f"shipped models {missing} are missing (available: {pretrained.available()}); use --no-learned")
        result = run_profiles(solvers, problems, args.steps, tuning_set(args.seed))
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    taus = torch.logspace(0, 4, 200, dtype=torch.float64)
    write_outputs(result, args.out, taus)
    area, wins = result.area(taus), result.wins()
    print(f"\n{'solver':24}{'profile area':>14}{'wins':>6}")
    for s, name in enumerate(result.solvers):
        print(f"{name:24}{float(area[s]):14.3f}{int(wins[s]):6d}")
    print(
        f"\n{len(result.problems)} problems x {len(result.solvers)} solvers in {result.seconds:.0f} s; wrote {args.out}/profile.png, distances.csv, results.md, tuning.json"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
