"""End to end: a real Ray head (`ray start --head`), `ray job submit -- python -m pipeline.train` as README.md
gives it (an HMR run whose data is in LSR1_DATA_DIR, outside the uploaded copy), and the run read back from
the MLflow store the job wrote to. Runs first (tests/e2e sorts before tests/test_*),
so `ray stop` at the end cannot take down the shared local Ray instance of the other tests."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline.train import free_ports
from tests.helpers import assert_readable_console

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent



@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """`ray start --head --block` in a process group of its own, stopped by signalling that group: `ray stop`
    would stop every Ray instance on the machine, another test run's too."""
    import ray

    assert not ray.is_initialized(), "the e2e test must run before any in-process Ray instance"
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}  # jobs run `python` from the head's PATH
    gcs, dashboard = free_ports(2)
    start = [str(BIN / "ray"), "start", "--head", "--block", f"--port={gcs}", f"--dashboard-port={dashboard}",
             "--num-cpus=2", "--disable-usage-stats", "--include-dashboard=true"]
    log = (tmp_path_factory.mktemp("head") / "ray-start.log").open("w")
    head = subprocess.Popen(start, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.monotonic() + 180
        while subprocess.run([str(BIN / "ray"), "job", "list", "--address", address], env={**env, "RAY_AUTH_MODE": "token"},
                             capture_output=True, timeout=60).returncode != 0:  # fmt: skip
            assert head.poll() is None and time.monotonic() < deadline, f"the Ray head did not come up; see {log.name}"
            time.sleep(2)
        yield address, env
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        log.close()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """A data root outside the repository: `LSR1_DATA_DIR=<it> python -m pipeline.prepare --synthetic`."""
    root = tmp_path_factory.mktemp("data")
    done = subprocess.run([sys.executable, "-m", "pipeline.prepare", "--synthetic"], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "LSR1_DATA_DIR": str(root)}, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert (root / "datasets" / "synthetic" / "prepared" / "manifest.json").is_file()
    return root


def _submit(address: str, env: dict, tmp: Path, *train_args: str, data_dir: Path | None = None) -> subprocess.CompletedProcess:
    """README's line: `ray job submit --working-dir . --runtime-env-json '{"env_vars": {...}}' -- python -m pipeline.train ...`
    with the MLflow store, the runs and (given data_dir) the data root outside the uploaded copy."""
    env_vars = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}", "LSR1_RUNS_DIR": str(tmp / "runs")}
    if data_dir is not None:
        env_vars["LSR1_DATA_DIR"] = str(data_dir)
    command = [str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", ".",
               "--runtime-env-json", json.dumps({"env_vars": env_vars}), "--", "python", "-m", "pipeline.train", *train_args]
    return subprocess.run(command, cwd=REPO, env={**env, "RAY_AUTH_MODE": "token"}, capture_output=True, text=True, timeout=600)


def test_an_hmr_job_reads_the_data_root_and_logs_to_mlflow(ray_head, data_dir, tmp_path):
    address, env = ray_head
    done = _submit(address, env, tmp_path, "--config", "configs/hmr_smoke.yaml", "--smoke-test", "--name", "e2e", "--workers", "2",
                   "--test-steps", "2", data_dir=data_dir)  # fmt: skip
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
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "loss")]
    assert sorted(steps) == [1, 2, 3, 4, 5, 6]
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
