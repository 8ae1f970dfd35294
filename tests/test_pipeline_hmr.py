"""HMR through the product's commands: the Ray Data feed, 2-worker Ray Train meta-training, 3DPW evaluation."""

from __future__ import annotations

import dataclasses
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from mlflow.tracking import MlflowClient

import pipeline.data
from lsr1.config import ExperimentConfig
from lsr1.experiments.analysis import step_curves
from lsr1.hmr.formats import in_fraction
from lsr1.meta import train
from lsr1.tasks import problem_set
from lsr1.tasks.hmr import HMRProblem, load_joint_model
from lsr1.tasks.prepare import prepare, prepared_files
from pipeline.data import absolute_paths, passes_per_epoch, training_dataset
from pipeline.evaluate import main as evaluate_main
from pipeline.sweep import compare
from pipeline.train import main as train_main
from tests.helpers import assert_readable_console, logged_steps
from tests.hmr_data import hmr_config, hmr_data  # noqa: F401


@pytest.fixture(scope="module")
def prepared(hmr_data, tmp_path_factory) -> ExperimentConfig:  # noqa: F811
    """configs/hmr_smoke.yaml on the session's synthetic data, prepared into a folder of this module."""
    config = hmr_config(hmr_data, f"hmr.prepared_dir={tmp_path_factory.mktemp('prepared')}", "hmr.init_hidden_dim=32")
    prepare(config.hmr, per_shard=3, progress=False)
    return absolute_paths(config)


def _overrides(config: ExperimentConfig) -> list[str]:
    keys = ("body_dir", "amass_dir", "pw3d_dir", "cache_dir", "prepared_dir", "init_hidden_dim")
    return [arg for key in keys for arg in ("--set", f"hmr.{key}={getattr(config.hmr, key)}")]


def test_feed_turns_frames_into_keypoint_problems_and_keeps_the_data_fraction(ray_local, prepared):
    shards, _ = prepared_files(prepared.hmr.prepared_dir, verify=True)
    batch = training_dataset(prepared, shards).take_batch(16)
    problem = HMRProblem.from_arrays(batch, load_joint_model(prepared.hmr), prepared.hmr)
    assert problem.batch_size == 16 and problem.keypoints.shape == (16, 18, 2) and problem.finite()
    assert float(problem.value(problem.target).abs().max()) < 1e-4  # ground truth fits its own keypoints

    half = dataclasses.replace(prepared, hmr=dataclasses.replace(prepared.hmr, data_fraction=0.5))
    table = pq.read_table([str(s) for s in shards], columns=["source", "frame"])
    kept = in_fraction(table.column("source").to_numpy(zero_copy_only=False), table.column("frame").to_numpy(), 0.5)
    assert 0 < kept.sum() < len(kept)
    passes = passes_per_epoch(shards, half.task.batch_size, 0.5)  # a small data set is read several times an epoch
    assert passes > 1 and training_dataset(half, shards).count() == kept.sum() * passes


def test_feed_deals_the_same_batches_to_each_worker_on_every_run_and_reshuffles_each_epoch(ray_local, prepared, monkeypatch):
    shards, _ = prepared_files(prepared.hmr.prepared_dir, verify=True)
    monkeypatch.setattr(pipeline.data, "MIN_EPOCH_BATCHES", 1)  # an epoch is one pass over the frames

    def epochs(count: int) -> list[list[np.ndarray]]:  # per epoch, what each of 2 workers reads, in order
        splits = training_dataset(prepared, shards).streaming_split(2, equal=True)

        def read(split) -> list[np.ndarray]:
            return [np.concatenate([b["keypoints"] for b in split.iter_batches(batch_size=8, batch_format="numpy")]) for _ in range(count)]

        with ThreadPoolExecutor(2) as pool:  # the splits are read side by side, as the workers read them
            per_worker = list(pool.map(read, splits))
        return [[worker[epoch] for worker in per_worker] for epoch in range(count)]

    first, again = epochs(2), epochs(2)
    for epoch, other_epoch in zip(first, again):
        for worker, other in zip(epoch, other_epoch):
            np.testing.assert_array_equal(worker, other)  # the same run twice: the same keypoints, in the same order
    assert not np.array_equal(first[0][0], first[1][0])  # the next epoch is shuffled anew


