import json
import math

import pytest
import torch

from lsr1.checkpoint import load_checkpoint
from lsr1.config import load_config
from lsr1.learners import make_learner
from lsr1.meta import MetaLoss, TrainHooks, meta_step, run, train, unroll, validate
from lsr1.optim import GradientDescent
from lsr1.tasks import Quadratic, problem_set, random_quadratics
from tests.helpers import assert_close


def _smoke(*overrides):
    return load_config("configs/smoke.yaml", ["meta.checkpoint_every_s=0", *overrides])


def test_unroll_records_every_step():
    problem = random_quadratics(5, 3, seed=0, dtype=torch.float64)
    result = run(GradientDescent(0.5), problem, 7)
    assert result.values.shape == (8, 5) and result.penalties.shape == (7, 5) and result.iterates.shape == (8, 5, 3)
    x = problem.x0
    for k in range(7):
        x = x - 0.5 * problem.grad(x)
        assert_close(result.iterates[k + 1], x)
        assert_close(result.values[k + 1], problem.value(x))


def test_meta_loss_is_equation_9():
    config = _smoke()
    learner = make_learner(config).double()
    problem = problem_set(config.task, "train", 0, dtype=torch.float64)
    loss, parts = MetaLoss(learner, 5)(problem)
    torch.manual_seed(0)
    result = unroll(learner, problem, 5)
    expected = (result.values[1:] + config.lsr1.lambda_sec * result.info["secant_residual"]).mean()
    assert_close(loss.detach(), expected.detach(), atol=1e-8, rtol=1e-8)
    assert set(parts) >= {"objective", "penalty", "secant_residual", "step_size"}


def test_first_order_meta_gradient_detaches_inner_gradients():
    config = _smoke()
    learner = make_learner(config)
    problem = problem_set(config.task, "train", 0)
    first = unroll(learner, problem, 3)
    second = unroll(learner, problem, 3, second_order=True)
    assert not first.g.requires_grad and second.g.requires_grad


def test_training_lowers_the_validation_loss(tmp_path):
    config = _smoke("meta.iterations=300", "meta.val_every=100")
    torch.manual_seed(config.meta.seed)
    before = validate(make_learner(config), problem_set(config.task, "val"), config.meta.unroll_steps)["val_loss"]
    summary = train(config, tmp_path / "run", progress=False)
    assert summary.iterations == 300 and summary.skipped == 0
    assert summary.best_val_loss < before - 0.05, (before, summary.best_val_loss)
    best = load_checkpoint(tmp_path / "run" / "best.pt")
    assert best["iteration"] == summary.best_iteration and best["best_val_loss"] == summary.best_val_loss


