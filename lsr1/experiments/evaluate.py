"""Test-set curves of trained learned optimizers against hand-designed baselines (paper Fig. 3a, 3b and 4): what
`python -m pipeline.evaluate` runs (that command adds MLflow; this module uses neither Ray nor MLflow).

Analytic tasks: for every buffer size L, each checkpoint's L-SR1 run with that L, and L-BFGS with memory
m = L, on the test set of the first checkpoint's task (float64). Writes objective.png, gap.png,
newton_cosine.png, curves.json and results.md.

HMR (`task.name: hmr`; e.g. an L-SR1 and an LGD checkpoint): PA-MPJPE, MPJPE and the reprojection error
per inner step on the 3DPW test split of the first checkpoint's config (real or synthetic), for every
checkpoint (step 0 is its initializer alone) and for L-BFGS started from the first checkpoint's
initializer (paper Fig. 4). Writes pa_mpjpe.png, mpjpe.png, reprojection.png, curves.json, models.json
(checkpoints, iterations, parameter counts) and results.md.

Each learner runs with its driver's line search (`meta.line_search`), and each L-SR1 beside its own ablation
(`without_learned_terms`: the learned terms off, the same operator base, initializer and search).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from collections.abc import Iterable
from pathlib import Path

import torch

from lsr1.checkpoint import CheckpointError, config_of, load_checkpoint
from lsr1.config import ExperimentConfig
from lsr1.experiments.analysis import Curves, StepCurves, curves, markdown_table, plot_curves, step_curves
from lsr1.learned import LSR1, LearnedOptimizer, without_learned_terms
from lsr1.learned.blocks import Blocks
from lsr1.learned.initializer import WithInitializer
from lsr1.learners import make_learner
from lsr1.optim import BFGS, LBFGS, HypergradientBFGS, with_line_search
from lsr1.tasks import HMRProblem, Problem, problem_set
from lsr1.tasks.prepare import resolve_data_paths

__all__ = ["HMR_LBFGS_MEMORY", "evaluate", "evaluate_hmr", "hmr_summary", "joint_metrics", "load_learner", "starting_from_initializer"]

log = logging.getLogger("lsr1.experiments.evaluate")

HMR_LBFGS_MEMORY = 10


def _label(config: ExperimentConfig) -> str:
    if config.learner == "lgd":
        return "LGD"
    if config.learner == "bfgs_steps":
        return "BFGS-LSTM step sizes"
    without = "L-SR1 w/o secant term" if config.task.name == "hmr" else "L-SR1 w/o projection"
    name = "L-SR1" if config.lsr1.lambda_sec > 0 else without
    if config.lsr1.formulation == "official" and config.task.name == "hmr":  # their two modules and meta-loss
        return name + (" (official)" if config.lsr1.beta_secant == "slip" else " (official, own shape secant)")
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
        at_size = [(label, c, m.with_settings(buffer_size=size)) for label, (c, m, _) in zip(labels, models)]
        group = [curves(f"{label} (L={size})", with_line_search(m, c.meta.line_search), problem, steps) for label, c, m in at_size]
        group += [  # each beside its own ablation: the learned terms off, the same search
            curves(f"{label} ablation (L={size})", with_line_search(without_learned_terms(m), c.meta.line_search), problem, steps)
            for label, c, m in at_size
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


def with_inner_loss_weight(problem: HMRProblem, weight: float) -> HMRProblem:
    """A copy of an HMR problem whose f is scaled by `weight` instead (`hmr.inner_loss_weight`)."""
    scaled = copy.copy(problem)
    scaled.config = dataclasses.replace(problem.config, inner_loss_weight=weight)
    return scaled


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
    # each learner on its own scale of f (`hmr.inner_loss_weight`, e.g. the authors' 1000 / 128): the gradients it
    # was trained to read; the errors do not depend on it. Each L-SR1 beside its own ablation (the learned terms off,
    # the same initializer and search), after the checkpoints themselves so that a caller finds them first, in order
    learners = [(name, with_line_search(model, c.meta.line_search), c.hmr.inner_loss_weight) for name, (c, model, _) in zip(names, models)]
    ablations = [
        (f"{name} ablation", with_line_search(without_learned_terms(model), c.meta.line_search), c.hmr.inner_loss_weight)
        for name, (c, model, _) in zip(names, models)
        if isinstance(model, WithInitializer) and isinstance(model.update, (LSR1, Blocks))
    ]
    methods = {name: (lambda part, m=m, w=w: (m, with_inner_loss_weight(part, w))) for name, m, w in [*learners, *ablations]}
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
    at = sorted({k for k in (0, 1, 2, 3, 4, 5, 10, steps) if k <= steps})  # 3 and 4: LGD's protocol and the authors' table
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
