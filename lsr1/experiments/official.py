"""The authors' quadratic protocol side by side: their metric, mean ||x_20 - x*||, for modules trained by their
script (`examples/meta_random_quad.py` of gallif/lsr1, run outside this repository, which saves its final
weights and validation batch to an .npz) and by `python -m pipeline.train --config configs/quadratic_official.yaml`
(the best checkpoint), each beside its ablation (`without_learned_terms`: x - alpha1 g, gradient descent at
alpha1) and L-BFGS (m = 4, strong Wolfe) at 20 iterations.

    python -m lsr1.experiments.official --theirs S0.npz S1.npz --ours runs/qo-s0/best.pt runs/qo-s1/best.pt

Every module is scored on each validation batch of `--theirs` (theirs on its own batch first) and on fresh
D = 2 and D = 10 problems of the same family (`lsr1.tasks.official_quadratics`, seeds of their own): in eval
mode (BatchNorm's running statistics, dropout off: how this project evaluates) and in train mode with dropout
on, as their validation runs (batch statistics over the batch: problems are coupled and the figure is
random; seeded here). Threads: torch.set_num_threads(1). Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from lsr1.checkpoint import config_of, load_checkpoint
from lsr1.learned import without_learned_terms
from lsr1.learned.official import OfficialLSR1
from lsr1.learners import make_learner
from lsr1.meta import unroll
from lsr1.optim import LBFGS
from lsr1.pretrained import from_official
from lsr1.tasks import Quadratic, official_quadratics

__all__ = ["distance", "main"]

STEPS = 20


def distance(optimizer: object, problem: Quadratic, mode: str, seed: int = 0) -> float:
    """Mean ||x_STEPS - x*|| of `optimizer` on `problem`; mode "eval" or "train" (a module's BatchNorm on batch
    statistics and dropout on, as their validation)."""
    torch.manual_seed(seed)
    if isinstance(optimizer, torch.nn.Module):
        optimizer.train(mode == "train")
    with torch.no_grad():
        x = unroll(optimizer, problem, STEPS).x
    return float((x - problem.x_star).norm(dim=-1).mean())


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
    sets = [(f"their val {name.split()[-1]}", batch) for name, _, batch in theirs]
    sets += [(f"D={d} test", official_quadratics(args.test_size, d, seed=10_000 + d, dtype=torch.float64)) for d in (2, 10)]
    rows = []
    for name, model in models:
        for label, candidate in ((name, model), (f"{name} ablation", without_learned_terms(model))):
            row = {"model": label}
            for set_name, problem in sets:
                for mode in ("eval", "train"):
                    row[f"{set_name} {mode}"] = distance(candidate, problem, mode)
            rows.append(row)
            print(" | ".join([label] + [f"{k}: {v:.4f}" for k, v in row.items() if k != "model"]), flush=True)
    lbfgs = {"model": "L-BFGS (m=4)"}
    for set_name, problem in sets:
        lbfgs[f"{set_name} eval"] = lbfgs[f"{set_name} train"] = distance(LBFGS(problem, memory=4), problem, "eval")
    rows.append(lbfgs)
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
