"""Test-set curves of trained learned optimizers against hand-designed baselines (paper Fig. 3a, 3b and 4).

    python -m pipeline.evaluate --checkpoint runs/quadratic/best.pt --checkpoint runs/quadratic_noproj/best.pt \
        --buffer-sizes 2 4 8 --steps 20 --out docs/quadratic

Analytic tasks: for every buffer size L, each checkpoint's L-SR1 run with that L, and L-BFGS with memory
m = L, on the test set of the first checkpoint's task (float64). Writes objective.png, gap.png,
newton_cosine.png, curves.json and results.md into --out, and prints a short table.

HMR (`task.name: hmr`; e.g. an L-SR1 and an LGD checkpoint): PA-MPJPE, MPJPE and the reprojection error
per inner step on the 3DPW test split of the first checkpoint's config (real or synthetic), for every
checkpoint (step 0 is its initializer alone) and for L-BFGS started from the first checkpoint's
initializer (paper Fig. 4). Writes pa_mpjpe.png, mpjpe.png, reprojection.png, curves.json, models.json
(checkpoints, iterations, parameter counts) and results.md.

    python -m pipeline.evaluate --run <mlflow run id>

evaluates the best checkpoint logged to that run (by pipeline.train or a sweep trial) at its trained L and
logs the files (test/) and the final gaps (test_final_gap_*) back to the run.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import re
import shutil
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from lsr1.checkpoint import CheckpointError, config_of, load_checkpoint
from lsr1.config import ExperimentConfig
from lsr1.experiments.analysis import Curves, StepCurves, curves, markdown_table, plot_curves, step_curves
from lsr1.learned import LearnedOptimizer
from lsr1.learners import make_learner
from lsr1.optim import BFGS, LBFGS, HypergradientBFGS, with_line_search
from lsr1.tasks import Problem, problem_set
from pipeline.prepare import PrepareError, resolve_data_paths

if TYPE_CHECKING:
    from pipeline.tracking import Run

log = logging.getLogger("pipeline.evaluate")


HMR_LBFGS_MEMORY = 10


def _label(config: ExperimentConfig) -> str:
    if config.learner == "lgd":
        return "LGD"
    if config.learner == "bfgs_steps":
        return "BFGS-LSTM step sizes"
    without = "L-SR1 w/o secant term" if config.task.name == "hmr" else "L-SR1 w/o projection"
    name = "L-SR1" if config.lsr1.lambda_sec > 0 else without
    return name + (" (paper)" if config.lsr1.formulation == "paper" else "")  # the paper-literal formulation


def _labels(configs: list[ExperimentConfig], tags: list[str]) -> list[str]:
    """_label of each, with its tag (`_tag`) where two would read the same."""
    labels = [_label(c) for c in configs]
    return [n if labels.count(n) == 1 else f"{n} ({tag})" for n, tag in zip(labels, tags)]


def _tag(checkpoint: Path) -> str:
    """What tells a checkpoint apart: a shipped model's name (lsr1/weights/mix_lbfgs.pt), a run's folder
    (runs/demo-lsr1/best.pt)."""
    return checkpoint.parent.name if checkpoint.stem in ("best", "last") else checkpoint.stem


def load_learner(path: Path) -> tuple[ExperimentConfig, LearnedOptimizer, int | None]:
    """The config, the trained learner (eval mode; float64 for analytic tasks, whose test sets are) and
    the iteration of a checkpoint."""
    payload = load_checkpoint(path)
    config = config_of(payload, path)
    if config.task.name == "hmr":  # relative data paths (a checkpoint of `lsr1.meta.train`) are in the data root
        config = dataclasses.replace(config, hmr=resolve_data_paths(config.hmr))
    model = make_learner(config)
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not fit the stored config: {err}") from None
    return config, (model if config.task.name == "hmr" else model.double()).eval(), payload.get("iteration")


def evaluate(checkpoints: list[Path], buffer_sizes: list[int], steps: int, out: Path) -> dict[str, list[Curves]] | list[StepCurves]:
    """Analytic: curves per buffer size; HMR: `evaluate_hmr` (buffer sizes are the trained ones). Writes
    the figures, curves.json and results.md under `out`."""
    models = [load_learner(path) for path in checkpoints]
    if models[0][0].task.name == "hmr":
        return evaluate_hmr(checkpoints, models, steps, out)
    task = models[0][0].task
    problem = problem_set(task, "test", dtype=torch.float64)
    groups: dict[str, list[Curves]] = {}
    labels = _labels([c for c, _, _ in models], [_tag(p) for p in checkpoints])
    if models[0][0].learner == "bfgs_steps":  # no buffer size: against the step-size baselines of its paper
        group = [curves(label, with_line_search(m, c.meta.line_search), problem, steps) for label, (c, m, _) in zip(labels, models)]
        group.append(curves("BFGS-Armijo", BFGS(problem, line_search="armijo"), problem, steps))
        group.append(curves("BFGS-HD per coordinate", HypergradientBFGS(per_coordinate=True), problem, steps))
        groups["BFGS step sizes"] = group
    for size in buffer_sizes if models[0][0].learner == "lsr1" else ():
        group = [
            curves(f"{label} (L={size})", with_line_search(m.with_settings(buffer_size=size), c.meta.line_search), problem, steps)
            for label, (c, m, _) in zip(labels, models)
        ]
        group.append(curves(f"L-BFGS (m={size})", LBFGS(problem, memory=size), problem, steps))
        groups[f"L = {size}"] = group
    out.mkdir(parents=True, exist_ok=True)
    plot_curves(groups, "objective", out / "objective.png", "mean f(x_k)")
    plot_curves(groups, "gap", out / "gap.png", "mean f(x_k) - f*", log=True)
    plot_curves(groups, "newton_cosine", out / "newton_cosine.png", "cos(step, Newton direction)")
    everything = [c for group in groups.values() for c in group]
    (out / "curves.json").write_text(json.dumps([c.as_dict() for c in everything], indent=1))
    at = [k for k in (1, 2, 5, 10, 15, 20) if k <= steps]
    sources = "\n".join(f"- {label}: `{p}` ({c.name}, iteration {it})" for label, p, (c, _, it) in zip(labels, checkpoints, models))
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


def starting_from_initializer(problem: Problem, learner: LearnedOptimizer) -> Problem:
    """A copy of `problem` whose x0 is the learner's initializer prediction (for L-BFGS from there)."""
    start = copy.copy(problem)
    with torch.no_grad():
        start.x0 = learner.eval().initial_point(problem)
    return start


