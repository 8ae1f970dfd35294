"""End to end: a real Ray head (`ray start --head`), `ray job submit -- python -m pipeline.train` as README.md
gives it (an HMR run whose data is in LSR1_DATA_DIR, outside the uploaded copy), and the run read back from
the MLflow store the job wrote to. Runs first (tests/e2e sorts before tests/test_*): the in-process Ray
instance of the other tests must not exist yet. On two nodes: test_two_nodes.py."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.e2e.servers import private_ray_tmpdir, start_head, stop_groups, submit
from tests.helpers import assert_readable_console, logged_steps

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A `ray start --head` of 2 CPUs, stopped by its process group (tests/e2e/conftest.py)."""
    import ray

    assert not ray.is_initialized(), "the e2e test must run before any in-process Ray instance"
    with private_ray_tmpdir("r1n") as ray_tmp:
        env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_TMPDIR": ray_tmp}  # jobs run `python` from the head's PATH
        head, address, _ = start_head(env, tmp_path_factory.mktemp("head") / "ray-start.log", "--num-cpus=2")
        try:
            yield address, env
        finally:
            stop_groups(head)


def _submit(address: str, env: dict, tmp: Path, *train_args: str, data_dir: Path | None = None):
    """pipeline.train as a job, with the MLflow store, the runs and (given data_dir) the data root outside the
    uploaded copy."""
    env_vars = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}", "LSR1_RUNS_DIR": str(tmp / "runs")}
    if data_dir is not None:
        env_vars["LSR1_DATA_DIR"] = str(data_dir)
    return submit(address, env, env_vars, "pipeline.train", *train_args)


def test_an_hmr_job_reads_the_data_root_and_logs_to_mlflow(ray_head, data_dir, tmp_path):
    address, env = ray_head
    done = _submit(
        address,
        env,
        tmp_path,
        "--config",
        "configs/hmr_smoke.yaml",
        "--smoke-test",
        "--name",
        "e2e",
        "--workers",
        "2",
        "--test-steps",
        "2",
        data_dir=data_dir,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    print(done.stdout + done.stderr)
    # the job's log as `ray job submit` shows it: the phases, the bar, the table; Ray's chatter in the log files
    lines = assert_readable_console(done.stdout + done.stderr)
    assert any(line.startswith("e2e: 6/6 iterations, loss") for line in lines)
    assert any(line.startswith("test_pa_mpjpe ") for line in lines) and any("mlflow ui --backend-store-uri" in line for line in lines)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("hmr_smoke").experiment_id], "tags.`lsr1.run_name` = 'e2e'")
    assert run.info.status == "FINISHED" and run.data.params["meta.iterations"] == "6"
    assert run.data.params["hmr.prepared_dir"] == str(data_dir / "datasets" / "synthetic" / "prepared")
    assert logged_steps(client, run.info.run_id) == [1, 2, 3, 4, 5, 6]
    assert "val_pa_mpjpe" in run.data.metrics and "test_pa_mpjpe" in run.data.metrics
    (version,) = client.search_model_versions("name = 'hmr_smoke'")
    assert version.run_id == run.info.run_id
    assert (tmp_path / "runs" / "e2e" / "best.pt").is_file()


def test_a_job_without_its_data_says_to_set_lsr1_data_dir(ray_head, tmp_path):
    address, env = ray_head
    done = _submit(address, env, tmp_path, "--config", "configs/hmr_smoke.yaml", "--smoke-test")
    assert done.returncode != 0
    out = done.stdout + done.stderr
    assert "uploaded copy of the working directory" in out and "set LSR1_DATA_DIR" in out
    assert "Traceback" not in out


def test_a_failing_job_exits_non_zero(ray_head, tmp_path):
    address, env = ray_head
    done = _submit(address, env, tmp_path, "--config", "configs/smoke.yaml", "--set", "lsr1.bufer_size=3")
    assert done.returncode != 0
    assert "bufer_size" in done.stdout + done.stderr