def test_two_workers_meta_train_on_ray_data_and_log_3dpw_results(ray_local, prepared, hmr_data, mlflow_store, tmp_path, capfd):  # noqa: F811
    args = [
        "--config",
        "configs/hmr_smoke.yaml",
        "--name",
        "hmr2",
        "--workers",
        "2",
        "--runs-dir",
        str(tmp_path / "runs"),
        "--set",
        "meta.iterations=6",
        "--set",
        "meta.val_every=3",
        "--test-steps",
        "3",
        *_overrides(prepared),
    ]
    assert train_main(args) == 0
    shown = capfd.readouterr()  # what a person sees: phases, the bar, the table; Ray's output is in the log files
    lines = assert_readable_console(shown.out + shown.err)
    assert any(line.startswith("hmr2: 6/6 iterations, loss") and "val_pa_mpjpe" in line for line in lines)
    assert any(line.startswith("test_pa_mpjpe ") for line in lines) and "console.log" in shown.out
    client = MlflowClient(mlflow_store)
    experiment = client.get_experiment_by_name("hmr_smoke")
    (run,) = client.search_runs([experiment.experiment_id])
    assert logged_steps(client, run.info.run_id) == list(range(1, 7))
    metrics = run.data.metrics
    assert metrics["data_wait_fraction"] < 1 and metrics["val_pa_mpjpe"] > 0
    assert metrics["test_pa_mpjpe_init"] > 0 and metrics["test_pa_mpjpe"] > 0 and metrics["test_pa_mpjpe_lbfgs"] > 0
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "test")}
    assert {"test/pa_mpjpe.png", "test/results.md", "test/curves.json"} <= artifacts
    assert [v.run_id for v in client.search_model_versions("name='hmr_smoke'")] == [run.info.run_id]

    # the same checkpoint against an LGD-less comparison through the command line, logged as its own run
    out = tmp_path / "eval"
    assert (
        evaluate_main(
            [
                "--checkpoint",
                str(tmp_path / "runs" / "hmr2" / "best.pt"),
                "--steps",
                "2",
                "--out",
                str(out),
                "--log-experiment",
                "hmr_smoke",
            ]
        )
        == 0
    )
    curves = json.loads((out / "curves.json").read_text())
    assert [c["name"] for c in curves] == ["L-SR1", "L-SR1 ablation", "L-BFGS (m=10) from the L-SR1 initializer"]
    assert curves[0]["pa_mpjpe"][0] == pytest.approx(curves[2]["pa_mpjpe"][0], rel=1e-5)  # both start from the initializer
    assert curves[1]["pa_mpjpe"][0] == curves[0]["pa_mpjpe"][0]  # the ablation: the same initializer, the learned terms off after
    (model,) = json.loads((out / "models.json").read_text())  # Table 1's parameter counts
    assert model["name"] == "L-SR1" and model["update_params"] > 0 and model["initializer_params"] > 0
    assert len(client.search_runs([experiment.experiment_id])) == 2
    assert evaluate_main(["--run", run.info.run_id, "--steps", "2", "--out", str(tmp_path / "again")]) == 0  # logged back
    assert client.get_run(run.info.run_id).data.metrics["test_pa_mpjpe"] == pytest.approx(curves[0]["pa_mpjpe14_smpl"][-1])

    # a sweep's comparison of its top trials (here: this run twice) against an LGD baseline
    lgd = hmr_config(hmr_data, "learner=lgd", "meta.iterations=2", "meta.val_every=2", "task.batch_size=16", "hmr.init_hidden_dim=32")
    train(lgd, tmp_path / "lgd", progress=False)
    top = [
        {
            "rank": r,
            "trial": f"t{r}",
            "val_loss": 1.0,
            "params": {"lsr1.buffer_size": 4},
            "checkpoint": str(tmp_path / "runs" / "hmr2" / "best.pt"),
        }
        for r in (1, 2)
    ]
    rows = compare(top, 2, tmp_path / "comparison", [tmp_path / "lgd" / "best.pt"])
    assert [r["trial"] for r in rows] == ["t1", "t2"] and rows[0]["test_pa_mpjpe"] == rows[1]["test_pa_mpjpe"] > 0
    assert "Reference: LGD: PA-MPJPE" in (tmp_path / "comparison" / "comparison.md").read_text()
    assert (tmp_path / "comparison" / "comparison.png").stat().st_size > 0


class _GroundTruth:
    """An 'optimizer' whose first step jumps to the problem's ground-truth parameters."""

    def __init__(self, problem: HMRProblem) -> None:
        self.target = problem.target

    def init(self, x0, g0):
        return None

    def step(self, state, x, g):
        return self.target, state, {}


def test_ground_truth_as_the_prediction_has_zero_3dpw_error(hmr_data):  # noqa: F811
    config = hmr_config(hmr_data)
    problem = problem_set(config.task, "test", hmr=config.hmr)
    (curve,) = step_curves(problem, {"ground truth": lambda part: (_GroundTruth(part), part)}, steps=1, chunk=7)
    for key in ("pa_mpjpe", "pa_mpjpe14_smpl", "mpjpe14_smpl"):
        assert curve.metrics[key][0] > 10 and curve.metrics[key][1] < 1.0, key  # mm, from the rest pose to ~0
    assert curve.metrics["reprojection"][1] < 0.5 * curve.metrics["reprojection"][0]  # the detections are noisy
    assert np.isfinite(torch.stack(list(curve.metrics.values())).numpy()).all()
    assert curve.metrics["evaluations"].tolist() == [0.0, 1.0]  # one gradient per step, no line search
