"""pipeline.train: the local loop and Ray Train on the shared local Ray instance, with a real MLflow store."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

import lsr1.meta
from lsr1.checkpoint import load_checkpoint
from lsr1.meta import validate
from pipeline.cluster import Request
from pipeline.console import Console
from pipeline.evaluate import main as evaluate_main
from pipeline.train import TEST_FAULT_VARIABLE, main
from tests.helpers import assert_readable_console, logged_steps


def _run(client: MlflowClient, experiment: str, name: str):
    (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id], f"tags.`lsr1.run_name` = '{name}'")
    return run


def test_local_run_logs_params_metrics_artifacts_and_model(mlflow_store, tmp_path):
    assert main(["--config", "configs/smoke.yaml", "--smoke-test", "--local", "--name", "local", "--runs-dir", str(tmp_path / "runs")]) == 0
    client = MlflowClient(mlflow_store)
    run = _run(client, "smoke", "local")
    assert run.info.status == "FINISHED" and run.data.params["lsr1.hidden_dim"] == "32"
    assert logged_steps(client, run.info.run_id) == [1, 2, 3, 4, 5, 6]
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"config.yaml", "checkpoints", "metrics.jsonl", "test"}
    assert {a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")} == {"checkpoints/best.pt"}
    (version,) = client.search_model_versions("name = 'smoke'")  # mlflow.pytorch model, registered
    assert version.run_id == run.info.run_id and version.source.startswith("models:/")
    # pipeline.evaluate --run finds the run's checkpoint and logs its test curves back to the same run
    trained_gap = run.data.metrics["test_final_gap_lsr1"]
    assert evaluate_main(["--run", run.info.run_id, "--steps", "20", "--out", str(tmp_path / "eval")]) == 0
    history = client.get_metric_history(run.info.run_id, "test_final_gap_lsr1")
    assert len(history) == 2 and history[-1].value == pytest.approx(trained_gap)
    assert evaluate_main(["--run", "0" * 32, "--out", str(tmp_path / "eval2")]) == 2


def test_the_summary_counts_every_iteration_when_the_best_checkpoint_is_earlier(mlflow_store, tmp_path, capsys, monkeypatch):
    # The validation losses are given, so the best checkpoint is iteration 3 of 6 by construction. (A run made to
    # blow up after its first validation, at a high lr, does not do it: where and how a divergence happens is
    # decided by float rounding, which differs between CPUs and between the C kernels and torch's operators.)
    scores = iter([-1.0, 1.0])

    def scripted(learner, problems, steps):
        return {**validate(learner, problems, steps), "val_loss": next(scores)}

    monkeypatch.setattr(lsr1.meta, "validate", scripted)
    args = ["--config", "configs/smoke.yaml", "--smoke-test", "--local", "--name", "late", "--runs-dir", str(tmp_path / "runs")]
    assert main(args) == 0
    client = MlflowClient(mlflow_store)
    metrics = _run(client, "smoke", "late").data.metrics
    assert metrics["best_iteration"] == 3 and metrics["iterations"] == 6
    assert [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("iterations ")] == [["iterations", "6"]]


def test_same_name_resumes_and_continues(mlflow_store, tmp_path):
    args = [
        "--config",
        "configs/smoke.yaml",
        "--local",
        "--name",
        "again",
        "--runs-dir",
        str(tmp_path / "runs"),
        "--set",
        "meta.val_every=3",
    ]
    assert main(args + ["--set", "meta.iterations=3"]) == 0
    assert main(args + ["--set", "meta.iterations=6"]) == 0
    assert load_checkpoint(tmp_path / "runs" / "again" / "last.pt")["iteration"] == 6
    client = MlflowClient(mlflow_store)
    assert logged_steps(client, _run(client, "smoke", "again").info.run_id) == [1, 2, 3, 4, 5, 6]


def test_bad_config_is_a_clear_error(mlflow_store, capsys):
    assert main(["--config", "configs/smoke.yaml", "--set", "meta.iterations=zero", "--local"]) == 2
    assert "meta.iterations" in capsys.readouterr().err


def test_two_workers_survive_a_killed_worker_without_losing_or_repeating_iterations(ray_local, mlflow_store, tmp_path, monkeypatch):
    args = [
        "--config",
        "configs/smoke.yaml",
        "--name",
        "fault",
        "--workers",
        "2",
        # half a CPU each: a placement group that an earlier test's run leaves behind until Ray frees it (half a
        # CPU, seen once in CI) must not starve this one of its two workers on the 2-CPU instance
        "--cpus-per-worker",
        "0.5",
        "--runs-dir",
        str(tmp_path / "runs"),
        "--set",
        "meta.iterations=12",
        "--set",
        "meta.val_every=4",
    ]
    monkeypatch.setenv(TEST_FAULT_VARIABLE, "6")  # the tests' own hook: rank 0 kills itself at iteration 6
    assert main(args) == 0
    assert (tmp_path / "runs" / "ray" / "fault" / ".fault-injected").exists()  # the fault did happen
    assert load_checkpoint(tmp_path / "runs" / "fault" / "last.pt")["iteration"] == 12
    client = MlflowClient(mlflow_store)
    assert logged_steps(client, _run(client, "smoke", "fault").info.run_id) == list(range(1, 13))


@pytest.mark.parametrize(
    "request_, advice",
    [
        (Request(1, 1.0, data_cpus=1.5, driver_cpus=0.01), "--workers 1 --cpus-per-worker 0.25"),  # the HMR sweep trial
        (Request(3, 1.0), "--workers 3 --cpus-per-worker 0.5"),
        (Request(4, 0.25, data_cpus=1.5), "--workers 2 --cpus-per-worker 0.25"),
        (Request(1, 0.25, data_cpus=2.0), "nothing: Ray Data alone needs 2 CPUs"),
        (Request(2, 1.0, gpus_per_worker=1.0), "--workers 1 (one GPU each) or --no-gpu"),
    ],
)
def test_a_request_that_does_not_fit_says_what_to_lower(request_, advice):
    two_cpus = {"CPU": 2.0, "GPU": 1.0}
    assert request_.shortfall(two_cpus, two_cpus) is not None
    assert request_.lower(two_cpus).startswith(advice)
    assert Request(2, 0.25, data_cpus=1.5).shortfall(two_cpus, two_cpus) is None  # exactly full fits


def test_a_run_larger_than_the_cluster_stops_at_once_naming_what_to_lower(ray_local, mlflow_store, tmp_path, capsys):
    args = ["--config", "configs/smoke.yaml", "--workers", "3", "--cpus-per-worker", "1", "--runs-dir", str(tmp_path)]
    tic = time.monotonic()
    assert main(args) == 2
    assert time.monotonic() - tic < 10
    err = capsys.readouterr().err
    assert "training run smoke asks for 3 CPUs (3 workers x 1 CPU), but the Ray cluster has 2 CPUs" in err
    assert "Lower it: --workers 3 --cpus-per-worker 0.5" in err
    assert MlflowClient(mlflow_store).get_experiment_by_name("smoke") is None  # stopped before MLflow and Ray Train
    tic = time.monotonic()  # --resource-timeout: waits for the cluster to grow, then gives up
    assert main([*args, "--resource-timeout", "2"]) == 2
    assert 2 <= time.monotonic() - tic < 12 and "(waited 2 s)" in capsys.readouterr().err


def test_the_console_shows_phases_one_bar_and_the_results(mlflow_store, tmp_path, capfd):
    args = ["--config", "configs/smoke.yaml", "--local", "--name", "shown", "--runs-dir", str(tmp_path), "--set", "meta.iterations=40"]
    assert main(args) == 0
    out = capfd.readouterr()
    lines = assert_readable_console(out.out + out.err, max_lines=30)
    assert lines[0].endswith("training run shown: configs/smoke.yaml, lsr1 on quadratic, 40 meta-iterations")
    assert any(line.startswith("shown: 40/40 iterations, loss") for line in lines)  # the bar's last state
    assert any(line.startswith("test_final_gap_lsr1") for line in lines) and lines[-1].startswith("mlflow ui --backend-store-uri")
    log = (tmp_path / "shown" / "console.log").read_text()  # what the console leaves out is in the log it names
    assert "INFO" in log and "Successfully registered model 'smoke'" in log and str(tmp_path / "shown" / "console.log") in out.out


def test_without_a_terminal_a_bar_prints_a_line_every_few_seconds_at_most(tmp_path):
    stream = (tmp_path / "out.txt").open("w")
    console = Console(stream)
    for iteration in range(1, 501):
        console.bar("run", iteration, 500, {"loss": 1.0 / iteration})
    console.close_bar("run", "done")
    stream.close()
    lines = (tmp_path / "out.txt").read_text().splitlines()
    assert lines == ["run: 1/500 iterations, loss 1, 0 s", "run: 500/500 iterations, loss 0.002, 0 s (done)"]


def test_evaluation_labels_name_the_checkpoint_where_two_models_would_read_the_same():
    import dataclasses
    from pathlib import Path

    from lsr1.config import ExperimentConfig
    from lsr1.experiments.evaluate import _labels, _tag

    ours = ExperimentConfig(name="quadratic")  # the dataclass defaults are the project's formulation
    mix = dataclasses.replace(ours, name="mix")
    without = dataclasses.replace(ours, name="quadratic_noproj", lsr1=dataclasses.replace(ours.lsr1, lambda_sec=0.0))
    configs = [ours, without, mix]
    assert _labels(configs[:2], [c.name for c in configs[:2]]) == ["L-SR1", "L-SR1 w/o projection"]
    assert _labels(configs, [c.name for c in configs]) == ["L-SR1 (quadratic)", "L-SR1 w/o projection", "L-SR1 (mix)"]
    # two shipped models of one preset (mix, mix_lbfgs) by their names; two runs by their folders
    paths = [Path("lsr1/weights/mix.pt"), Path("lsr1/weights/mix_lbfgs.pt"), Path("runs/demo-lsr1/best.pt")]
    assert _labels([mix, mix, mix], [_tag(p) for p in paths]) == ["L-SR1 (mix)", "L-SR1 (mix_lbfgs)", "L-SR1 (demo-lsr1)"]


def test_runs_started_together_on_a_new_store_all_open(tmp_path):
    """Parallel runs (or a sweep's trials) on a fresh SQLite store: each creates the schema and the
    experiment on first use, and without the store lock all but one can fail on the others' half-made
    tables. Four processes open their runs at the same instant; all must succeed."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    start = time.time() + 8  # after every interpreter has imported mlflow
    script = (
        "import sys, time\n"
        "from lsr1.config import load_config\n"
        "from pipeline.tracking import Run\n"
        "time.sleep(max(0.0, float(sys.argv[1]) - time.time()))\n"
        "Run.open(sys.argv[2], 'together', sys.argv[3], load_config('configs/smoke.yaml'))\n"
    )
    processes = [
        subprocess.Popen([sys.executable, "-c", script, str(start), uri, f"run{i}"], stderr=subprocess.PIPE, text=True) for i in range(4)
    ]
    errors = [p.communicate(timeout=120)[1] for p in processes]
    assert [p.returncode for p in processes] == [0] * 4, "\n".join(errors)
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("together").experiment_id])
    assert sorted(r.data.tags["lsr1.run_name"] for r in runs) == ["run0", "run1", "run2", "run3"]
