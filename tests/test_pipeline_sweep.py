"""pipeline.sweep end to end on the shared local Ray instance with a real MLflow store: ASHA, parent and
child runs, the comparison artifacts, the champion alias; and an interrupted sweep resumed."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline.cluster import free_ports
from pipeline.sweep import main
from tests.helpers import logged_steps

REPO = Path(__file__).resolve().parents[1]
SWEEP = ["--space", "tune_spaces/smoke.yaml", "--config", "configs/smoke.yaml", "--smoke-test", "--cpus-per-worker", "0.5"]


def _children(client: MlflowClient, experiment: str, parent_id: str):
    exp = client.get_experiment_by_name(experiment).experiment_id
    return client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parent_id}'")


def _parent(client: MlflowClient, experiment: str, name: str):
    exp = client.get_experiment_by_name(experiment).experiment_id
    (run,) = client.search_runs([exp], f"tags.`lsr1.run_name` = '{name}'")
    return run


def test_a_sweep_whose_trial_cannot_fit_the_cluster_stops_at_once(ray_local, mlflow_store, capsys):
    # the README's HMR sweep line without its --workers 1 --cpus-per-worker 0.25: a trial would need 2.51 of 2 CPUs
    tic = time.monotonic()
    assert main(["--space", "tune_spaces/smoke.yaml", "--config", "configs/hmr_smoke.yaml", "--num-samples", "4"]) == 2
    assert time.monotonic() - tic < 10
    err = capsys.readouterr().err
    assert (
        "a trial asks for 2.51 CPUs (1 worker x 1 CPU + 1.5 CPU for Ray Data + 0.01 CPU for the trial driver), "
        "but the Ray cluster has 2 CPUs"
    ) in err
    assert "Lower it: --workers 1 --cpus-per-worker 0.25" in err
    assert MlflowClient(mlflow_store).get_experiment_by_name("hmr_smoke") is None  # no parent run left behind


@pytest.fixture(scope="module")
def smoke_sweep(ray_local, tmp_path_factory):
    """One smoke sweep (4 trials, 2 at a time, ASHA) into a fresh MLflow store, shared by the checks below."""
    root = tmp_path_factory.mktemp("sweep")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        tic = time.time()
        code = main([*SWEEP, "--name", "sw", "--num-samples", "4", "--max-concurrent", "2", "--top-k", "2", "--runs-dir", str(root)])
        print(f"smoke sweep wall time {time.time() - tic:.0f} s")
    assert code == 0
    return uri


def test_smoke_sweep_logs_parent_children_comparison_and_champion(smoke_sweep):
    client = MlflowClient(smoke_sweep)
    parent = _parent(client, "smoke", "sw")
    assert parent.info.status == "FINISHED"
    children = _children(client, "smoke", parent.info.run_id)
    assert len(children) == 4 and all(c.data.params["lsr1.lambda_sec"] for c in children)
    assert all(c.info.status == "FINISHED" and "val_loss" in c.data.metrics for c in children)
    assert all(client.list_artifacts(c.info.run_id, "checkpoints") for c in children)
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "comparison")}
    assert artifacts == {"comparison/comparison.md", "comparison/comparison.csv", "comparison/comparison.png"}
    champion = client.get_model_version_by_alias("smoke", "champion")
    assert champion.run_id == parent.info.run_id
    assert parent.data.tags["lsr1.best_run_id"] in {c.info.run_id for c in children}


def test_mlflow_ui_compare_view_shows_the_sweeps_runs_and_metrics(smoke_sweep, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip(
            "no Chromium on this machine (`make test` installs Debian's chromium where apt-get can): "
            "the MLflow UI check needs a real browser"
        )
    client = MlflowClient(smoke_sweep)
    parent = _parent(client, "smoke", "sw")
    children = _children(client, "smoke", parent.info.run_id)
    (port,) = free_ports(1)
    ui = subprocess.Popen(
        ["make", "-s", "ui", f"UI_PORT={port}", f"TRACKING_URI={smoke_sweep}"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 180
        while True:
            try:
                if urllib.request.urlopen(f"{base}/health", timeout=5).status == 200:
                    break
            except OSError:
                if time.time() > deadline or ui.poll() is not None:
                    raise AssertionError("`make ui` did not serve the MLflow UI within 3 minutes") from None
                time.sleep(1)
        ids = ",".join(f'"{c.info.run_id}"' for c in children)
        url = f'{base}/#/compare-runs?runs=[{ids}]&experiments=["{parent.info.experiment_id}"]'
        dom = subprocess.run(
            [
                browser,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                f"--user-data-dir={tmp_path}",
                "--virtual-time-budget=30000",
                "--dump-dom",
                url,
            ],
            capture_output=True,
            text=True,
            timeout=300,
        ).stdout
    finally:
        os.killpg(ui.pid, signal.SIGTERM)
        ui.wait()
    for child in children:  # every trial is a column of the compare view, with its parameter and metrics
        assert child.info.run_name in dom
    assert "val_loss" in dom and "lsr1.lambda_sec" in dom


def test_an_interrupted_sweep_resumes_without_rerunning_finished_trials(mlflow_store, tmp_path):
    args = [
        sys.executable,
        "-m",
        "pipeline.sweep",
        *SWEEP,
        "--name",
        "cut",
        "--num-samples",
        "3",
        "--max-concurrent",
        "1",
        "--runs-dir",
        str(tmp_path),
        "--num-cpus",
        "2",
    ]
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_store}
    log_path = tmp_path / "driver.log"
    with log_path.open("w") as log:
        driver = subprocess.Popen(args, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    client = MlflowClient(mlflow_store)
    deadline = time.time() + 600
    try:
        while time.time() < deadline:  # wait until one trial has finished, then kill the driver
            exp = client.get_experiment_by_name("smoke")
            if exp and client.search_runs([exp.experiment_id], "attributes.status = 'FINISHED' and tags.`lsr1.sweep` = 'cut'"):
                break
            assert driver.poll() is None, "the sweep ended before it was interrupted:\n" + log_path.read_text()[-3000:]
            time.sleep(2)
        else:
            raise AssertionError("no trial finished within 10 minutes:\n" + log_path.read_text()[-3000:])
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    finished_before = {
        r.info.run_id: r.info.end_time
        for r in client.search_runs(
            [client.get_experiment_by_name("smoke").experiment_id], "attributes.status = 'FINISHED' and tags.`lsr1.sweep` = 'cut'"
        )
    }
    resumed = subprocess.run([*args, "--resume"], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    children = _children(client, "smoke", _parent(client, "smoke", "cut").info.run_id)
    assert len(children) == 3 and all(c.info.status == "FINISHED" for c in children)
    for run_id, end_time in finished_before.items():  # a finished trial is not opened again
        assert client.get_run(run_id).info.end_time == end_time
        assert logged_steps(client, run_id) == list(range(1, 7))
