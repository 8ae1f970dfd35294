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
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from lsr1.checkpoint import load_checkpoint
from lsr1.config import ConfigError, ExperimentConfig, config_from_dict, config_to_dict, load_config
from lsr1.meta import TrainHooks, train
from pipeline.console import NAMESPACE, Console, board_name, forward_warnings, progress_hook, route_library_logs, setup
from pipeline.data import absolute_paths
from pipeline.prepare import PrepareError, prepared_files, require_folders
from pipeline.storage import StorageError, add_arguments, exists, join, require_shared, resolve, touch
from pipeline.tracking import MetricsBuffer, Run, TrackingError, tracking_uri

log = logging.getLogger("pipeline.train")

# CPUs that an HMR run leaves to Ray Data: a read/shuffle task (1 CPU) beside the KeypointBatches actor
# (0.5); with less the feed waits forever for CPUs that the training workers hold
DATA_CPUS = 1.5
RESOURCE_TIMEOUT_S = 900.0  # how long a run waits for an autoscaling cluster to grow (--resource-timeout)
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


def connect_ray(num_cpus: int | None = None, verbose: bool = False) -> str:
    """Join the cluster of RAY_ADDRESS (set by `ray job submit` and `ray start`), else start a local one;
    returns a phrase saying which. The workers' output reaches this driver only when verbose (Ray's
    `log_to_driver`): otherwise it stays in Ray's session logs, and the console shows progress and warnings
    through a ProgressBoard."""
    import ray

    route_library_logs()  # Ray's loggers into this command's log (pipeline.console), and ray.init leaves them so
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")  # otherwise every worker line prints twice
    # Ray Train's preemption watcher (it notices spot nodes being drained; a restart from the last checkpoint
    # covers that too) logs an ERROR line for its own constructor arguments; RAY_TRAIN_ENABLE_PREEMPTION_WATCHER=1
    # turns it back on
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    # starting a worker imports torch, mlflow and ray.train: on a busy 2-core machine that can exceed Ray's 60 s
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "600")
    if ray.is_initialized():
        return "Ray: this process's instance"
    if os.environ.get("RAY_ADDRESS"):
        context = ray.init(log_to_driver=verbose, configure_logging=False)
        where = f"Ray: joined the cluster at {os.environ['RAY_ADDRESS']}"
    else:
        # the dashboard serves the State API through which Ray Train notices a killed TrainController and frees
        # its placement group; without it every trial that Tune stops leaks its CPUs and a sweep stalls
        # a private instance: its own dashboard port, so that it starts beside another cluster on this machine
        context = ray.init(
            address="local",
            num_cpus=num_cpus,
            include_dashboard=True,
            dashboard_port=free_ports(1)[0],
            log_to_driver=verbose,
            configure_logging=False,
        )
        where = f"Ray: started a private instance, {ray.cluster_resources().get('CPU', 0):g} CPUs, dashboard http://{context.dashboard_url}"
    import ray.data  # noqa: F401  (it sets up its own logging on import)
    import ray.train  # noqa: F401

    route_library_logs()
    return where


def ray_logs() -> str | None:
    """The folder of Ray's session logs (workers, Ray Data, Ray Train), if this process knows it."""
    import ray

    with contextlib.suppress(AttributeError, RuntimeError):
        return f"{ray._private.worker._global_node.get_session_dir_path()}/logs"
    return None


def free_ports(count: int) -> list[int]:
    """`count` different TCP ports that are free on this machine now (all held open while choosing, so the
    OS cannot hand out the same one twice)."""
    with contextlib.ExitStack() as stack:
        probes = [stack.enter_context(socket.socket()) for _ in range(count)]
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in probes]


# --------------------------------------------------------------------------------------------------------
# what a run asks of the cluster, checked before it starts


class ResourceError(RuntimeError):
    """A run or trial that the Ray cluster cannot fit (it would wait forever for CPUs or GPUs)."""


