"""Distributed meta-training: `python -m pipeline.train --config configs/<preset>.yaml [--set a.b=c ...]`.

Ray Train runs the plain `lsr1.meta.train` loop on --workers workers (DDP over the learned modules; gloo on
CPU, nccl on GPU), each on its share of every global batch. Checkpoints (model, meta-optimizer, scheduler,
iteration, RNG) go to Ray's storage (--storage: a local folder, a shared mount or s3://bucket/prefix;
`pipeline.storage`) after every validation and every few minutes; a failed worker group restarts from the last
one (--max-failures), and running the same --name again resumes, both reading the checkpoint from that storage
(runs/<name>/ on the driver is a copy of the final one). On more than one node a local folder that some node
cannot see stops the run at once, saying what to pass. MLflow gets one run per training run (params,
per-iteration metrics, checkpoint costs, test curves, the best checkpoint, the registered model).
--local runs the same loop in this process without Ray. Under `ray job submit` it joins that cluster.
The console (`pipeline.console`) gets a line per phase, the run's progress bar and the results; the rest
(Ray's, MLflow's INFO lines) goes to runs/<name>/console.log and the workers' output to Ray's session logs,
both named at the end (--verbose shows everything).

Before it starts, the run's request (workers x CPUs/GPUs per worker, plus DATA_CPUS for Ray Data on HMR) is
compared with what the cluster has: a run that cannot fit stops at once, naming what to lower, instead of
waiting forever for CPUs. On an autoscaling cluster (one whose autoscaler config can grow it enough) it asks
the autoscaler for the resources and waits up to --resource-timeout seconds (default RESOURCE_TIMEOUT_S);
--resource-timeout also makes it wait on a fixed cluster (e.g. for nodes started by hand).

    python -m pipeline.train --config configs/quadratic.yaml --workers 2
    python -m pipeline.train --config configs/smoke.yaml --smoke-test       # seconds, for CI
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from lsr1.checkpoint import load_checkpoint
from lsr1.config import ConfigError, ExperimentConfig, config_from_dict, config_to_dict, load_config
from lsr1.meta import TrainHooks, train
from lsr1.tasks.prepare import PrepareError, prepared_files, require_folders
from pipeline.cluster import (
    DATA_CPUS,
    ResourceError,
    admit,
    connect_ray,
    ray_logs,
    worker_resources,
)
from pipeline.cluster import (
    add_arguments as cluster_arguments,
)
from pipeline.console import NAMESPACE, Console, board_name, forward_warnings, progress_hook, setup
from pipeline.data import absolute_paths
from pipeline.storage import StorageError, add_arguments, exists, join, resolve, touch
from pipeline.tracking import MetricsBuffer, Run, TrackingError, tracking_uri

log = logging.getLogger("pipeline.train")

# The fault-injection tests' hook, and nothing else's: with this variable set to an iteration in the driver's
# environment, rank 0 SIGKILLs its own process once there (no command-line flag reaches it)
TEST_FAULT_VARIABLE = "LSR1_TEST_KILL_RANK0_AT"
FAULT_DELAY_S = 5.0  # from the fault to the kill, so that Ray has collected the last report


# --------------------------------------------------------------------------------------------------------
# the worker: unpack, call lsr1.meta.train, touch Ray only to prepare, agree, report


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch
    import torch.distributed as dist

    config = config_from_dict(ExperimentConfig, loop_config["config"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    run_dir = Path(tempfile.mkdtemp(prefix=f"lsr1-{config.name}-rank{rank}-"))
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:  # a restarted worker group, or the same --name run again: from Ray's storage
        with checkpoint.as_directory() as stored:
            shutil.copytree(stored, run_dir, dirs_exist_ok=True)

    def agree(flag: bool) -> bool:
        if world == 1:
            return flag
        vote = torch.tensor([int(flag)], device=device)
        dist.all_reduce(vote, op=dist.ReduceOp.MIN)
        return bool(vote.item())

    buffer = MetricsBuffer(Run(loop_config["tracking_uri"], loop_config["run_id"])) if rank == 0 else None
    fail_once_at = loop_config.get("fail_once_at")
    show, board = None, None
    if loop_config.get("progress"):  # the driver draws the progress bar and shows the warnings (pipeline.console)
        import ray

        board = ray.get_actor(loop_config["progress"], namespace=NAMESPACE)
        forward_warnings(board)
        if rank == 0:
            show = progress_hook(lambda *a: board.update.remote(*a), loop_config["name"], config.meta.iterations, config.meta.select_metric)
            board.update.remote(loop_config["name"], 0, config.meta.iterations, {})  # the bar, while the data warms up
    if buffer is not None and checkpoint is not None:  # where each resume began: in the run's history, on the console
        resumed = load_checkpoint(run_dir / "last.pt")["iteration"]
        buffer.run.log_metrics([(resumed, {"resumed_from": float(resumed)})])
        if board is not None:
            board.warn.remote(f"{loop_config['name']}: rank 0 (pid {os.getpid()}) resumes from the checkpoint of iteration {resumed}")

    def on_iteration(iteration: int, metrics: dict[str, float]) -> None:
        if buffer is not None:
            buffer.add(iteration, metrics)
        if show is not None:
            show(iteration, metrics)
        if rank == 0 and iteration == fail_once_at and not exists(loop_config["fault_marker"]):
            touch(loop_config["fault_marker"])  # in Ray's storage: the restarted rank 0 may run on another node
            log.warning("fault injected at iteration %d (%s): rank 0 kills its own process", iteration, TEST_FAULT_VARIABLE)
            # Ray's controller collects a report when it polls the workers (RAY_TRAIN_HEALTH_CHECK_INTERVAL_S, 2 s):
            # a kill sooner after the last one would lose it, and the restart would resume from the one before
            time.sleep(FAULT_DELAY_S)
            os.kill(os.getpid(), signal.SIGKILL)

    def on_checkpoint(iteration: int, directory: Path, metrics: dict[str, float]) -> None:
        scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float))} | {"iteration": iteration}
        if buffer is not None:
            buffer.flush()
            size = sum(path.stat().st_size for path in directory.iterdir() if path.is_file())
            tic = time.monotonic()
            ray.train.report(scalars, checkpoint=ray.train.Checkpoint.from_directory(directory))  # uploads it, then returns
            buffer.run.log_metrics([(iteration, {"checkpoint_s": time.monotonic() - tic, "checkpoint_mb": size / 1e6})])
        else:
            ray.train.report(scalars)

    hooks = TrainHooks(
        on_iteration=on_iteration,
        on_checkpoint=on_checkpoint,
        wrap=ray.train.torch.prepare_model if world > 1 else None,
        agree=agree,
        rank=rank,
        world_size=world,
    )
    train_problems, val_problems = None, None
    if config.task.name == "hmr":  # this worker's Ray Data shard; validation on the prepared 3DPW split
        from pipeline.data import pw3d_problems, worker_problems

        shard = ray.train.get_dataset_shard("train")
        train_problems = worker_problems(shard, config.hmr, config.task.batch_size // world, device)
        val_problems = pw3d_problems(config.hmr, "validation", prepared_files(config.hmr.prepared_dir)[1], device)
    train(
        config,
        run_dir,
        device=device,
        hooks=hooks,
        train_problems=train_problems,
        worker_batches=train_problems is not None,
        val_problems=val_problems,
        progress=False,
    )


def fit_with_ray(
    config: ExperimentConfig,
    run: Run,
    name: str,
    storage: str,
    workers: int,
    *,
    cpus_per_worker: float | None = None,
    gpu: bool | None = None,
    custom_resources: dict[str, float] | None = None,
    max_failures: int = 3,
    callbacks: list | None = None,
    progress: str | None = None,
    console: Console | None = None,
    dest: Path,
) -> None:
    """Run `train_loop_per_worker` under a TorchTrainer and copy the final checkpoint directory to `dest`.

    HMR: the workers read a Ray Data dataset of the prepared AMASS shards (`pipeline.data`), and
    DATA_CPUS are left to its tasks and actor. Ray Train keeps the run under storage/name (a folder or a URI), so
    calling this again with the same name resumes it; `dest` gets its final checkpoint from there.
    custom_resources: Ray resources each worker asks for besides CPUs (e.g. one per node: a worker per node).
    progress: the name of a ProgressBoard actor that rank 0 reports iterations to."""
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    cpus, use_gpu = worker_resources(config, workers, cpus_per_worker, gpu, ray.cluster_resources())
    datasets = None
    if config.task.name == "hmr":
        from pipeline.data import training_dataset

        if config.task.batch_size < workers:
            raise ValueError(f"task.batch_size {config.task.batch_size} is smaller than the {workers} workers that share it")
        config = absolute_paths(config)  # workers and actors do not run in this folder
        require_folders(config.hmr, ("body_dir",))
        datasets = {"train": training_dataset(config, prepared_files(config.hmr.prepared_dir, verify=True)[0])}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "config": config_to_dict(config),
            "tracking_uri": run.uri,
            "run_id": run.run_id,
            "fail_once_at": int(os.environ[TEST_FAULT_VARIABLE]) if os.environ.get(TEST_FAULT_VARIABLE) else None,
            "fault_marker": join(storage, name, ".fault-injected"),
            "name": name,
            "progress": progress,
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=workers, use_gpu=use_gpu, resources_per_worker={"CPU": cpus, **(custom_resources or {})}
        ),
        datasets=datasets,
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage,
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            callbacks=callbacks,
        ),
    )
    what = f"Ray Train: {workers} worker{'s' * (workers > 1)} x {cpus:g} CPU{' + 1 GPU' if use_gpu else ''}"
    if datasets:
        what += f", Ray Data feeding {config.hmr.prepared_dir} ({DATA_CPUS:g} CPU)"
    if console is not None:
        console.phase(what)
    else:
        log.info("%s: %s", name, what)
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"training run {name} finished without a checkpoint")
    result.checkpoint.to_directory(str(dest))


def check_data(config: ExperimentConfig, local: bool) -> None:
    """A PrepareError (naming the path, and LSR1_DATA_DIR in a Ray job) unless the data an HMR run reads is
    there: the body, and the prepared data (Ray) or the AMASS and 3DPW folders (--local)."""
    require_folders(config.hmr, ("body_dir", "amass_dir", "pw3d_dir") if local else ("body_dir",))
    if not local:
        prepared_files(config.hmr.prepared_dir)


def _fit_locally(config: ExperimentConfig, run: Run, name: str, dest: Path, console: Console) -> None:
    buffer = MetricsBuffer(run)
    show = progress_hook(console.bar, name, config.meta.iterations, config.meta.select_metric)

    def on_iteration(iteration: int, metrics: dict[str, float]) -> None:
        buffer.add(iteration, metrics)
        show(iteration, metrics)

    hooks = TrainHooks(on_iteration=on_iteration, on_checkpoint=lambda i, d, m: buffer.flush())
    train(config, dest, hooks=hooks, device="cuda" if torch.cuda.is_available() else "cpu", progress=False)
    console.close_bar(name)


def _fit_with_board(console: Console, name: str, **fit: Any) -> None:
    """fit_with_ray with the progress bar of its run on this console (a ProgressBoard actor in between)."""
    with console.follow(board_name(name)):
        fit_with_ray(name=name, progress=board_name(name), console=console, **fit)


# --------------------------------------------------------------------------------------------------------
# the driver: config, MLflow run, fit, then artifacts and the registered model


def _finalize(config: ExperimentConfig, run: Run, dest: Path, test_steps: int, console: Console) -> dict[str, Any]:
    """Evaluate the best checkpoint on the test set and log artifacts and the model to MLflow."""
    from lsr1.experiments.evaluate import evaluate
    from pipeline.evaluate import log_evaluation

    best = dest / "best.pt"
    payload = load_checkpoint(best)
    # how far training went: the last line of the metrics log (last.pt would hold the same, at a checkpoint's size)
    last = json.loads((dest / "metrics.jsonl").read_text().splitlines()[-1])
    console.phase(f"test split: the best checkpoint (iteration {payload['best_iteration']}), {test_steps} inner steps")
    config_path = dest / "config.yaml"
    config_path.write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
    for path, folder in ((config_path, None), (best, "checkpoints"), (dest / "metrics.jsonl", None)):
        run.log_artifact(path, folder)
    groups = evaluate([best], [config.lsr1.buffer_size], test_steps, dest / "test")
    summary = {
        "best_val_loss": payload["best_val_loss"],
        "best_iteration": payload["best_iteration"],
        "iterations": last["iteration"],
        "skipped": last["skipped"],
    }
    run.log_metrics([(last["iteration"], {k: float(v) for k, v in summary.items()})])
    summary |= log_evaluation(run, groups, dest / "test", last["iteration"])
    console.phase("MLflow: config, checkpoint, metrics, test figures and the model")
    # LGD baselines of a preset are registered beside its L-SR1 models, not as new versions of them
    summary["registered_model"] = run.log_model(payload, f"{config.name}-lgd" if config.learner == "lgd" else config.name)
    return summary


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipeline.train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True, help="a preset from configs/")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a config key (repeatable)"
    )
    parser.add_argument("--name", help="run name (default: the preset's name); the same name resumes")
    parser.add_argument("--workers", type=int, default=2, help="Ray Train workers (default 2)")
    parser.add_argument("--local", action="store_true", help="run in this process, without Ray")
    parser.add_argument("--smoke-test", action="store_true", help="a few iterations, to check the set-up")
    add_arguments(parser)  # --runs-dir, --storage
    parser.add_argument("--max-failures", type=int, default=3, help="worker-group restarts before giving up")
    cluster_arguments(parser, "run")  # --num-cpus, --worker-resource, --resource-timeout
    parser.add_argument("--cpus-per-worker", type=float, default=None)
    parser.add_argument(
        "--gpu", action=argparse.BooleanOptionalAction, default=None, help="use GPUs (default: if the cluster has one per worker)"
    )
    parser.add_argument("--test-steps", type=int, default=20, help="inner steps of the final test-set evaluation")
    parser.add_argument("--verbose", action="store_true", help="also show Ray's, MLflow's and the workers' own output")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be >= 1")
    if args.local and args.storage:
        parser.error("--storage is where Ray keeps a run; --local runs without Ray and keeps it in --runs-dir")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    overrides = list(args.overrides)
    if args.smoke_test:
        overrides += ["meta.iterations=6", "meta.val_every=3"]
    try:
        config = load_config(args.config, overrides)
        if config.task.name == "hmr":  # the data paths, absolute in the data root (LSR1_DATA_DIR)
            config = absolute_paths(config)
            check_data(config, local=args.local)
    except (ConfigError, PrepareError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    args.name = args.name or config.name
    runs_dir = args.runs_dir.resolve()
    dest = runs_dir / args.name
    custom = dict(args.worker_resource)
    try:
        storage = None if args.local else resolve(args.storage, runs_dir)
    except StorageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    console = setup(dest / "console.log", args.verbose)
    console.phase(
        f"training run {args.name}: {args.config}, {config.learner} on {config.task.name}, {config.meta.iterations} meta-iterations"
    )
    if not args.local:
        console.phase(connect_ray(args.num_cpus, args.verbose))
        try:
            admit(
                config,
                storage,
                f"training run {args.name}",
                workers=args.workers,
                cpus_per_worker=args.cpus_per_worker,
                gpu=args.gpu,
                custom=custom,
                timeout=args.resource_timeout,
            )
        except (StorageError, ResourceError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        console.phase(f"storage: {join(storage, 'ray', args.name)}")
    try:
        run = Run.open(
            tracking_uri(), config.name, args.name, config, tags={"lsr1.mode": "local" if args.local else f"ray x{args.workers}"}
        )
    except TrackingError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    tic = time.time()
    console.phase(f"MLflow: run {run.run_id} in experiment {config.name}")
    try:
        if args.local:
            _fit_locally(config, run, args.name, dest, console)
        else:
            _fit_with_board(
                console,
                args.name,
                config=config,
                run=run,
                storage=join(storage, "ray"),
                workers=args.workers,
                cpus_per_worker=args.cpus_per_worker,
                gpu=args.gpu,
                custom_resources=custom,
                max_failures=args.max_failures,
                dest=dest,
            )
        summary = _finalize(config, run, dest, args.test_steps, console)
    except PrepareError as err:  # data changed or missing since the check above: the message says which
        print(f"error: {err}", file=sys.stderr)
        run.finish(ok=False)
        return 1
    except Exception:
        log.exception("training run %s failed", args.name)
        run.finish(ok=False)
        return 1
    run.finish(ok=True)
    summary["wall_time_s"] = round(time.time() - tic, 1)
    lines = [f"\n{'run':28}{args.name}"]
    lines += [f"{key:28}{value:.6g}" if isinstance(value, float) else f"{key:28}{value}" for key, value in summary.items()]
    lines += [
        f"{'checkpoints':28}{dest}",
        f"{'figures':28}{dest / 'test'}/*.png",
        f"{'MLflow run':28}{run.run_id}",
        f"{'log':28}{console.log_path}" + (f" (Ray's: {ray_logs()})" if not args.local and ray_logs() else ""),
    ]
    console.result("\n".join(lines))
    console.result(f"\n{run.where_to_look()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
