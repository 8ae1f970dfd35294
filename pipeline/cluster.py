"""How a run meets the Ray cluster: joining it (`connect_ray`), and admission, i.e. what a run or a sweep trial asks
of the cluster, checked before it starts (`Request`, `require_resources`). A request that cannot fit stops at
once, naming what to lower, instead of waiting forever for CPUs; on an autoscaling cluster (one whose autoscaler
config can grow it enough) the autoscaler is asked for the resources and given --resource-timeout seconds
(default RESOURCE_TIMEOUT_S). `pipeline.train` and `pipeline.sweep` share all of it."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import socket
import time
from dataclasses import dataclass, field

from lsr1.config import ExperimentConfig
from pipeline.console import route_library_logs
from pipeline.storage import require_shared

log = logging.getLogger("pipeline.train")  # the run's log, where its waits are

# CPUs that an HMR run leaves to Ray Data: a read/shuffle task (1 CPU) beside the KeypointBatches actor
# (0.5); with less the feed waits forever for CPUs that the training workers hold
DATA_CPUS = 1.5
RESOURCE_TIMEOUT_S = 900.0  # how long a run waits for an autoscaling cluster to grow (--resource-timeout)


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


def add_arguments(parser: argparse.ArgumentParser, unit: str) -> None:
    """--num-cpus, --worker-resource and --resource-timeout, for a command whose workers serve one `unit` (a run,
    a trial)."""
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of a local Ray instance (default: all)")
    parser.add_argument(
        "--worker-resource",
        type=worker_resource,
        action="append",
        default=[],
        metavar="NAME=AMOUNT",
        help=f"a custom Ray resource each worker of a {unit} asks for (repeatable); one per node pins a worker to each node",
    )
    parser.add_argument(
        "--resource-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help=f"wait this long for the cluster to fit a {unit} (default: {RESOURCE_TIMEOUT_S:.0f} on an autoscaling cluster, else 0)",
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


def autoscaling_limit() -> dict[str, float] | None:
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
    limit = autoscaling_limit()
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


def admit(
    config: ExperimentConfig,
    storage: str,
    what: str,
    *,
    workers: int,
    cpus_per_worker: float | None,
    gpu: bool | None,
    custom: dict[str, float],
    timeout: float | None,
    driver_cpus: float = 0.0,
) -> Request:
    """The checks before a run, or a sweep's trials, start on the cluster this process joined: the storage is one
    that every node reaches (`pipeline.storage.require_shared`) and the request fits (`require_resources`).
    Raises StorageError or ResourceError with the message to print; returns the request."""
    import ray

    cpus, use_gpu = worker_resources(config, workers, cpus_per_worker, gpu, ray.cluster_resources())
    request = run_request(config, workers, cpus, use_gpu, driver_cpus=driver_cpus, custom=custom)
    require_shared(storage, autoscaling=autoscaling_limit() is not None)
    require_resources(request, what, timeout)
    return request