@dataclass(frozen=True)
class Request:
    """The resources of one training run: its workers (CPUs, GPUs and custom resources each), Ray Data's share
    (HMR) and, in a sweep, its trial driver."""

    workers: int
    cpus_per_worker: float
    gpus_per_worker: float = 0.0
    data_cpus: float = 0.0
    driver_cpus: float = 0.0
    custom: dict[str, float] = field(default_factory=dict)

    @property
    def cpus(self) -> float:
        return self.workers * self.cpus_per_worker + self.data_cpus + self.driver_cpus

    def describe(self) -> str:
        parts = [f"{self.workers} worker{'s' * (self.workers > 1)} x {self.cpus_per_worker:g} CPU"]
        if self.gpus_per_worker:
            parts[0] += f" + {self.gpus_per_worker:g} GPU"
        parts[0] += "".join(f" + {amount:g} {key}" for key, amount in self.custom.items())
        if self.data_cpus:
            parts.append(f"{self.data_cpus:g} CPU for Ray Data")
        if self.driver_cpus:
            parts.append(f"{self.driver_cpus:g} CPU for the trial driver")
        gpus = f" and {self.workers * self.gpus_per_worker:g} GPUs" if self.gpus_per_worker else ""
        return f"{self.cpus:g} CPUs{gpus} ({' + '.join(parts)})"

    def shortfall(self, total: dict[str, float], largest_node: dict[str, float]) -> str | None:
        """Why this request does not fit a cluster with `total` resources and that largest node, or None."""
        if self.cpus > total.get("CPU", 0) + 1e-9:
            return f"the Ray cluster has {total.get('CPU', 0):g} CPUs"
        if self.cpus_per_worker > largest_node.get("CPU", 0) + 1e-9:
            return f"its largest node has {largest_node.get('CPU', 0):g} CPUs, and a worker runs on one node"
        if self.workers * self.gpus_per_worker > total.get("GPU", 0) + 1e-9:
            return f"the Ray cluster has {total.get('GPU', 0):g} GPUs"
        for key, amount in self.custom.items():
            if self.workers * amount > total.get(key, 0) + 1e-9:
                return f"the Ray cluster has {total.get(key, 0):g} of the resource {key}"
        return None

    def copies(self, total: dict[str, float]) -> int:
        """How many runs of this request fit in `total` at once (by CPUs, GPUs and custom resources)."""
        needs = {"CPU": self.cpus, "GPU": self.workers * self.gpus_per_worker} | {k: self.workers * v for k, v in self.custom.items()}
        return min(int(total.get(key, 0) / amount + 1e-9) for key, amount in needs.items() if amount > 0)

    def lower(self, total: dict[str, float]) -> str:
        """Flags that would fit `total`, as advice."""
        if self.workers * self.gpus_per_worker > total.get("GPU", 0):
            return f"--workers {max(1, int(total.get('GPU', 0)))} (one GPU each) or --no-gpu"
        for key, amount in self.custom.items():
            if self.workers * amount > total.get(key, 0):
                if total.get(key, 0) < amount:
                    return f"nothing: no node offers {amount:g} of the resource {key} (ray start --resources '{{\"{key}\": {amount:g}}}')"
                return f"--workers {int(total.get(key, 0) / amount + 1e-9)} (--worker-resource {key}={amount:g} each)"
        room = total.get("CPU", 0) - self.data_cpus - self.driver_cpus
        for cpus in (4.0, 2.0, 1.0, 0.5, 0.25):
            if cpus <= self.cpus_per_worker and self.workers * cpus <= room + 1e-9:
                return f"--workers {self.workers} --cpus-per-worker {cpus:g}"
        if room >= 0.25:
            return f"--workers {min(self.workers, int(room / 0.25 + 1e-9))} --cpus-per-worker 0.25"
        return f"nothing: Ray Data alone needs {self.data_cpus + self.driver_cpus:g} CPUs; use a machine or cluster with more CPUs"


def worker_resources(
    config: ExperimentConfig, workers: int, cpus_per_worker: float | None, gpu: bool | None, resources: dict[str, float]
) -> tuple[float, bool]:
    """(CPUs per worker, whether workers use a GPU): the given values, else what the cluster has room for
    (HMR leaves DATA_CPUS to Ray Data; a GPU per worker when there are enough)."""
    use_gpu = gpu if gpu is not None else resources.get("GPU", 0) >= workers
    if cpus_per_worker:
        return cpus_per_worker, use_gpu
    hmr = config.task.name == "hmr"
    spare = DATA_CPUS if hmr else 0.0
    return max(0.25 if hmr else 0.5, min(4.0, (resources.get("CPU", 1) - spare) / workers)), use_gpu


def run_request(
    config: ExperimentConfig,
    workers: int,
    cpus_per_worker: float,
    use_gpu: bool,
    driver_cpus: float = 0.0,
    custom: dict[str, float] | None = None,
) -> Request:
    return Request(
        workers, cpus_per_worker, 1.0 if use_gpu else 0.0, DATA_CPUS if config.task.name == "hmr" else 0.0, driver_cpus, dict(custom or {})
    )


