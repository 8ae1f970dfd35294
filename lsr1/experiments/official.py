"""The authors' quadratic protocol side by side: their metric, mean ||x_20 - x*||, for modules trained by their
script (`examples/meta_random_quad.py` of gallif/lsr1, run outside this repository, which saves its final
weights and validation batch to an .npz) and by `python -m pipeline.train --config configs/quadratic_official.yaml`
(the best checkpoint), each beside its ablation (`without_learned_terms`: x - alpha1 g, gradient descent at
alpha1) and L-BFGS (m = 4, strong Wolfe) at 20 iterations.

    python -m lsr1.experiments.official --theirs S0.npz S1.npz --ours runs/qo-s0/best.pt runs/qo-s1/best.pt

Every module is scored by their metric on each validation batch of `--theirs`, and by the median gap fraction
(f(x_20) - f*) / (f(x_0) - f*) on fresh D = 2 and D = 10 problems of the same family
(`lsr1.tasks.official_quadratics`, seeds of their own), where their metric would only measure the few
near-singular problems: in eval mode (BatchNorm's running statistics, dropout off: how this project
evaluates) and in train mode with dropout on, as their validation runs (batch statistics over the batch:
problems are coupled and the figure is random; seeded here). Threads: torch.set_num_threads(1). Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from lsr1.checkpoint import config_of, load_checkpoint
from lsr1.learned import without_learned_terms
from lsr1.learned.official import OfficialLSR1
from lsr1.learners import make_learner
from lsr1.meta import unroll
from lsr1.optim import LBFGS
from lsr1.pretrained import from_official
from lsr1.tasks import Quadratic, official_quadratics

__all__ = ["distance", "final_point", "gap_fraction", "main"]

STEPS = 20


def final_point(optimizer: object, problem: Quadratic, mode: str, seed: int = 0) -> Tensor:
    """x_STEPS of `optimizer` on `problem`; mode "eval" or "train" (a module's BatchNorm on batch statistics
    and dropout on, as their validation; on a copy, whose running statistics it updates)."""
    torch.manual_seed(seed)
    if isinstance(optimizer, torch.nn.Module):
        optimizer = copy.deepcopy(optimizer).train() if mode == "train" else optimizer.eval()
    with torch.no_grad():
        return unroll(optimizer, problem, STEPS).x


def distance(problem: Quadratic, x: Tensor) -> float:
    """Their metric: the mean over problems of ||x - x*|| (dominated by the few near-singular problems, whose
    x* is far away: no condition filter)."""
    return float((x - problem.x_star).norm(dim=-1).mean())


def gap_fraction(problem: Quadratic, x: Tensor) -> float:
    """The median over problems of (f(x) - f*) / (f(x_0) - f*): every problem weighs the same."""
    f_star = problem.value(problem.x_star)
    return float(((problem.value(x) - f_star) / (problem.value(problem.x0) - f_star)).median())


def _theirs(path: Path) -> tuple[OfficialLSR1, Quadratic]:
    """Their trained module and their validation batch, from the .npz their script (patched to save) wrote."""
    data = np.load(path, allow_pickle=False)
    state = {k: torch.from_numpy(data[k]) for k in data.files if not k.startswith(("val_", "history", "redrawn"))}
    model = from_official(state, alpha1=0.4, alpha2=0.001, buffer_size=4)
    as_t = lambda key: torch.from_numpy(data[key]).double()  # noqa: E731
    return model.double(), Quadratic(as_t("val_H"), as_t("val_b"), as_t("val_x0"))


def _ours(path: Path) -> OfficialLSR1:
    payload = load_checkpoint(path)
    model = make_learner(config_of(payload, path))
    model.load_state_dict(payload["model"])
    return model.double()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--theirs", type=Path, nargs="*", default=[], help=".npz files of their script (weights + validation batch)")
    parser.add_argument("--ours", type=Path, nargs="*", default=[], help="checkpoints of configs/quadratic_official.yaml")
    parser.add_argument("--test-size", type=int, default=256)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    theirs = [(f"theirs {p.stem}", *_theirs(p)) for p in args.theirs]
    models = [(name, model) for name, model, _ in theirs] + [(f"ours {p.parent.name}", _ours(p)) for p in args.ours]
    # their metric on their validation batches; the median gap fraction on fresh problems of the family
    sets = [(f"their val {name.split()[-1]} distance", batch, distance) for name, _, batch in theirs]
    sets += [
        (f"D={d} test gap", official_quadratics(args.test_size, d, seed=10_000 + d, dtype=torch.float64), gap_fraction) for d in (2, 10)
    ]
    rows = []
    candidates = [(label, m) for name, model in models for label, m in ((name, model), (f"{name} ablation", without_learned_terms(model)))]
    for label, candidate in [*candidates, ("L-BFGS (m=4)", None)]:
        row = {"model": label}
        for set_name, problem, metric in sets:
            for mode in ("eval", "train") if candidate is not None else ("eval",):
                x = final_point(LBFGS(problem, memory=4) if candidate is None else candidate, problem, mode)
                row[f"{set_name} {mode}"] = metric(problem, x)
        rows.append(row)
        print(" | ".join([label] + [f"{k}: {v:.4g}" for k, v in row.items() if k != "model"]), flush=True)
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