def joint_metrics(names: Iterable[str]) -> tuple[str, str]:
    """Of HMR metric names, those of the 14-joint PA-MPJPE and MPJPE (suffixed with the joints' source,
    h36m or smpl)."""
    names = list(names)
    return next(k for k in names if k.startswith("pa_mpjpe14_")), next(k for k in names if k.startswith("mpjpe14_"))


def hmr_summary(all_curves: list[StepCurves]) -> dict[str, float]:
    """The headline test metrics (mm): PA-MPJPE and MPJPE of the 14 evaluation joints of the first
    learner after its last step and of its initializer alone, and of L-BFGS (last curve) after its last."""
    first, lbfgs = all_curves[0].metrics, all_curves[-1].metrics
    pa, mp = joint_metrics(first)
    return {
        "test_pa_mpjpe": float(first[pa][-1]),
        "test_mpjpe": float(first[mp][-1]),
        "test_pa_mpjpe_init": float(first[pa][0]),
        "test_mpjpe_init": float(first[mp][0]),
        "test_reprojection": float(first["reprojection"][-1]),
        "test_pa_mpjpe_lbfgs": float(lbfgs[pa][-1]),
    }


def evaluate_hmr(
    checkpoints: list[Path],
    models: list[tuple[ExperimentConfig, LearnedOptimizer, int | None]],
    steps: int,
    out: Path,
    names: list[str] = (),
) -> list[StepCurves]:
    """Per-step error curves on the 3DPW test split of the first checkpoint's config (see the module doc).
    names: labels of the first checkpoints (default, and for the rest: L-SR1 / LGD, with the folder if twice)."""
    config = models[0][0]
    problem = problem_set(config.task, "test", hmr=config.hmr)
    labels = _labels([c for c, _, _ in models], [_tag(p) for p in checkpoints])
    names = list(names) + labels[len(names) :]
    driven = [with_line_search(model, c.meta.line_search) for c, model, _ in models]
    methods = {name: (lambda part, m=m: (m, part)) for name, m in zip(names, driven)}
    first = models[0][1]
    lbfgs = f"L-BFGS (m={HMR_LBFGS_MEMORY}) from the {names[0]} initializer"
    methods[lbfgs] = lambda part: (lambda begin: (LBFGS(begin, memory=HMR_LBFGS_MEMORY), begin))(starting_from_initializer(part, first))
    log.info("HMR test split: %d frames, %d inner steps, %d method(s)", problem.batch_size, steps, len(methods))
    everything = step_curves(problem, methods, steps)
    out.mkdir(parents=True, exist_ok=True)
    pa, mp = joint_metrics(everything[0].metrics)
    title = f"3DPW test split: {problem.batch_size} frames"
    for metric, file, ylabel in (
        (pa, "pa_mpjpe.png", "PA-MPJPE (mm)"),
        (mp, "mpjpe.png", "MPJPE (mm)"),
        ("reprojection", "reprojection.png", "reprojection error"),
    ):
        plot_curves({title: everything}, metric, out / file, ylabel)
    (out / "curves.json").write_text(json.dumps([c.as_dict() for c in everything], indent=1))
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    sizes = [
        {"name": n, "checkpoint": str(p), "iteration": it, "initializer_params": count(m.initializer), "update_params": count(m.update)}
        for n, p, (_, m, it) in zip(names, checkpoints, models)
    ]
    (out / "models.json").write_text(json.dumps(sizes, indent=1))
    at = sorted({k for k in (0, 1, 2, 5, 10, steps) if k <= steps})
    summary = hmr_summary(everything)
    rows = [f"| initializer only ({names[0]}) | {summary['test_pa_mpjpe_init']:.1f} | {summary['test_mpjpe_init']:.1f} | 0 |"]
    rows += [
        f"| {c.name} | {float(c.metrics[pa][-1]):.1f} | {float(c.metrics[mp][-1]):.1f} | {float(c.metrics['evaluations'][-1]):.1f} |"
        for c in everything
    ]
    sources = "\n".join(
        f"- {m['name']}: `{m['checkpoint']}` (iteration {m['iteration']}; parameters: initializer "
        f"{m['initializer_params']:,}, update module {m['update_params']:,})"
        for m in sizes
    )
    joints = "the H36M regressor" if pa.endswith("h36m") else "SMPL joints (no H36M regressor configured)"
    (out / "results.md").write_text(
        f"# HMR test results: {problem.batch_size} 3DPW test frames from `{config.hmr.pw3d_dir}`, {steps} inner steps\n\n"
        f"Checkpoints:\n{sources}\n\nEvaluation joints: 14, from {joints}; errors in mm.\n\n"
        f"| method | PA-MPJPE | MPJPE | evaluations of f and its gradient |\n|---|---|---|---|\n" + "\n".join(rows) + "\n\n"
        f"## PA-MPJPE per inner step\n\n{markdown_table(everything, pa, at)}\n\n"
        f"## MPJPE per inner step\n\n{markdown_table(everything, mp, at)}\n\n"
        f"## Reprojection error per inner step\n\n{markdown_table(everything, 'reprojection', at)}\n\n"
        f"## Evaluations of f and its gradient by inner step (mean per frame; L-BFGS's line search tries more than one)\n\n"
        f"{markdown_table(everything, 'evaluations', at)}\n"
    )
    return everything


def log_evaluation(run: Run, results: dict[str, list[Curves]] | list[StepCurves], out: Path, step: int) -> dict[str, float]:
    """Log the files in `out` under the run's test/ artifacts and the headline figures as metrics
    (analytic: each curve's final gap; HMR: `hmr_summary`)."""
    for path in sorted(out.iterdir()):
        run.log_artifact(path, "test")
    if isinstance(results, list):
        finals = hmr_summary(results)
    else:
        finals = {}
        for curve in (c for group in results.values() for c in group):  # L-SR1 -> lsr1, L-BFGS -> lbfgs, ...
            key = "test_final_gap_" + re.sub(r"[^a-z0-9]", "", curve.name.split(" ")[0].lower())
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
