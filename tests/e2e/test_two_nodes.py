"""Two Ray nodes on this machine, the second blind to the first one's local files, with S3 storage: what a real
cluster does to checkpoints, resume and sweeps.

Started here and stopped here (process groups): an S3 server (moto's standalone server) on 127.0.0.1, an MLflow
tracking server whose artifacts go to the same bucket (as on cluster.yaml's head), a `ray start --head` node and a
second node (`ray start --address`) inside its own mount namespace (`unshare -m`) with a private tmpfs over the
runs, local-storage and Ray session folders, so that like a worker node of a real cluster it cannot see what the
head writes there. Each node offers one `lsr1_node` resource and each Ray Train worker asks for one: one worker per node.
Every run is `ray job submit` as README.md gives it, with --storage s3://.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs
import pytest
from mlflow.tracking import MlflowClient

from pipeline.cluster import free_ports
from pipeline.train import TEST_FAULT_VARIABLE
from tests.e2e.servers import (
    BIN,
    alive_nodes,
    healthy,
    node_ports,
    private_ray_tmpdir,
    ray,
    start_group,
    start_head,
    stop_groups,
    submit,
    wait_until,
)
from tests.helpers import BUCKET, logged_steps

STORAGE = f"s3://{BUCKET}/lsr1"
PIN = ["--worker-resource", "lsr1_node=1"]  # one Ray Train worker per node
HMR = [
    "pipeline.train",
    "--config",
    "configs/hmr_smoke.yaml",
    "--name",
    "two",
    "--workers",
    "2",
    "--cpus-per-worker",
    "0.25",
    "--storage",
    STORAGE,
    "--test-steps",
    "2",
    "--set",
    "meta.val_every=3",
    *PIN,
]
SWEEP = [
    "pipeline.sweep",
    "--space",
    "tune_spaces/smoke.yaml",
    "--config",
    "configs/smoke.yaml",
    "--smoke-test",
    "--name",
    "sw2",
    "--num-samples",
    "2",
    "--top-k",
    "2",
    "--cpus-per-worker",
    "0.5",
    "--storage",
    STORAGE,
    *PIN,
]


def _files(aws: dict[str, str], prefix: str) -> dict[str, int]:
    """Path -> size of every file under BUCKET/prefix."""
    bucket = pyarrow.fs.S3FileSystem(
        access_key=aws["AWS_ACCESS_KEY_ID"],
        secret_key=aws["AWS_SECRET_ACCESS_KEY"],
        region="us-east-1",
        endpoint_override=aws["AWS_ENDPOINT_URL"],
    )
    infos = bucket.get_file_info(pyarrow.fs.FileSelector(f"{BUCKET}/{prefix}", recursive=True, allow_not_found=True))
    return {i.path.removeprefix(f"{BUCKET}/"): i.size for i in infos if i.type == pyarrow.fs.FileType.File}


@dataclass
class Cluster:
    address: str  # the dashboard, for `ray job submit`
    env: dict[str, str]  # of the `ray` client
    job_env: dict[str, str]  # the job's env_vars: MLflow server, AWS variables, data root, runs folder on the head
    root: Path  # runs/ and local-storage/ under it are the head's own

    @property
    def mlflow(self) -> str:
        return self.job_env["MLFLOW_TRACKING_URI"]


def _mount_namespaces(probe: Path) -> str | None:
    """None if this process may mount a tmpfs in a mount namespace of its own, else why not."""
    if shutil.which("unshare") is None:
        return "the unshare command (util-linux) is not installed"
    done = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "mount", "-t", "tmpfs", "tmpfs", str(probe)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return None if done.returncode == 0 else f"`unshare -m` + `mount -t tmpfs` is not permitted here: {done.stderr.strip()}"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, s3, data_dir):
    """The two nodes and the MLflow server (see the module's docstring); skipped where mount namespaces are not
    permitted."""
    import ray as ray_module

    assert not ray_module.is_initialized(), "the e2e tests must run before any in-process Ray instance"
    root = tmp_path_factory.mktemp("two-nodes")
    hidden = [root / "runs", root / "local-storage"]
    for folder in hidden:
        folder.mkdir()
    why = _mount_namespaces(hidden[0])
    if why is not None:
        pytest.skip(f"the two-node test needs a second Ray node that cannot see the head's files: {why}")
    logs = tmp_path_factory.mktemp("logs")
    with contextlib.ExitStack() as stack:
        ray_tmp = stack.enter_context(private_ray_tmpdir("r2n"))
        # the second node's Ray session folder (logs, sockets, the jobs' unpacked working folders) is its own too:
        # a shared one would let its runtime-env agent delete a job's folder while the head still runs in it
        hidden.append(Path(ray_tmp))
        env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_TMPDIR": ray_tmp, **s3}
        processes = []
        stack.callback(lambda: stop_groups(*reversed(processes)))
        (port,) = free_ports(1)
        mlflow = start_group(
            [
                str(BIN / "mlflow"),
                "server",
                "--backend-store-uri",
                f"sqlite:///{root / 'mlflow.db'}",
                "--artifacts-destination",
                f"s3://{BUCKET}/mlflow",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
            ],
            env,
            logs / "mlflow.log",
        )
        processes.append(mlflow)
        node = ["--resources", json.dumps({"lsr1_node": 1}), "--object-store-memory", str(150 * 1024**2)]
        head, address, gcs_port = start_head(env, logs / "head.log", "--num-cpus=2", *node)
        processes.append(head)
        head_ip = alive_nodes(address, env)[0]["node_ip"]
        second = [str(BIN / "ray"), "start", f"--address={head_ip}:{gcs_port}", "--block", "--num-cpus=1", *node, *node_ports()]
        mounts = " && ".join(f"mount -t tmpfs tmpfs {folder}" for folder in hidden)
        worker = start_group(
            ["unshare", "-m", "--propagation", "private", "sh", "-c", f"{mounts} && exec {shlex.join(second)}"],
            {**env, "RAY_AUTH_MODE": "token"},
            logs / "node2.log",
        )  # it joins with the head's token
        processes.append(worker)

        wait_until(lambda: len(alive_nodes(address, env)) == 2, worker, "the second Ray node", logs / "node2.log")
        wait_until(lambda: healthy(f"http://127.0.0.1:{port}/health"), mlflow, "the MLflow server", logs / "mlflow.log")
        job_env = {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}", "LSR1_DATA_DIR": str(data_dir), "LSR1_RUNS_DIR": str(hidden[0]), **s3}
        yield Cluster(address, env, job_env, root)


def _job(cluster: Cluster, *command: str) -> str:
    tic = time.monotonic()
    done = submit(cluster.address, cluster.env, cluster.job_env, *command)
    out = done.stdout + done.stderr
    print(f"{' '.join(command[:3])}: exit {done.returncode} after {time.monotonic() - tic:.0f} s\n{out[-4000:]}")
    assert done.returncode == 0, out[-4000:]
    return out


def _history(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def _run(client: MlflowClient, experiment: str, name: str):
    (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id], f"tags.`lsr1.run_name` = '{name}'")
    return run


def test_a_local_storage_folder_on_two_nodes_stops_at_once_saying_what_to_pass(cluster):
    tic = time.monotonic()
    done = submit(
        cluster.address,
        cluster.env,
        cluster.job_env,
        "pipeline.train",
        "--config",
        "configs/smoke.yaml",
        "--workers",
        "2",
        "--storage",
        str(cluster.root / "local-storage"),
        *PIN,
    )
    out = done.stdout + done.stderr
    assert done.returncode != 0
    assert "is a local folder that 1 of the Ray cluster's 2 nodes cannot see" in out, out[-3000:]
    assert "pass --storage s3://<bucket>/<prefix>" in out and "Traceback" not in out
    assert time.monotonic() - tic < 120


def test_an_hmr_run_on_two_nodes_resumes_a_killed_worker_from_the_bucket(cluster, s3):
    faulty = dataclasses.replace(cluster, job_env={**cluster.job_env, TEST_FAULT_VARIABLE: "4"})  # rank 0 kills itself at 4
    out = _job(faulty, *HMR, "--set", "meta.iterations=6")
    client = MlflowClient(cluster.mlflow)
    run = _run(client, "hmr_smoke", "two")
    assert run.info.status == "FINISHED" and "test_pa_mpjpe" in run.data.metrics
    # rank 0 was killed at iteration 4, after the checkpoint of iteration 3: the new worker group read that one
    # from the bucket (the second node sees nothing else), and MLflow has every iteration once
    assert logged_steps(client, run.info.run_id) == [1, 2, 3, 4, 5, 6]
    assert _history(client, run.info.run_id, "resumed_from") == [3]
    assert "resumes from the checkpoint of iteration 3" in out
    stored = _files(s3, "lsr1/ray/two")
    assert "lsr1/ray/two/.fault-injected" in stored
    checkpoints = sorted({path.split("/")[3] for path in stored if path.count("/") > 3 and path.split("/")[3].startswith("checkpoint_")})
    assert checkpoints and all(f"lsr1/ray/two/{c}/last.pt" in stored for c in checkpoints)
    workers = json.loads(
        ray(
            "list",
            "actors",
            "--address",
            cluster.address,
            "--format",
            "json",
            "--detail",
            "--filter",
            "class_name=RayTrainWorker",
            "--limit",
            "1000",
            env=cluster.env,
        ).stdout
    )
    assert len({w["node_id"] for w in workers}) == 2  # one worker per node
    assert (cluster.root / "runs" / "two" / "best.pt").is_file()  # the driver's copy, on the head
    # the model's artifacts went through the MLflow server into the bucket
    assert any(path.startswith("mlflow/") and path.endswith("best.pt") for path in _files(s3, "mlflow"))
    # what a checkpoint costs: its size, and rank 0's report (the upload from its node to the S3 server)
    seconds = [m.value for m in client.get_metric_history(run.info.run_id, "checkpoint_s")]
    size = max(m.value for m in client.get_metric_history(run.info.run_id, "checkpoint_mb"))  # metrics.jsonl grows
    assert seconds and size > 1
    print(f"checkpoints: {size:.2f} MB, uploaded in {min(seconds):.2f}-{max(seconds):.2f} s ({len(seconds)} of them)")


def test_the_same_name_resumes_from_the_bucket(cluster):
    shutil.rmtree(cluster.root / "runs" / "two")  # nothing of the first run is left on the head's disk
    out = _job(cluster, *HMR, "--set", "meta.iterations=9")
    assert "resumes from the checkpoint of iteration 6" in out
    client = MlflowClient(cluster.mlflow)
    run = _run(client, "hmr_smoke", "two")
    assert logged_steps(client, run.info.run_id) == list(range(1, 10))
    # from 6, the first run's last checkpoint; once more from 6 if the worker group restarts before the checkpoint
    # of 9 (CI on 2 cores saw it once), which the loss history above shows lost and repeated nothing
    assert set(_history(client, run.info.run_id, "resumed_from")) == {3, 6}
    assert (cluster.root / "runs" / "two" / "best.pt").is_file()


def test_a_sweep_on_two_nodes_finishes_and_resumes_without_rerunning_a_trial(cluster, s3):
    out = _job(cluster, *SWEEP)
    assert "sweep sw2: 2 trials" in out
    client = MlflowClient(cluster.mlflow)
    parent = _run(client, "smoke", "sw2")
    children = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(children) == 2 and all(c.info.status == "FINISHED" for c in children)
    assert all(c.data.tags["lsr1.train_run"].startswith(STORAGE) for c in children)
    before = {c.info.run_id: c.info.end_time for c in children}
    stored = _files(s3, "lsr1/ray")
    shutil.rmtree(cluster.root / "runs" / "sw2")  # the comparison must come from the bucket again
    out = _job(cluster, *SWEEP, "--resume")
    assert "sweep sw2: 2 trials" in out
    children = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert {c.info.run_id: c.info.end_time for c in children} == before  # no trial ran again
    assert _files(s3, "lsr1/ray") == stored  # and none wrote a checkpoint
    assert (cluster.root / "runs" / "sw2" / "comparison" / "comparison.md").is_file()
