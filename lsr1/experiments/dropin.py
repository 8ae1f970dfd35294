"""`lsr1.LearnedSR1` as a drop-in optimizer against the best learning rate of `torch.optim.Adam`, its own model
with the learned terms off (`lsr1.learned.without_learned_terms`) and `torch.optim.LBFGS`, on a held-out set of
small problems written as a user writes them (an nn.Module, data, a loss).

    python -m lsr1.dropin [--pretrained mix_lbfgs_long] [--evaluations 100] [--split test] [--out runs/dropin]

The problems: least squares, logistic regression, two small MLPs (regression and classification) and
random quadratics of N = 5, 20 and 50, each at two seeds. None is a training problem of a shipped model:
the quadratics are drawn from their own seeds (the `quadratic` models trained at N = 2; the `mix`
models saw random quadratics of the same kind at N = 5 to 50, from other seeds), and least squares and
logistic regression are built here as a user builds them (nn.Linear on Gaussian data), not by the
generators the `mix` models trained on (`lsr1.tasks.convex`: conditioned design matrices); the MLPs have
two hidden layers of 16 units, while the MLPs of the `mlp` training task (`lsr1.tasks.mlp`; no shipped
model) have one hidden layer of 2-8. `--split validation` draws the same 18 problems from other seeds:
models are chosen there, never on the test split.

The budget is the same number of loss-and-gradient evaluations (closure calls) for every method, so the
Armijo backtracking of LearnedSR1 (its default) is paid for. Adam gets its best learning rate of a grid,
chosen on each problem itself: the most favourable setting for the baseline, and none for LearnedSR1,
which has no learning rate. The figure is the final loss; LearnedSR1 wins a problem where its final loss
is below best-of-grid Adam's by more than 0.1 % (closer is a tie: both reached the same point). Threads: torch.set_num_threads(1). Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from lsr1.learned import LSR1, without_learned_terms
from lsr1.optimizer import LearnedSR1
from lsr1.pretrained import load
from lsr1.tasks import derive_seed, make_generator, random_quadratics

__all__ = ["ADAM_LRS", "SPLITS", "TIE", "DropInProblem", "compare", "problems", "run_adam", "run_lbfgs", "run_learned"]

ADAM_LRS = (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0)
TIE = 1e-3  # final losses within 0.1 % of each other: the same point (both converged), neither wins
SEED = 20261202
SPLITS = ("test", "validation")


@dataclass(frozen=True)
class DropInProblem:
    """A fresh model (seeded, the same every call) and its loss."""

    name: str
    build: Callable[[], tuple[nn.Module, Callable[[], Tensor]]]


def _least_squares(rows: int, cols: int, seed: int) -> Callable[[], tuple[nn.Module, Callable[[], Tensor]]]:
    def build() -> tuple[nn.Module, Callable[[], Tensor]]:
        gen = make_generator(seed)
        a = torch.randn(rows, cols, generator=gen) * torch.logspace(0, -1, cols)  # cond(A) about 10
        b = a @ torch.randn(cols, generator=gen) + 0.1 * torch.randn(rows, generator=gen)
        model = nn.Linear(cols, 1, bias=False)
        nn.init.zeros_(model.weight)
        return model, lambda: 0.5 * (model(a).squeeze(-1) - b).pow(2).mean()

    return build


def _logistic(rows: int, cols: int, seed: int) -> Callable[[], tuple[nn.Module, Callable[[], Tensor]]]:
    def build() -> tuple[nn.Module, Callable[[], Tensor]]:
        gen = make_generator(seed)
        x = torch.randn(rows, cols, generator=gen)
        labels = (x @ torch.randn(cols, generator=gen) + 0.5 * torch.randn(rows, generator=gen) > 0).float()
        model = nn.Linear(cols, 1)
        nn.init.zeros_(model.weight)
        nn.init.zeros_(model.bias)
        weight_decay = 1e-3  # strictly convex, so the minimum is finite on separable draws
        loss = nn.BCEWithLogitsLoss()
        return model, lambda: loss(model(x).squeeze(-1), labels) + 0.5 * weight_decay * model.weight.pow(2).sum()

    return build


def _mlp(task: str, seed: int) -> Callable[[], tuple[nn.Module, Callable[[], Tensor]]]:
    def build() -> tuple[nn.Module, Callable[[], Tensor]]:
        gen = make_generator(seed)
        x = torch.randn(128, 4, generator=gen)
        torch.manual_seed(seed % (2**31))  # the model's initial weights
        model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 1 if task == "regression" else 3))
        if task == "regression":
            y = torch.sin(x @ torch.randn(4, generator=gen)) + 0.1 * torch.randn(128, generator=gen)
            return model, lambda: (model(x).squeeze(-1) - y).pow(2).mean()
        labels = (x[:, :3] + 0.3 * torch.randn(128, 3, generator=gen)).argmax(-1)
        loss = nn.CrossEntropyLoss()
        return model, lambda: loss(model(x), labels)

    return build


def _quadratic(n: int, seed: int) -> Callable[[], tuple[nn.Module, Callable[[], Tensor]]]:
    def build() -> tuple[nn.Module, Callable[[], Tensor]]:
        problem = random_quadratics(1, n, seed, max_cond=1e5)  # N = 50 rarely draws cond(H) <= 1e3
        model = nn.Module()
        model.x = nn.Parameter(problem.x0[0].clone())
        f_star = float(problem.value(problem.x_star)[0])
        return model, lambda: problem.value(model.x.unsqueeze(0))[0] - f_star  # the gap f - f*

    return build


def problems(split: str = "test") -> list[DropInProblem]:
    """The held-out set (18 problems) of `split`: the test problems, or the same kinds from other seeds."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    out = []
    for rep in range(2):

        def seed(*keys: int | str, rep: int = rep) -> int:
            return derive_seed(SEED, *keys, rep) if split == "test" else derive_seed(SEED, split, *keys, rep)

        out += [
            DropInProblem(f"least squares 200x20 #{rep}", _least_squares(200, 20, seed("ls", 20))),
            DropInProblem(f"least squares 500x100 #{rep}", _least_squares(500, 100, seed("ls", 100))),
            DropInProblem(f"logistic regression d=10 #{rep}", _logistic(300, 10, seed("logistic", 10))),
            DropInProblem(f"logistic regression d=50 #{rep}", _logistic(300, 50, seed("logistic", 50))),
            DropInProblem(f"MLP regression #{rep}", _mlp("regression", seed("mlp", "regression"))),
            DropInProblem(f"MLP classification #{rep}", _mlp("classification", seed("mlp", "classification"))),
            DropInProblem(f"quadratic N=5 #{rep}", _quadratic(5, seed("quadratic", 5))),
            DropInProblem(f"quadratic N=20 #{rep}", _quadratic(20, seed("quadratic", 20))),
            DropInProblem(f"quadratic N=50 #{rep}", _quadratic(50, seed("quadratic", 50))),
        ]
    return out


