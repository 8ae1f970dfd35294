"""Hyper-parameter sweeps: `python -m pipeline.sweep --space tune_spaces/<name>.yaml --config configs/<preset>.yaml`.

Ray Tune samples configs from the space; every trial is a `pipeline.train` run (the same TorchTrainer and
worker loop) reporting after each validation, and ASHA stops poor trials early. A trial asks for its
workers, Ray Data's share (HMR) and a sliver of a CPU for the trial driver; a sweep whose trial cannot fit
the cluster stops before it starts, naming what to lower (`pipeline.train.require_resources`, which also
waits for an autoscaling cluster: --resource-timeout), and --max-concurrent caps the trials that fit. An interrupted sweep (Ctrl-C, a killed driver) continues with --resume:
finished trials are kept, unfinished ones continue from their last checkpoint.
Tune's state and every trial's checkpoints live in --storage (`pipeline.storage`: a folder, a shared mount or
s3://bucket/prefix); trials run on any node, and the driver copies each trial's last checkpoint from there into
runs/<sweep>/<trial>/ for the comparison.

MLflow: one parent run per sweep, one child run per trial. At the end the --top-k trials are evaluated on
the test split; the parent run gets comparison.md, comparison.csv and comparison.png, and the best model is
registered under the preset's name with the alias `champion`.

    python -m pipeline.sweep --space tune_spaces/smoke.yaml --config configs/smoke.yaml --num-samples 4 --max-concurrent 2
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from ray.tune import Callback

from lsr1.checkpoint import load_checkpoint
from lsr1.config import ConfigError, config_to_dict, load_config
from lsr1.experiments.analysis import curves, plot_curves
from lsr1.experiments.evaluate import evaluate_hmr, joint_metrics, load_learner
from lsr1.optim import BFGS, LBFGS, with_line_search
from lsr1.tasks import problem_set
from lsr1.tasks.prepare import PrepareError
from pipeline.cluster import (
    ResourceError,
    admit,
    connect_ray,
)
from pipeline.cluster import (
    add_arguments as cluster_arguments,
)
from pipeline.console import Console, board_name, setup
from pipeline.data import absolute_paths
from pipeline.spaces import SpaceError, check_values, grid_size, load_space, to_tune, with_values
from pipeline.storage import StorageError, add_arguments, join, resolve
from pipeline.tracking import Run, TrackingError, tracking_uri
from pipeline.train import fit_with_ray

log = logging.getLogger("pipeline.sweep")

TRIAL_DRIVER_CPU = 0.01  # the trial function only waits for its TorchTrainer


def trial(params: dict[str, Any]) -> None:
    """One sampled config, trained by pipeline.train's TorchTrainer; Train's reports become Tune's.

    A trial that ASHA stops is killed inside fit(): the sweep driver closes its MLflow run afterwards."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    # trials report at validations only, so that every report carries the metric ASHA compares
    config = with_values(params["base"], {**params["values"], "meta.checkpoint_every_s": 1e12})
    trial_id = tune.get_context().get_trial_id()
    name = f"{params['sweep']}-{trial_id}"
    earlier = Run.find(params["tracking_uri"], config.name, name)
    if earlier is not None and earlier.status == "FINISHED":  # it ended just before the sweep was interrupted:
        tune.report(earlier.latest_metrics())  # Tune (and ASHA) want its result once more, not another run
        return
    run = Run.open(
        params["tracking_uri"],
        config.name,
        name,
        config,
        tags={"mlflow.parentRunId": params["parent_run_id"], "lsr1.sweep": params["sweep"], "lsr1.trial": trial_id},
    )
    storage = join(params["storage"], "ray")
    # this trial may run on any node: its final checkpoint comes to a temporary folder for MLflow only (the
    # sweep driver copies it from the storage for the comparison)
    with tempfile.TemporaryDirectory(prefix=f"lsr1-{name}-") as dest:
        try:
            fit_with_ray(
                config,
                run,
                name,
                storage,
                params["workers"],
                cpus_per_worker=params["cpus_per_worker"],
                custom_resources=params["worker_resources"],
                callbacks=[TuneReportCallback()],
                progress=params.get("progress"),
                dest=Path(dest),
            )
        except Exception:
            run.finish(ok=False)
            raise
        _close_trial_run(run, Path(dest), join(storage, name), stopped_early=False)


