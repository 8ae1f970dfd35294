import json

import numpy as np
import pytest
import torch

from lsr1.checkpoint import load_checkpoint
from lsr1.config import ConfigError, LGDConfig, load_config
from lsr1.hmr.body import BodyModel
from lsr1.hmr.camera import H36M_TO_J14
from lsr1.hmr.formats import FormatError, load_amass_frames, read_3dpw_split
from lsr1.learned import LGD, LSR1
from lsr1.learned.initializer import WithInitializer
from lsr1.learners import make_learner
from lsr1.meta import MetaLoss, run, step_metrics, train, unroll
from lsr1.optim import Backtracked, with_line_search
from lsr1.tasks import HMRProblem, problem_set, random_quadratics
from lsr1.tasks.hmr import amass_problem, load_joint_model, pw3d_arrays, pw3d_problem
from tests.helpers import smoketest_meta_step, smoketest_optimizer, smoketest_task
from tests.hmr_data import hmr_config, hmr_data  # noqa: F401  (session fixture)


@pytest.fixture(scope="module")
def setup(hmr_data):  # noqa: F811
    body = BodyModel(hmr_data["body"])
    frames = load_amass_frames(hmr_data["amass"])
    return body, {key: frames[key][:16] for key in ("pose72", "betas10")}


@pytest.mark.parametrize("rotation", ["axis_angle", "6d"])
def test_amass_problem_is_seeded_and_its_ground_truth_fits_exactly(hmr_data, setup, rotation):  # noqa: F811
    body, frames = setup
    config = hmr_config(hmr_data, f"hmr.rotation={rotation}").hmr
    model = body.joint_model(dtype=torch.float64)
    problem = amass_problem(frames, model, config, seed=3)
    again = amass_problem(frames, model, config, seed=3)
    assert torch.equal(problem.keypoints, again.keypoints) and torch.equal(problem.confidence, again.confidence)
    assert not torch.equal(problem.keypoints, amass_problem(frames, model, config, seed=4).keypoints)
    assert problem.dim == (72 if rotation == "axis_angle" else 144) + 10 and problem.context.shape == (16, 36)
    masked = problem.confidence == 0
    assert masked.any() and (problem.keypoints[masked] == 0.5).all()
    assert problem.keypoints.min() >= 0 and problem.keypoints.max() <= 1
    target = problem.target
    assert float(problem.value(target).abs().max()) < 1e-10  # no noise: Theta_gt reprojects exactly
    assert float(problem.meta_objective(target, problem.value(target)).abs().max()) < 1e-10
    assert (problem.value(problem.x0) > 0.01).all()
    smoketest_task(problem)


def test_second_order_gradient_only_when_x_is_in_a_graph(hmr_data, setup):  # noqa: F811
    body, frames = setup
    problem = amass_problem(frames, body.joint_model(), hmr_config(hmr_data).hmr, seed=0)
    assert not problem.grad(problem.x0).requires_grad
    x = problem.x0.clone().requires_grad_(True)
    g = problem.grad(x)
    assert g.requires_grad
    (gg,) = torch.autograd.grad(g.pow(2).sum(), x)
    assert torch.isfinite(gg).all()


def test_problem_arrays_select_and_device_round_trip(hmr_data, setup):  # noqa: F811
    body, frames = setup
    config = hmr_config(hmr_data).hmr
    model = body.joint_model()
    problem = amass_problem(frames, model, config, seed=0)
    rebuilt = HMRProblem.from_arrays(problem.to_arrays(), model, config)
    for name in ("keypoints", "confidence", "target", "joints_gt", "joints24_gt", "eval_gt", "x0"):
        assert torch.equal(getattr(rebuilt, name), getattr(problem, name)), name
    half = problem.select(slice(0, None, 2))
    assert half.batch_size == 8 and torch.equal(half.value(half.target), problem.value(problem.target)[::2])
    doubled = problem.to("cpu", torch.float64)
    assert doubled.model.joint_template.dtype == torch.float64 and doubled.keypoints.dtype == torch.float64


