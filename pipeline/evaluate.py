"""Test-set curves of trained learned optimizers against hand-designed baselines (paper Fig. 3a, 3b and 4);
the evaluation itself is `lsr1.experiments.evaluate`, this is its command and its MLflow logging.

    python -m pipeline.evaluate --checkpoint runs/quadratic/best.pt --checkpoint runs/quadratic_noproj/best.pt \
        --buffer-sizes 2 4 8 --steps 20 --out docs/quadratic

writes the figures, curves.json and results.md into --out and prints a short table (analytic tasks: every
checkpoint at every L against L-BFGS with m = L; HMR: per-step errors on the 3DPW test split against L-BFGS
from the first checkpoint's initializer).

    python -m pipeline.evaluate --run <mlflow run id>

evaluates the best checkpoint logged to that run (by pipeline.train or a sweep trial) at its trained L and
logs the files (test/) and the final gaps (test_final_gap_*) back to the run.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from lsr1.checkpoint import CheckpointError
from lsr1.experiments.analysis import Curves, StepCurves
from lsr1.experiments.evaluate import evaluate, hmr_summary, load_learner
from lsr1.tasks.prepare import PrepareError

if TYPE_CHECKING:
    from pipeline.tracking import Run


def log_evaluation(run: Run, results: dict[str, list[Curves]] | list[StepCurves], out: Path, step: int) -> dict[str, float]:
    """Log the files in `out` under the run's test/ artifacts and the headline figures as metrics
    (analytic: each curve's final gap; HMR: `hmr_summary`)."""
    for path in sorted(out.iterdir()):
        run.log_artifact(path, "test")
    if isinstance(results, list):
        finals = hmr_summary(results)
    else:
        finals = {}
        for curve in (c for group in results.values() for c in group):  # L-SR1 -> lsr1, its ablation -> lsr1_ablation, ...
            key = (
                "test_final_gap_"
                + re.sub(r"[^a-z0-9]", "", curve.name.split(" ")[0].lower())
                + ("_ablation" if " ablation" in curve.name else "")
            )
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
    parser.add_argument(
        "--log-experiment", metavar="NAME", help="with --checkpoint: also log the results as a new MLflow run of experiment NAME"
    )
    parser.add_argument("--verbose", action="store_true", help="also show the libraries' INFO lines")
    args = parser.parse_args(argv)
    from pipeline.console import setup

    console = setup(args.out / "console.log", args.verbose)
    run = None
    try:
        if args.run:
            console.phase(f"MLflow: the best checkpoint of run {args.run}")
            path, run = _checkpoint_of_run(args.run, args.out / "checkpoint")
            args.checkpoint = [path]
        config, _, iteration = load_learner(args.checkpoint[0])
        sizes = args.buffer_sizes or ([config.lsr1.buffer_size] if run else [2, 4, 8])
        what = f"buffer sizes {' '.join(map(str, sizes))}" if config.task.name != "hmr" else "3DPW test split"
        console.phase(f"evaluating {len(args.checkpoint)} checkpoint(s) on the {config.task.name} test set ({what}), {args.steps} steps")
        results = evaluate(args.checkpoint, sizes, args.steps, args.out)
    except (CheckpointError, PrepareError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    iteration = iteration or 0
    if run is not None:
        shutil.rmtree(args.out / "checkpoint")  # already in the run; keep only the results in --out
    elif args.log_experiment:
        from pipeline.tracking import Run, TrackingError, tracking_uri

        try:
            run = Run.open(tracking_uri(), args.log_experiment, f"evaluate-{args.out.name}", config, tags={"lsr1.kind": "evaluation"})
        except TrackingError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        run.set_tags({"lsr1.checkpoints": " ".join(map(str, args.checkpoint))})
    if run is not None:
        log_evaluation(run, results, args.out, iteration)
        if args.log_experiment:
            run.finish(ok=True)
        console.phase(f"MLflow: logged to run {run.run_id} (test/ artifacts, test_* metrics)")
    console.result()
    if isinstance(results, list):
        console.result((args.out / "results.md").read_text().split("\n## ")[0].strip())
    else:
        console.result(f"{'optimizer':34}{'f(x_0)':>12}{'f(x_K)':>12}{'gap(x_K)':>12}{'cos(K)':>8}")
        for group in results.values():
            for c in group:
                cos = f"{float(c.newton_cosine[-1]):8.3f}" if c.newton_cosine is not None else ""
                console.result(f"{c.name:34}{float(c.objective[0]):12.4g}{float(c.objective[-1]):12.4g}{float(c.gap[-1]):12.4g}{cos}")
    console.result(f"\n{'results':10}{args.out}/results.md, curves.json\n{'figures':10}{args.out}/*.png\n{'log':10}{console.log_path}")
    if run is not None:
        console.result(f"\n{run.where_to_look()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