def _final(loss: Callable[[], Tensor]) -> float:
    with torch.no_grad():
        value = float(loss())
    return value if math.isfinite(value) else math.inf


def run_adam(problem: DropInProblem, lr: float, evaluations: int) -> float:
    """Final loss after `evaluations` Adam steps (one closure call each)."""
    model, loss = problem.build()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(evaluations):
        opt.zero_grad()
        value = loss()
        if not torch.isfinite(value):
            return math.inf
        value.backward()
        opt.step()
    return _final(loss)


def _one_step(opt: torch.optim.Optimizer, loss: Callable[[], Tensor]) -> tuple[float, int]:
    """Final loss after one `step(closure)` of an optimizer that evaluates a closure itself (LearnedSR1,
    torch.optim.LBFGS), inf where it refused a NaN / Inf gradient, and the closure calls made."""
    calls = 0

    def closure() -> Tensor:
        nonlocal calls
        calls += 1
        opt.zero_grad()
        value = loss()
        value.backward()
        return value

    try:
        opt.step(closure)
    except RuntimeError:
        return math.inf, calls
    return _final(loss), calls


def run_lbfgs(problem: DropInProblem, evaluations: int) -> float:
    """Final loss of `torch.optim.LBFGS` (strong Wolfe search, history 10) within `evaluations` closure calls."""
    model, loss = problem.build()
    opt = torch.optim.LBFGS(model.parameters(), max_iter=evaluations, max_eval=evaluations, line_search_fn="strong_wolfe")
    return _one_step(opt, loss)[0]


def run_learned(problem: DropInProblem, pretrained: str | LSR1, evaluations: int) -> tuple[float, int]:
    """Final loss of LearnedSR1 after `evaluations` closure calls (line search included), and the calls
    made: one `step` with max_iter = max_eval = evaluations, which ends at the last accepted iterate."""
    model, loss = problem.build()
    return _one_step(LearnedSR1(model.parameters(), pretrained=pretrained, max_iter=evaluations, max_eval=evaluations), loss)


def _better(ours: float, theirs: float) -> str:
    """ "ours", "tie" (within TIE of each other) or "theirs"."""
    if math.isfinite(ours) and abs(ours - theirs) <= TIE * abs(theirs):
        return "tie"
    return "ours" if ours < theirs else "theirs"