class TrialLines(Callback):
    """A Tune callback on the sweep driver: the bar of a trial that ends becomes one line saying how it ended.
    (Pickled with the Tuner's state without its console: a resumed sweep's trials end without that line.)"""

    def __init__(self, console: Console | None, sweep: str, total: int) -> None:
        self.console, self.sweep, self.total = console, sweep, total

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "console": None}

    def _close(self, trial: Any, how: str) -> None:
        if self.console is None:
            return
        result = trial.last_result or {}
        values = ", ".join(
            f"{k.split('.')[-1]} {v:.3g}" if isinstance(v, float) else f"{k.split('.')[-1]} {v}"
            for k, v in trial.config.get("values", {}).items()
        )
        name = f"{self.sweep}-{trial.trial_id}"
        if name not in self.console.bars:  # it ended before its first iteration reached the board
            self.console.bar(name, result.get("iteration", 0), self.total, {})
        self.console.close_bar(name, f"{how}; {values}")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        ran = (trial.last_result or {}).get("iteration", 0)
        self._close(trial, "finished" if ran >= self.total else f"stopped by ASHA after {ran} iterations")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._close(trial, f"FAILED (see {self.console.log_path if self.console else 'the log'} and Ray's logs)")


def _close_trial_run(run: Run, checkpoint_dir: Path, train_run: str, stopped_early: bool) -> None:
    """Log the trial's best.pt (from checkpoint_dir) and tag where Ray Train keeps its run (train_run)."""
    run.log_artifact(checkpoint_dir / "best.pt", "checkpoints")
    run.set_tags({"lsr1.train_run": train_run, "lsr1.stopped_early": str(stopped_early).lower()})
    run.finish(ok=True)


def _last_checkpoint(train_run: str, dest: Path) -> bool:
    """Copy the last checkpoint of the Ray Train run at `train_run` (storage) to `dest`; False if it has none."""
    import ray.train

    try:
        checkpoint = ray.train.Result.from_path(train_run).checkpoint
    except RuntimeError:  # no such run, or it never checkpointed
        return False
    if checkpoint is None:
        return False
    shutil.rmtree(dest, ignore_errors=True)
    checkpoint.to_directory(str(dest))
    return (dest / "best.pt").is_file()


def _trial_outcomes(results, uri: str, experiment: str, sweep: str, runs_dir: Path, storage: str) -> dict[str, Path]:
    """Every trial's last checkpoint (it holds best.pt, the trial's best so far), copied from the storage to
    runs_dir/sweep/trial, and the final word on each trial's MLflow run: Tune's. A trial that ASHA stopped was
    killed inside fit(), so its run is left RUNNING, or FAILED when fit() saw its controller die first; Tune saw
    no error, so it is FINISHED (tagged stopped_early). A trial with a Tune error is FAILED."""
    checkpoints = {}
    for result in results:
        metrics = result.metrics or {}
        trial_id = metrics.get("trial_id") or Path(result.path).name
        run = Run.find(uri, experiment, f"{sweep}-{trial_id}")
        train_run = join(storage, "ray", f"{sweep}-{trial_id}")
        if _last_checkpoint(train_run, runs_dir / sweep / trial_id):
            checkpoints[trial_id] = runs_dir / sweep / trial_id
        if run is None or run.status == "FINISHED":
            continue
        if trial_id in checkpoints and result.error is None:
            _close_trial_run(run, checkpoints[trial_id], train_run, stopped_early=True)
        else:
            run.finish(ok=False)
    return checkpoints