def worker_resource(text: str) -> tuple[str, float]:
    """`NAME=AMOUNT` of --worker-resource: a custom Ray resource (as `ray start --resources` gives nodes) per worker."""
    key, sep, amount = text.partition("=")
    try:
        value = float(amount)
    except ValueError:
        value = -1.0
    if not sep or not key or key in ("CPU", "GPU") or value <= 0:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected NAME=AMOUNT with a custom resource name (not CPU/GPU: "
            "--cpus-per-worker, --gpu) and an amount > 0, e.g. node_slot=1"
        )
    return key, value


def _cluster() -> tuple[dict[str, float], dict[str, float]]:
    """The cluster's total resources and those of its largest alive node (by CPUs)."""
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    return ray.cluster_resources(), max(nodes, key=lambda r: r.get("CPU", 0), default={})


def _autoscaling_limit() -> dict[str, float] | None:
    """The most resources the cluster's autoscaler may start (from its cluster config), or None on a cluster
    that does not autoscale (a local instance, `ray start` by hand)."""
    try:
        from ray._private.state import state  # the call Ray Train itself uses for this (worker_group.py)

        return state.get_max_resources_from_cluster_config()
    except (ImportError, AttributeError):  # moved in another Ray release: treated as a fixed cluster
        return None


def require_resources(request: Request, what: str, timeout: float | None = None) -> None:
    """Return once the cluster can fit `request`; a ResourceError naming the request, the cluster and what
    to lower when it cannot. A fixed cluster fails at once (or after waiting `timeout` s, if given); an
    autoscaling one is asked for the resources and given `timeout` s (default RESOURCE_TIMEOUT_S) to grow."""
    total, largest = _cluster()
    why = request.shortfall(total, largest)
    if why is None:
        return
    limit = _autoscaling_limit()
    if limit is not None and request.shortfall(limit, limit) is not None:  # more than the autoscaler may ever start
        raise ResourceError(
            f"{what} asks for {request.describe()}, but even fully scaled up the cluster has "
            f"{limit.get('CPU', 0):g} CPUs and {limit.get('GPU', 0):g} GPUs. Lower it: {request.lower(limit)}"
        )
    if timeout is None:
        timeout = RESOURCE_TIMEOUT_S if limit is not None else 0.0
    message = f"{what} asks for {request.describe()}, but {why}; it would wait forever. Lower it: {request.lower(total)}"
    if timeout <= 0:
        raise ResourceError(message)
    log.warning(
        "%s asks for %s, but %s: waiting up to %.0f s for %s (--resource-timeout)",
        what,
        request.describe(),
        why,
        timeout,
        "the autoscaler" if limit is not None else "more nodes",
    )
    if limit is not None:
        from ray.autoscaler.sdk import request_resources

        bundles = [{"CPU": request.cpus_per_worker, "GPU": request.gpus_per_worker, **request.custom} for _ in range(request.workers)]
        request_resources(bundles=[{k: v for k, v in b.items() if v} for b in bundles] + [{"CPU": request.data_cpus + request.driver_cpus}])
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            time.sleep(min(5.0, max(0.0, deadline - time.monotonic())))
            if request.shortfall(*_cluster()) is None:
                return
    finally:
        if limit is not None:  # the run's own placement group keeps the new nodes busy from here on
            request_resources(bundles=[])
    raise ResourceError(f"{message} (waited {timeout:.0f} s)")


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
    from pipeline.evaluate import evaluate, log_evaluation

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
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of a local Ray instance (default: all)")
    parser.add_argument("--cpus-per-worker", type=float, default=None)
    parser.add_argument(
        "--gpu", action=argparse.BooleanOptionalAction, default=None, help="use GPUs (default: if the cluster has one per worker)"
    )
    parser.add_argument(
        "--worker-resource",
        type=worker_resource,
        action="append",
        default=[],
        metavar="NAME=AMOUNT",
        help="a custom Ray resource each worker asks for (repeatable); one per node pins a worker to each node",
    )
    parser.add_argument("--test-steps", type=int, default=20, help="inner steps of the final test-set evaluation")
    parser.add_argument(
        "--resource-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help=f"wait this long for the cluster to fit the run (default: {RESOURCE_TIMEOUT_S:.0f} on an autoscaling cluster, else 0)",
    )
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
        import ray

        cpus, use_gpu = worker_resources(config, args.workers, args.cpus_per_worker, args.gpu, ray.cluster_resources())
        try:
            require_shared(storage, autoscaling=_autoscaling_limit() is not None)
            require_resources(
                run_request(config, args.workers, cpus, use_gpu, custom=custom), f"training run {args.name}", args.resource_timeout
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
