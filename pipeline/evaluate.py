"""Test-set curves of trained learned optimizers against hand-designed baselines (paper Fig. 3a and 3b).

    python -m pipeline.evaluate --checkpoint runs/quadratic/best.pt --checkpoint runs/quadratic_noproj/best.pt \
        --buffer-sizes 2 4 8 --steps 20 --out docs/quadratic

For every buffer size L: each checkpoint's L-SR1 run with that L, and L-BFGS with memory m = L, on the
test set of the first checkpoint's task (float64). Writes objective.png, gap.png, newton_cosine.png,
curves.json and results.md into --out, and prints a short table.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

from lsr1.analysis import Curves, curves, markdown_table, plot_curves
from lsr1.checkpoint import CheckpointError, config_of, load_checkpoint
from lsr1.config import ExperimentConfig
from lsr1.learned import LSR1, with_buffer_size
from lsr1.optim import LBFGS
from lsr1.tasks import problem_set

log = logging.getLogger("pipeline.evaluate")


def _label(config) -> str:
    return "L-SR1" if config.lsr1.lambda_sec > 0 else "L-SR1 w/o projection"


def load_learner(path: Path) -> tuple[ExperimentConfig, LSR1, int | None]:
    """The config, the trained learner (float64, eval mode) and the iteration of a checkpoint."""
    payload = load_checkpoint(path)
    config = config_of(payload, path)
    model = LSR1(config.lsr1)
    model.load_state_dict(payload["model"])
    return config, model.double().eval(), payload.get("iteration")


def evaluate(checkpoints: list[Path], buffer_sizes: list[int], steps: int, out: Path) -> dict[str, list[Curves]]:
    """Curves per buffer size; writes the figures, curves.json and results.md under `out`."""
    models = [load_learner(path) for path in checkpoints]
    task = models[0][0].task
    problem = problem_set(task, "test", dtype=torch.float64)
    groups: dict[str, list[Curves]] = {}
    for size in buffer_sizes:
        group = [curves(f"{_label(c)} (L={size})", with_buffer_size(m, size), problem, steps) for c, m, _ in models]
        group.append(curves(f"L-BFGS (m={size})", LBFGS(problem, memory=size), problem, steps))
        groups[f"L = {size}"] = group
    out.mkdir(parents=True, exist_ok=True)
    plot_curves(groups, "objective", out / "objective.png", "mean f(x_k)")
    plot_curves(groups, "gap", out / "gap.png", "mean f(x_k) - f*", log=True)
    plot_curves(groups, "newton_cosine", out / "newton_cosine.png", "cos(step, Newton direction)")
    everything = [c for group in groups.values() for c in group]
    (out / "curves.json").write_text(json.dumps([c.as_dict() for c in everything], indent=1))
    at = [k for k in (1, 2, 5, 10, 15, 20) if k <= steps]
    sources = "\n".join(f"- {_label(c)}: `{p}` ({c.name}, iteration {it})" for p, (c, _, it) in zip(checkpoints, models))
    (out / "results.md").write_text(
        f"# Test-set curves: {task.test_size} {task.name} problems, N = {task.test_dim}\n\n"
        f"Checkpoints:\n{sources}\n\nCommand: `python -m pipeline.evaluate "
        + " ".join(f"--checkpoint {p}" for p in checkpoints)
        + f" --buffer-sizes {' '.join(map(str, buffer_sizes))} --steps {steps} --out {out}`\n\n"
        f"## Mean objective f(x_k)\n\n{markdown_table(everything, 'objective', [0, *at])}\n\n"
        f"## Mean gap f(x_k) - f*\n\n{markdown_table(everything, 'gap', [0, *at])}\n\n"
        f"## Mean cosine of the step with the Newton direction\n\n{markdown_table(everything, 'newton_cosine', at)}\n\n"
        f"## Mean function evaluations per step (line searches)\n\n{markdown_table(everything, 'evaluations', at)}\n"
    )
    return groups


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, action="append", required=True, help="a training checkpoint (repeatable)")
    parser.add_argument("--buffer-sizes", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("runs/eval"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        groups = evaluate(args.checkpoint, args.buffer_sizes, args.steps, args.out)
    except (CheckpointError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{'optimizer':34}{'f(x_0)':>12}{'f(x_K)':>12}{'gap(x_K)':>12}{'cos(K)':>8}")
    for group in groups.values():
        for c in group:
            cos = f"{float(c.newton_cosine[-1]):8.3f}" if c.newton_cosine is not None else ""
            print(f"{c.name:34}{float(c.objective[0]):12.4g}{float(c.objective[-1]):12.4g}{float(c.gap[-1]):12.4g}{cos}")
    print(f"wrote {args.out}/results.md and figures")
    return 0


if __name__ == "__main__":
    sys.exit(main())
