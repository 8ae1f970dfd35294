"""pipeline.train: the local loop and Ray Train on the shared local Ray instance, with a real MLflow store."""
from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from lsr1.checkpoint import load_checkpoint
from pipeline.evaluate import main as evaluate_main
from pipeline.train import main


def _run(client: MlflowClient, experiment: str, name: str):
    (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id], f"tags.`lsr1.run_name` = '{name}'")
    return run


def test_local_run_logs_params_metrics_artifacts_and_model(mlflow_store, tmp_path):
    assert main(["--config", "configs/smoke.yaml", "--smoke-test", "--local", "--name", "local", "--runs-dir", str(tmp_path / "runs")]) == 0
    client = MlflowClient(mlflow_store)
    run = _run(client, "smoke", "local")
    assert run.info.status == "FINISHED" and run.data.params["lsr1.hidden_dim"] == "32"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2, 3, 4, 5, 6]
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


def test_same_name_resumes_and_continues(mlflow_store, tmp_path):
    args = ["--config", "configs/smoke.yaml", "--local", "--name", "again", "--runs-dir", str(tmp_path / "runs"), "--set", "meta.val_every=3"]
    assert main(args + ["--set", "meta.iterations=3"]) == 0
    assert main(args + ["--set", "meta.iterations=6"]) == 0
    assert load_checkpoint(tmp_path / "runs" / "again" / "last.pt")["iteration"] == 6
    client = MlflowClient(mlflow_store)
    steps = [m.step for m in client.get_metric_history(_run(client, "smoke", "again").info.run_id, "loss")]
    assert sorted(steps) == [1, 2, 3, 4, 5, 6]


def test_bad_config_is_a_clear_error(mlflow_store, capsys):
    assert main(["--config", "configs/smoke.yaml", "--set", "meta.iterations=zero", "--local"]) == 2
    assert "meta.iterations" in capsys.readouterr().err


def test_two_workers_survive_a_killed_worker_without_losing_or_repeating_iterations(ray_local, mlflow_store, tmp_path):
    args = ["--config", "configs/smoke.yaml", "--name", "fault", "--workers", "2", "--runs-dir", str(tmp_path / "runs"),
            "--set", "meta.iterations=12", "--set", "meta.val_every=4", "--fail-once-at", "6"]
    assert main(args) == 0
    assert (tmp_path / "runs" / "ray" / "fault" / ".fault-injected").exists()  # the fault did happen
    assert load_checkpoint(tmp_path / "runs" / "fault" / "last.pt")["iteration"] == 12
    client = MlflowClient(mlflow_store)
    steps = [m.step for m in client.get_metric_history(_run(client, "smoke", "fault").info.run_id, "loss")]
    assert sorted(steps) == list(range(1, 13))
