"""Test-set curves of trained learned optimizers against hand-designed baselines (paper Fig. 3a and 3b).

    python -m pipeline.evaluate --checkpoint runs/quadratic/best.pt --checkpoint runs/quadratic_noproj/best.pt \
        --buffer-sizes 2 4 8 --steps 20 --out docs/quadratic

For every buffer size L: each checkpoint's L-SR1 run with that L, and L-BFGS with memory m = L, on the
test set of the first checkpoint's task (float64). Writes objective.png, gap.png, newton_cosine.png,
curves.json and results.md into --out, and prints a short table.

    python -m pipeline.evaluate --run <mlflow run id>

evaluates the best checkpoint logged to that run (by pipeline.train or a sweep trial) at its trained L and
logs the files (test/) and the final gaps (test_final_gap_*) back to the run.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from lsr1.analysis import Curves, curves, markdown_table, plot_curves
from lsr1.checkpoint import CheckpointError, config_of, load_checkpoint
from lsr1.config import ExperimentConfig
from lsr1.learned import LSR1, with_buffer_size
from lsr1.optim import LBFGS
from lsr1.tasks import problem_set

if TYPE_CHECKING:
    from pipeline.tracking import Run

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


def log_evaluation(run: Run, groups: dict[str, list[Curves]], out: Path, step: int) -> dict[str, float]:
    """Log the files in `out` under the run's test/ artifacts and each curve's final gap as a metric."""
    for path in sorted(out.iterdir()):
        run.log_artifact(path, "test")
    finals = {}
    for curve in (c for group in groups.values() for c in group):
        key = "test_final_gap_lsr1" if curve.name.startswith("L-SR1") else "test_final_gap_lbfgs"
        finals.setdefault(key, float(curve.gap[-1]))
    run.log_metrics([(step, finals)])
    return finals


def _checkpoint_of_run(run_id: str, into: Path) -> tuple[Path, Run]:
    """Download the best checkpoint that pipeline.train or pipeline.sweep logged to an MLflow run."""
    from mlflow.exceptions import MlflowException

    from pipeline.tracking import Run, tracking_uri

    run = Run(tracking_uri(), run_id)
    try:
        path = run.client.download_artifacts(run_id, "checkpoints/best.pt", str(into))
    except MlflowException as err:
        raise ValueError(f"MLflow run {run_id} at {run.uri} has no checkpoints/best.pt artifact: {err}") from err
    return Path(path), run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, action="append", help="a training checkpoint (repeatable)")
    source.add_argument("--run", help="an MLflow run id (MLFLOW_TRACKING_URI's store): its best checkpoint, results logged back")
    parser.add_argument("--buffer-sizes", type=int, nargs="+", default=None, help="L values (default: 2 4 8, with --run the trained L)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("runs/eval"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    run = None
    try:
        if args.run:
            path, run = _checkpoint_of_run(args.run, args.out / "checkpoint")
            args.checkpoint = [path]
        sizes = args.buffer_sizes or ([load_learner(args.checkpoint[0])[0].lsr1.buffer_size] if run else [2, 4, 8])
        groups = evaluate(args.checkpoint, sizes, args.steps, args.out)
    except (CheckpointError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if run is not None:
        iteration = load_checkpoint(args.checkpoint[0]).get("iteration", 0)
        shutil.rmtree(args.out / "checkpoint")  # already in the run; keep only the results in --out
        log_evaluation(run, groups, args.out, iteration)
        print(f"logged to MLflow run {args.run} (test/ artifacts, test_final_gap_* metrics)")
    print(f"{'optimizer':34}{'f(x_0)':>12}{'f(x_K)':>12}{'gap(x_K)':>12}{'cos(K)':>8}")
    for group in groups.values():
        for c in group:
            cos = f"{float(c.newton_cosine[-1]):8.3f}" if c.newton_cosine is not None else ""
            print(f"{c.name:34}{float(c.objective[0]):12.4g}{float(c.objective[-1]):12.4g}{float(c.gap[-1]):12.4g}{cos}")
    print(f"wrote {args.out}/results.md and figures")
    return 0


if __name__ == "__main__":
    sys.exit(main())