def _scheduler(metric: str, config, grace: int):
    from ray.tune.schedulers import ASHAScheduler

    reports = max(1, math.ceil(config.meta.iterations / config.meta.val_every))
    # max_t one past the last report: a trial that runs to the end finishes on its own (and logs its model)
    # instead of being stopped by ASHA at its last report
    return ASHAScheduler(metric=metric, mode="min", max_t=reports + 1, grace_period=min(grace, reports), reduction_factor=2)


def _write_table(rows: list[dict[str, Any]], out: Path, title: str, note: str) -> None:
    """comparison.csv and comparison.md of the top trials."""
    keys = list(rows[0])
    with (out / "comparison.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    cell = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    table = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)] + ["| " + " | ".join(cell(r[k]) for k in keys) + " |" for r in rows]
    (out / "comparison.md").write_text(f"# {title}\n\n" + "\n".join(table) + f"\n\n{note}\n")


def _row(entry: dict[str, Any], results: dict[str, float]) -> dict[str, Any]:
    return {**{k: v for k, v in entry.items() if k not in ("params", "checkpoint")}, **entry["params"], **results}


def compare(top: list[dict[str, Any]], steps: int, out: Path, baselines: list[Path] = ()) -> list[dict[str, Any]]:
    """Test-set curves of the top trials against L-BFGS (analytic: each trial at its own L); for HMR
    PA-MPJPE per inner step on the 3DPW test split against each trial's initializer, L-BFGS from the best
    trial's initializer and the `baselines` checkpoints (e.g. LGD). Table, CSV and plot in `out`."""
    loaded = [(entry, *load_learner(Path(entry["checkpoint"]))) for entry in top]
    out.mkdir(parents=True, exist_ok=True)
    if loaded[0][1].task.name == "hmr":
        paths = [Path(entry["checkpoint"]) for entry in top] + list(baselines)
        models = [(c, m, it) for _, c, m, it in loaded] + [load_learner(p) for p in baselines]
        names = [f"{entry['trial']} (L-SR1)" for entry in top]
        everything = evaluate_hmr(paths, models, steps, out / "test", names=names)
        shutil.copy(out / "test" / "pa_mpjpe.png", out / "comparison.png")
        pa, mp = joint_metrics(everything[0].metrics)
        rows = [
            _row(
                entry,
                {
                    "test_pa_mpjpe": float(c.metrics[pa][-1]),
                    "test_mpjpe": float(c.metrics[mp][-1]),
                    "test_pa_mpjpe_init": float(c.metrics[pa][0]),
                },
            )
            for entry, c in zip(top, everything)
        ]
        others = "; ".join(f"{c.name}: PA-MPJPE {float(c.metrics[pa][-1]):.1f} mm" for c in everything[len(top) :])
        _write_table(rows, out, f"Top {len(rows)} trials on the 3DPW test split ({steps} inner steps, mm)", f"Reference: {others}.")
        return rows
    task, memory = loaded[0][1].task, loaded[0][1].lsr1.buffer_size
    problem = problem_set(task, "test", dtype=torch.float64)
    lines, rows = [], []
    for entry, config, model, _ in loaded:
        label = f"{entry['trial']} (L={config.lsr1.buffer_size})" if config.learner == "lsr1" else entry["trial"]  # each trial at its own L
        curve = curves(label, with_line_search(model, config.meta.line_search), problem, steps)
        lines.append(curve)
        rows.append(_row(entry, {"test_final_gap": float(curve.gap[-1]), "test_mean_objective": float(curve.objective[1:].mean())}))
    if loaded[0][1].learner == "lsr1":
        lines.append(curves(f"L-BFGS (m={memory})", LBFGS(problem, memory=memory), problem, steps))
    else:  # the learned BFGS step sizes: against BFGS with a line search
        lines.append(curves("BFGS-Armijo", BFGS(problem, line_search="armijo"), problem, steps))
    title = f"test set: {task.test_size} {task.name} problems, N = {task.test_dim}"
    plot_curves({title: lines}, "gap", out / "comparison.png", "mean f(x_k) - f*", log=True)
    lbfgs = lines[-1]
    _write_table(
        rows,
        out,
        f"Top {len(rows)} trials on the test split ({steps} steps)",
        f"Reference: {lbfgs.name} reaches a final gap of {float(lbfgs.gap[-1]):.4g}.",
    )
    return rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipeline.sweep", description=__doc__.splitlines()[0])
    parser.add_argument("--space", type=Path, required=True, help="a search space from tune_spaces/")
    parser.add_argument("--config", type=Path, required=True, help="the base preset from configs/")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--name", help="sweep name (default: <preset>-sweep); with --resume, the sweep to continue")
    parser.add_argument("--num-samples", type=int, default=8, help="samples drawn from the space (times the grid)")
    parser.add_argument("--max-concurrent", type=int, default=None, help="trials at once (default: as many as fit)")
    parser.add_argument("--workers", type=int, default=1, help="Ray Train workers per trial")
    parser.add_argument("--cpus-per-worker", type=float, default=1.0)
    parser.add_argument("--metric", default="val_loss", help="validation metric to minimise (ASHA and ranking)")
    parser.add_argument("--grace", type=int, default=2, help="validations before ASHA may stop a trial")
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--test-steps", type=int, default=20)
    parser.add_argument(
        "--compare-with",
        type=Path,
        action="append",
        default=[],
        metavar="CHECKPOINT",
        help="HMR: a baseline checkpoint (e.g. LGD's best.pt) for the comparison of the top trials",
    )
    parser.add_argument("--resume", action="store_true", help="continue an interrupted sweep of the same --name")
    add_arguments(parser)  # --runs-dir, --storage
    cluster_arguments(parser, "trial")  # --num-cpus, --worker-resource, --resource-timeout
    parser.add_argument("--smoke-test", action="store_true", help="tiny trials, to check the set-up")
    parser.add_argument("--verbose", action="store_true", help="also show Ray's, Tune's, MLflow's and the workers' own output")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    overrides = args.overrides + (["meta.iterations=6", "meta.val_every=2"] if args.smoke_test else [])
    try:
        base = load_config(args.config, overrides)
        if base.task.name == "hmr":  # trials run in folders of their own
            base = absolute_paths(base)
        space = load_space(args.space)
        check_values(space, config_to_dict(base), args.space)
    except (ConfigError, SpaceError, PrepareError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from ray import tune

    name = args.name or f"{base.name}-sweep"
    runs_dir = args.runs_dir.resolve()
    try:
        storage = resolve(args.storage, runs_dir)
    except StorageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    uri = tracking_uri()
    console = setup(runs_dir / name / "console.log", args.verbose)
    if not args.verbose:  # Tune's newer console output prints its header and paths at any verbosity
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    console.phase(f"sweep {name}: {args.space} over {args.config}, {args.num_samples} sample(s) x {grid_size(space)} grid point(s)")
    console.phase(connect_ray(args.num_cpus, args.verbose))
    import ray

    custom = dict(args.worker_resource)
    try:  # a trial's request, as fit_with_ray will make it (trials see the same cluster)
        request = admit(
            base,
            storage,
            "a trial",
            workers=args.workers,
            cpus_per_worker=args.cpus_per_worker,
            gpu=None,
            custom=custom,
            timeout=args.resource_timeout,
            driver_cpus=TRIAL_DRIVER_CPU,
        )
        parent = Run.open(uri, base.name, name, base, tags={"lsr1.sweep_space": str(args.space), "lsr1.kind": "sweep"})
    except (StorageError, ResourceError, TrackingError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    fits = max(1, request.copies(ray.cluster_resources()))  # >= 1: require_resources passed
    concurrent = min(args.max_concurrent or fits, fits)
    trainable = tune.with_resources(trial, {"CPU": TRIAL_DRIVER_CPU})
    tic = time.time()
    if args.resume:
        path = join(storage, "tune", name)
        if not tune.Tuner.can_restore(path):
            print(f"error: no sweep to resume at {path}", file=sys.stderr)
            return 2
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_errored=True)
    else:
        param_space = {
            "base": config_to_dict(base),
            "values": to_tune(space),
            "sweep": name,
            "tracking_uri": uri,
            "parent_run_id": parent.run_id,
            "storage": storage,
            "workers": args.workers,
            "cpus_per_worker": args.cpus_per_worker,
            "worker_resources": custom,
            "progress": board_name(name),
        }
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(
                num_samples=args.num_samples, max_concurrent_trials=concurrent, scheduler=_scheduler(args.metric, base, args.grace)
            ),
            # Tune's own status tables stay out of the console (verbose 0; --verbose: Tune's default)
            run_config=tune.RunConfig(
                name=name,
                storage_path=join(storage, "tune"),
                verbose=None if args.verbose else 0,
                callbacks=[TrialLines(console, name, base.meta.iterations)],
            ),
        )
    console.phase(f"Ray Tune: {concurrent} trial(s) at a time, each {request.describe()}; MLflow parent run {parent.run_id}")
    with console.follow(board_name(name)):
        results = tuner.fit()
    frame = results.get_dataframe(filter_metric=args.metric, filter_mode="min")
    if frame.empty or args.metric not in frame:
        parent.finish(ok=False)
        print("error: no trial reported a validation result", file=sys.stderr)
        return 1
    frame = frame.sort_values(args.metric).reset_index(drop=True)
    checkpoints = _trial_outcomes(results, uri, base.name, name, runs_dir, storage)
    frame = frame[frame["trial_id"].isin(checkpoints)].reset_index(drop=True)
    value_columns = [c for c in frame.columns if c.startswith("config/values/")]
    top = []
    for rank, row in frame.head(args.top_k).iterrows():
        trial_id = row["trial_id"]
        child = Run.find(uri, base.name, f"{name}-{trial_id}")
        top.append(
            {
                "rank": rank + 1,
                "trial": trial_id,
                args.metric: float(row[args.metric]),
                "params": {c.removeprefix("config/values/"): row[c] for c in value_columns},
                "checkpoint": str(checkpoints[trial_id] / "best.pt"),
                "run_id": child.run_id if child else "",
            }
        )
    out = runs_dir / name / "comparison"
    console.phase(f"test split: the top {len(top)} of {len(frame)} trials, {args.test_steps} steps")
    rows = compare(top, args.test_steps, out, args.compare_with)
    for path in sorted(p for p in out.iterdir() if p.is_file()):
        parent.log_artifact(path, "comparison")
    best = rows[0]
    headline = "test_pa_mpjpe" if "test_pa_mpjpe" in best else "test_final_gap"
    parent.log_metrics([(0, {f"best_{args.metric}": best[args.metric], f"best_{headline}": best[headline], "trials": float(len(frame))})])
    parent.set_tags({"lsr1.best_trial": best["trial"], "lsr1.best_run_id": best["run_id"]})
    registered = parent.log_model(load_checkpoint(top[0]["checkpoint"]), base.name, alias="champion")
    parent.finish(ok=True)
    console.result(
        f"\nsweep {name}: {len(frame)} trials in {time.time() - tic:.0f} s; best {best['trial']} {args.metric} {best[args.metric]:.4g}"
    )
    console.result((out / "comparison.md").read_text().strip())
    console.result(f"\n{'comparison':12}{out} (comparison.md, .csv, .png)\n{'registered':12}{registered} (alias champion)")
    console.result(f"{'log':12}{console.log_path}\n\n{parent.where_to_look()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