def test_3dpw_problem_keeps_valid_frames_in_lgd_camera_frame(hmr_data):  # noqa: F811
    config = hmr_config(hmr_data).hmr
    sequences = read_3dpw_split(hmr_data["3dpw"], "test")
    arrays = pw3d_arrays(sequences)
    assert len(arrays["pose72"]) == sum(int(v.sum()) for s in sequences for v in s.campose_valid)
    assert len(pw3d_arrays(sequences, skip=10)["pose72"]) == -(-len(arrays["pose72"]) // 10)
    problem = pw3d_problem(arrays, BodyModel(hmr_data["body"]).joint_model(), config)
    assert set(problem.confidence.unique().tolist()) <= {0.0, 1.0}
    # the ground truth, turned into LGD's frame, explains the (noisy, perspective) detections well, far
    # better than the same pose facing the other way (wrong camera rotation) would
    fit = problem.value(problem.target)
    turned = problem.target.clone()
    turned[:, :3] = 0.0
    assert float(fit.median()) < 0.02 and float(fit.median()) < 0.5 * float(problem.value(turned).median())
    metrics = problem.evaluation_metrics(problem.target)
    assert float(metrics["pa_mpjpe"].max()) < 1.0 and set(metrics) == {"pa_mpjpe", "pa_mpjpe14_smpl", "mpjpe14_smpl", "reprojection"}


@pytest.mark.parametrize("learner", ["lsr1", "lgd"])
def test_initializer_and_update_module_meta_train_as_one_learner(hmr_data, learner):  # noqa: F811
    config = hmr_config(hmr_data, f"learner={learner}", "lgd.hidden_dim=32", "hmr.init_hidden_dim=32", "task.batch_size=16")
    model = make_learner(config)
    assert isinstance(model, WithInitializer) and isinstance(model.update, LSR1 if learner == "lsr1" else LGD)
    smoketest_meta_step(model, lambda i: problem_set(config.task, "train", i, hmr=config.hmr), steps=3)
    assert set(k.split(".")[0] for k in model.state_dict()) == {"initializer", "update"}


def test_an_lsr1_update_with_a_line_search_searches_behind_the_initializer_too(hmr_data):  # noqa: F811
    config = hmr_config(hmr_data, "meta.line_search=armijo", "hmr.init_hidden_dim=32", "task.batch_size=8")
    model = with_line_search(make_learner(config).eval(), config.meta.line_search)
    assert isinstance(model, Backtracked) and isinstance(model.optimizer, WithInitializer)
    result = run(model, problem_set(config.task, "train", 0, hmr=config.hmr), 3)
    assert (result.values[1:] <= result.values[:-1]).all() and (result.info["evaluations"] >= 1).all()


def test_meta_loss_supervises_the_predicted_start_and_every_step(hmr_data):  # noqa: F811
    config = hmr_config(hmr_data, "hmr.init_hidden_dim=32", "task.batch_size=16")
    torch.manual_seed(0)
    model = make_learner(config).eval()
    problem = problem_set(config.task, "train", 0, hmr=config.hmr)
    loss, parts = MetaLoss(model, 3)(problem)
    result = unroll(model, problem, 3, meta_objective=True)
    assert result.objectives.shape == (4, 16)
    assert torch.allclose(parts["objective"], result.objectives.mean(), rtol=1e-6)
    assert torch.allclose(result.values[0], problem.value(model.initial_point(problem)), rtol=1e-6)


def test_lgd_runs_without_context_on_any_fixed_size_problem():
    problem = random_quadratics(4, 5, seed=0, dtype=torch.float64)
    smoketest_optimizer(LGD(LGDConfig(hidden_dim=16), context_dim=0, pose_dim=5).double(), problem)
    with pytest.raises(ValueError, match="needs a context"):
        LGD(LGDConfig(hidden_dim=16), context_dim=3, pose_dim=5).init(problem.x0, problem.grad(problem.x0))
    with pytest.raises(ConfigError, match="needs task.name 'hmr'"):
        load_config("configs/smoke.yaml", ["learner=lgd"])


def test_train_selects_the_best_checkpoint_by_pa_mpjpe_and_resumes(hmr_data, tmp_path):  # noqa: F811
    config = hmr_config(
        hmr_data, "meta.iterations=4", "meta.val_every=2", "task.batch_size=16", "hmr.init_hidden_dim=32", "meta.checkpoint_every_s=0"
    )
    summary = train(config, tmp_path / "run", progress=False)
    lines = [line for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if "val_pa_mpjpe" in line]
    scores = [json.loads(line)["val_pa_mpjpe"] for line in lines]
    assert len(scores) == 2 and summary.best_val_loss == min(scores)
    best = load_checkpoint(tmp_path / "run" / "best.pt")
    assert best["best_val_loss"] == min(scores) and any(k.startswith("initializer.") for k in best["model"])
    with pytest.raises(ValueError, match="another run name"):
        train(
            hmr_config(hmr_data, "meta.iterations=6", "task.batch_size=16", "hmr.init_hidden_dim=32", "hmr.rotation=6d"),
            tmp_path / "run",
            progress=False,
        )
    with pytest.raises(ValueError, match="select_metric 'val_nope'.*val_pa_mpjpe"):
        train(
            hmr_config(hmr_data, "meta.iterations=1", "task.batch_size=16", "hmr.init_hidden_dim=32", "meta.select_metric=val_nope"),
            tmp_path / "other",
            progress=False,
        )


def test_per_step_metrics_of_a_trajectory(hmr_data):  # noqa: F811
    config = hmr_config(hmr_data, "hmr.init_hidden_dim=32")
    problem = problem_set(config.task, "test", hmr=config.hmr)
    curves = step_metrics(problem, run(make_learner(config), problem, 3).iterates)
    assert all(v.shape == (4,) for v in curves.values()) and np.isfinite(curves["pa_mpjpe"].numpy()).all()


def test_h36m_evaluation_regressor_is_used_when_configured(hmr_data, setup, tmp_path):  # noqa: F811
    body, frames = setup
    regressor = np.zeros((17, 6890))
    regressor[np.arange(17), np.arange(17) * 300] = 1.0  # one vertex per joint
    np.save(tmp_path / "J_regressor_h36m.npy", regressor)
    config = hmr_config(hmr_data, f"hmr.h36m_regressor={tmp_path / 'J_regressor_h36m.npy'}").hmr
    model = load_joint_model(config)
    # Arrow list columns arrive as arrays of arrays; the batch builder accepts them
    rows = {}
    for key, value in frames.items():
        rows[key] = np.empty(len(value), dtype=object)
        rows[key][:] = list(value)
    problem = amass_problem(rows, model, config, seed=0)
    metrics = problem.evaluation_metrics(problem.target)
    assert {"pa_mpjpe14_h36m", "mpjpe14_h36m"} <= set(metrics) and float(metrics["pa_mpjpe14_h36m"].max()) < 1e-2
    vertices = body.smpl(
        betas=torch.as_tensor(frames["betas10"]), body_pose=problem.target[:, 3:72], global_orient=problem.target[:, :3]
    ).vertices
    expected = vertices[:, torch.arange(17) * 300][:, list(H36M_TO_J14)]
    torch.testing.assert_close(problem.eval_gt, expected, atol=1e-5, rtol=0)
    np.save(tmp_path / "bad.npy", np.zeros((14, 6890)))
    with pytest.raises(FormatError, match=r"bad\.npy: expected the H36M regressor's shape"):
        load_joint_model(hmr_config(hmr_data, f"hmr.h36m_regressor={tmp_path / 'bad.npy'}").hmr)


@pytest.mark.parametrize("learner", ["lsr1", "lgd"])
def test_hmr_evaluation_of_a_frame_does_not_depend_on_the_other_frames(hmr_data, learner):  # noqa: F811
    """A 3DPW frame gets the same trajectory alone and inside any evaluation chunk (docs/design.md §3). In float64: a batch
    of 1 and one of 6 go through matrix products of other shapes, which may sum in another order (by CPU); in
    float32 those last-bit differences can tip a line search's accept test and change the trajectory, in float64
    they stay near 1e-16 and a tolerance of 1e-9 holds with room."""
    config = hmr_config(hmr_data, f"learner={learner}", "lgd.hidden_dim=32", "hmr.init_hidden_dim=32", "task.batch_size=16")
    torch.manual_seed(0)
    model = make_learner(config).double()
    model.train()
    for i in range(2):  # training moves the running statistics away from their initial values
        unroll(model, problem_set(config.task, "train", i, dtype=torch.float64, hmr=config.hmr), 2)
    test = problem_set(config.task, "test", dtype=torch.float64, hmr=config.hmr).select(slice(0, 6))
    together = run(model, test, 3).iterates
    for i in (0, 3, 5):
        alone = run(model, test.select(slice(i, i + 1)), 3).iterates
        assert torch.allclose(alone[:, 0], together[:, i], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("learner", ["lsr1", "lgd"])
def test_with_burn_in_the_initializer_learns_from_its_own_term_and_the_update_from_the_late_steps(hmr_data, learner):  # noqa: F811
    config = hmr_config(hmr_data, f"learner={learner}", "lgd.hidden_dim=32", "hmr.init_hidden_dim=32", "task.batch_size=16")
    torch.manual_seed(0)
    model = make_learner(config)
    problem = problem_set(config.task, "train", 0, hmr=config.hmr)
    loss, _ = MetaLoss(model, 2)(problem, burn_in=3)
    loss.backward()
    for part in (model.initializer, model.update):
        grads = [p.grad for p in part.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads) and any(float(g.abs().sum()) > 0 for g in grads)