def compare(pretrained: str, evaluations: int, progress: bool = True, split: str = "test") -> list[dict]:
    """One row per problem: start, LearnedSR1, the same model without its learned terms (v = 0, step sizes
    gamma1: `without_learned_terms`), torch.optim.LBFGS, best-of-grid Adam and its learning rate, and who is
    better: LearnedSR1 against Adam (`winner`), against its ablation and against L-BFGS."""
    ablation = without_learned_terms(load(pretrained, cap_step_index=True))  # as LearnedSR1 loads a name
    rows, suite = [], problems(split)
    for i, problem in enumerate(suite):
        adam = {lr: run_adam(problem, lr, evaluations) for lr in ADAM_LRS}
        best_lr = min(adam, key=adam.get)
        learned, _ = run_learned(problem, pretrained, evaluations)
        plain, _ = run_learned(problem, ablation, evaluations)
        lbfgs = run_lbfgs(problem, evaluations)
        start = _final(problem.build()[1])
        outcome = {"ours": "LearnedSR1", "tie": "tie", "theirs": "Adam"}[_better(learned, adam[best_lr])]
        rows.append(
            {
                "problem": problem.name,
                "start": start,
                "learned_sr1": learned,
                "ablation": plain,
                "lbfgs": lbfgs,
                "adam": adam[best_lr],
                "adam_lr": best_lr,
                "winner": outcome,
                "vs_ablation": _better(learned, plain),
                "vs_lbfgs": _better(learned, lbfgs),
                "ablation_vs_adam": _better(plain, adam[best_lr]),
            }
        )
        if progress:
            print(
                f"[{i + 1}/{len(suite)}] {problem.name}: LearnedSR1 {learned:.4g}, without learned terms {plain:.4g}, "
                f"L-BFGS {lbfgs:.4g}, Adam {adam[best_lr]:.4g} (lr {best_lr:g})",
                file=sys.stderr,
                flush=True,
            )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lsr1.dropin", description=__doc__.splitlines()[0])
    parser.add_argument("--pretrained", default="mix_lbfgs_long", help="a shipped model (python -m lsr1.pretrained)")
    parser.add_argument("--evaluations", type=int, default=100, help="loss-and-gradient evaluations per method")
    parser.add_argument("--split", choices=SPLITS, default="test", help="the test problems, or other seeds of the same kinds")
    parser.add_argument("--out", type=Path, default=None, help="also write results.json and results.md here")
    args = parser.parse_args(argv)
    if args.evaluations < 1:
        parser.error(f"--evaluations must be >= 1, got {args.evaluations}")
    torch.set_num_threads(1)
    rows = compare(args.pretrained, args.evaluations, split=args.split)
    tally = {who: sum(r["winner"] == who for r in rows) for who in ("LearnedSR1", "tie", "Adam")}
    keys = ("vs_ablation", "vs_lbfgs", "ablation_vs_adam")
    against = {key: {who: sum(r[key] == who for r in rows) for who in ("ours", "tie", "theirs")} for key in keys}
    lines = [
        f"LearnedSR1({args.pretrained!r}) against its ablation (no learned terms), torch.optim.LBFGS and best-of-grid Adam, "
        f"{args.evaluations} evaluations each, {args.split} split",
        "",
        "| problem | start | LearnedSR1 | without learned terms | L-BFGS | best Adam (lr) | better than Adam |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['problem']} | {r['start']:.4g} | {r['learned_sr1']:.4g} | {r['ablation']:.4g} | {r['lbfgs']:.4g} | {r['adam']:.4g} ({r['adam_lr']:g}) "
        f"| {r['winner']} |"
        for r in rows
    ]
    lines += [
        "",
        f"LearnedSR1 better than Adam on {tally['LearnedSR1']} of {len(rows)}, ties {tally['tie']}, Adam better on {tally['Adam']}",
        "LearnedSR1 better than its ablation on {ours}, ties {tie}, worse on {theirs}".format(**against["vs_ablation"]),
        "LearnedSR1 better than L-BFGS on {ours}, ties {tie}, worse on {theirs}".format(**against["vs_lbfgs"]),
        "its ablation better than Adam on {ours}, ties {tie}, Adam better on {theirs}".format(**against["ablation_vs_adam"]),
    ]
    print("\n".join(lines))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(rows, indent=1))
        (args.out / "results.md").write_text("\n".join(lines) + "\n")
    print(
        json.dumps(
            {
                "pretrained": args.pretrained,
                "evaluations": args.evaluations,
                "split": args.split,
                "problems": len(rows),
                "learned_better": tally["LearnedSR1"],
                "ties": tally["tie"],
                "adam_better": tally["Adam"],
                "better_than_ablation": against["vs_ablation"]["ours"],
                "worse_than_ablation": against["vs_ablation"]["theirs"],
                "better_than_lbfgs": against["vs_lbfgs"]["ours"],
                "worse_than_lbfgs": against["vs_lbfgs"]["theirs"],
                "ablation_better_than_adam": against["ablation_vs_adam"]["ours"],
                "adam_better_than_ablation": against["ablation_vs_adam"]["theirs"],
            }
        )
    )


if __name__ == "__main__":
    main()