def test_resume_continues_at_the_same_iteration_with_the_same_result(tmp_path):
    train(_smoke("meta.iterations=30", "meta.val_every=10"), tmp_path / "a", progress=False)
    train(_smoke("meta.iterations=15", "meta.val_every=10"), tmp_path / "b", progress=False)
    seen = []
    resumed = train(
        _smoke("meta.iterations=30", "meta.val_every=10"),
        tmp_path / "b",
        progress=False,
        hooks=TrainHooks(on_iteration=lambda i, m: seen.append(i)),
    )
    assert seen[0] == 16 and resumed.iterations == 30
    a, b = load_checkpoint(tmp_path / "a" / "last.pt"), load_checkpoint(tmp_path / "b" / "last.pt")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    lines = [json.loads(line)["iteration"] for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert lines == list(range(1, 31))


def test_resume_refuses_another_architecture(tmp_path):
    train(_smoke("meta.iterations=2"), tmp_path / "r", progress=False)
    with pytest.raises(ValueError, match="another run name"):
        train(_smoke("meta.iterations=4", "lsr1.hidden_dim=16"), tmp_path / "r", progress=False)


def test_non_finite_steps_are_skipped_counted_and_never_saved(tmp_path):
    config = _smoke("meta.iterations=6", "meta.val_every=3")
    good = [problem_set(config.task, "train", i) for i in range(6)]
    nan_data = Quadratic(good[2].h * float("nan"), good[2].b, good[2].x0)  # a NaN in the batch itself
    diverging = Quadratic(good[4].h * 1e30, good[4].b, good[4].x0)  # finite data, the unroll overflows
    problems = iter(good[:2] + [nan_data] + good[3:4] + [diverging] + good[5:])
    buffers = {}

    def remember(iteration, run_dir, metrics):  # called right after last.pt of `iteration` is written
        if iteration in (2, 3, 4, 5):
            state = load_checkpoint(run_dir / "last.pt")["model"]
            buffers[iteration] = {k: v for k, v in state.items() if "running" in k}

    summary = train(config, tmp_path / "run", train_problems=problems, progress=False, hooks=TrainHooks(on_checkpoint=remember))
    assert summary.skipped == 2 and summary.iterations == 6
    for before, after in ((2, 3), (4, 5)):  # the skipped steps leave BatchNorm statistics alone
        for key, value in buffers[before].items():
            assert torch.equal(value, buffers[after][key]), f"{key} changed on skipped step {after}"
    state = load_checkpoint(tmp_path / "run" / "last.pt")["model"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_meta_step_agree_hook_can_veto():
    config = _smoke()
    learner = make_learner(config)
    opt = torch.optim.AdamW(learner.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in learner.parameters()]
    result = meta_step(MetaLoss(learner, 3), opt, problem_set(config.task, "train", 0), agree=lambda ok: False)
    assert result.skipped
    assert all(torch.equal(a, b) for a, b in zip(before, learner.parameters()))


def test_divergence_guard_freezes_only_the_diverging_problems():
    good = random_quadratics(3, 2, seed=0, dtype=torch.float64)
    h = good.h.clone()
    h[1] *= 50.0  # gradient descent with lr 1 diverges on this one only
    problem = Quadratic(h, good.b, good.x0)
    free = unroll(GradientDescent(1.0), problem, 12)
    assert free.values[-1, 1] > 1e10
    guarded = unroll(GradientDescent(1.0), problem, 12, divergence_guard=10.0)
    f0 = guarded.values[0]
    assert (guarded.values <= f0 + 10.0 * (f0.abs() + 1.0)).all()
    assert guarded.info["diverged"][-1].tolist() == [0.0, 1.0, 0.0]
    assert torch.equal(guarded.values[:, [0, 2]], free.values[:, [0, 2]])


def test_divergence_guard_keeps_the_meta_gradient_finite():
    config = _smoke()
    learner = make_learner(config)
    batch = problem_set(config.task, "train", 0)
    h = batch.h.clone()
    h[0] *= 1e4
    problem = Quadratic(h, batch.b, batch.x0)
    loss, parts = MetaLoss(learner, 8, divergence_guard=1e3)(problem)
    loss.backward()
    assert torch.isfinite(loss) and parts["diverged"] > 0
    assert all(torch.isfinite(p.grad).all() for p in learner.parameters() if p.grad is not None)


def test_float64_meta_training_checkpoints_in_double_and_loads_in_either_precision(tmp_path):
    from lsr1.experiments.evaluate import load_learner

    seen = []
    hooks = TrainHooks(on_iteration=lambda i, m: seen.append(m["loss"]))
    summary = train(_smoke("meta.iterations=4", "meta.val_every=2", "meta.dtype=float64"), tmp_path / "run", progress=False, hooks=hooks)
    assert summary.iterations == 4 and len(seen) == 4 and all(math.isfinite(loss) for loss in seen)
    payload = load_checkpoint(tmp_path / "run" / "best.pt")
    assert {t.dtype for t in payload["model"].values() if t.is_floating_point()} == {torch.float64}
    config, model, _ = load_learner(tmp_path / "run" / "best.pt")  # the evaluation's own loading, as for float32 runs
    assert config.meta.dtype == "float64" and next(model.parameters()).dtype == torch.float64
    single = make_learner(config)  # a float32 model (the drop-in optimizer's) takes the weights as they are
    single.load_state_dict(payload["model"])
    assert next(single.parameters()).dtype == torch.float32


def test_burn_in_unrolls_the_same_trajectory_with_a_graph_only_over_the_last_k_steps():
    config = _smoke("lsr1.global_features=true", "lsr1.input_scaling=rms", "lsr1.identity_in_step=true")
    learner = make_learner(config).double()
    problem = problem_set(config.task, "train", 0, dtype=torch.float64)
    burn_in, steps = 3, 4
    full = unroll(learner, problem, burn_in + steps, keep_iterates=True)
    grad_enabled = []
    hook = learner.encoder.register_forward_pre_hook(lambda module, args: grad_enabled.append(torch.is_grad_enabled()))
    burned = unroll(learner, problem, steps, keep_iterates=True, burn_in=burn_in)
    hook.remove()
    assert grad_enabled == [False] * burn_in + [True] * steps
    assert burned.iterates.shape[0] == steps + 1 and burned.values.shape[0] == steps + 1
    assert_close(burned.iterates[1:].detach(), full.iterates[burn_in + 1 :].detach(), atol=1e-12, rtol=1e-12)
    assert_close(burned.values[0].detach(), full.values[0].detach())
    assert_close(burned.values[1:].detach(), full.values[burn_in + 1 :].detach(), atol=1e-12, rtol=1e-12)
    assert burned.values[-1].requires_grad


def test_burn_in_is_drawn_from_the_seed_and_iteration_and_sets_the_horizon(tmp_path):
    from lsr1.meta import _burn_in

    config = _smoke("meta.burn_in=6", "meta.unroll_steps=4", "lsr1.global_features=true", "lsr1.cap_step_index=true")
    draws = [_burn_in(config.meta, i) for i in range(1, 200)]
    assert draws == [_burn_in(config.meta, i) for i in range(1, 200)]  # every worker and a resumed run agree
    assert set(draws) == set(range(7))
    assert make_learner(config).last_trained_step == 6 + 4 - 1
    assert _burn_in(_smoke().meta, 5) == 0
    summary = train(_smoke("meta.burn_in=6", "meta.iterations=4", "meta.val_every=4"), tmp_path / "run", progress=False)
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert summary.skipped == 0 and [line["burn_in"] for line in lines] == [
        _burn_in(_smoke("meta.burn_in=6").meta, i) for i in (1, 2, 3, 4)
    ]
