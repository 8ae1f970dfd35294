"""The second learned optimizer: convex tasks, hypergradient baselines, LSTM coordinate-wise BFGS step sizes."""

from __future__ import annotations

import math

import pytest
import torch

from lsr1.config import BFGSStepsConfig, load_config
from lsr1.experiments.iterations import iterations_to_tolerance
from lsr1.learned import BFGSSteps
from lsr1.learners import make_learner
from lsr1.meta import MetaLoss, run, train
from lsr1.optim import BFGS, HypergradientBFGS
from lsr1.tasks import problem_set
from lsr1.tasks.convex import FAMILIES, LeastSquares, convex_problems

PRESETS = [f"configs/bfgs_steps_{family}.yaml" for family in FAMILIES]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_convex_tasks_have_exact_gradients_hessians_and_optima(family):
    problem = convex_problems(family, 4, 6, seed=3, cond=50.0, dtype=torch.float64)
    x = problem.x0.clone().requires_grad_(True)
    (auto,) = torch.autograd.grad(problem.value(x).sum(), x)
    torch.testing.assert_close(problem.grad(problem.x0), auto)
    v = torch.randn_like(problem.x0)
    hv = torch.autograd.functional.hvp(lambda z: problem.value(z).sum(), problem.x0, v)[1]
    torch.testing.assert_close(problem.hvp(problem.x0, v), hv)
    assert float(problem.grad(problem.x_star).norm(dim=-1).max()) < 1e-9
    assert (
        bool((problem.relative_suboptimality(problem.x0) == 1).all())
        and float(problem.relative_suboptimality(problem.x_star).abs().max()) < 1e-12
    )
    again = convex_problems(family, 4, 6, seed=3, cond=50.0, dtype=torch.float64)
    assert torch.equal(again.a, problem.a) and torch.equal(again.x0, problem.x0)


def test_least_squares_conditioning_is_the_configured_one():
    problem = convex_problems("least_squares", 3, 10, seed=0, cond=1000.0, dtype=torch.float64)
    eig = torch.linalg.eigvalsh(problem.hessian(problem.x0))
    torch.testing.assert_close(eig[:, -1] / eig[:, 0], torch.full((3,), 1000.0, dtype=torch.float64))
    assert isinstance(problem, LeastSquares)


def test_learned_step_sizes_stay_in_0_2_whatever_the_weights_and_inputs():
    model = BFGSSteps(BFGSStepsConfig(hidden_dim=8)).double()
    problem = convex_problems("logistic", 5, 12, seed=1, cond=100.0, dtype=torch.float64)
    x, g = problem.x0 * 1e6, problem.grad(problem.x0) * 1e-9  # extreme scales
    state = model.init(x, g)
    _, state, info = model.step(state, x, g)
    assert bool((state.steps == 1).all())  # untrained: P = I, BFGS with unit steps
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 50.0)
    for _ in range(5):
        x, state, info = model.step(state, x, problem.grad(x))
        assert bool(((state.steps >= 0) & (state.steps <= 2)).all()) and bool(torch.isfinite(x).all())
    assert float(info["step_max"].detach().max()) <= 2 and float(info["step_min"].detach().min()) >= 0


@pytest.mark.parametrize("memory", [None, 5])
def test_untrained_model_is_bfgs_with_unit_steps_dense_or_limited_memory(memory):
    problem = convex_problems("least_squares", 4, 10, seed=2, cond=10.0, dtype=torch.float64)
    learned = run(BFGSSteps(BFGSStepsConfig(memory=memory)).double(), problem, 8)
    if memory is None:
        reference = run(BFGS(problem, line_search="fixed", lr=1.0), problem, 8)
        torch.testing.assert_close(learned.values, reference.values)
    assert float(problem.relative_suboptimality(learned.x).max()) < 1e-2


@pytest.mark.parametrize("per_coordinate", [False, True])
def test_hypergradient_bfgs_converges_with_steps_in_0_2(per_coordinate):
    problem = convex_problems("logistic", 8, 10, seed=4, cond=100.0, dtype=torch.float64)
    its, evaluations = iterations_to_tolerance(HypergradientBFGS(per_coordinate=per_coordinate), problem, max_steps=200)
    assert bool(torch.isfinite(its).all()) and bool((evaluations == 0).all())
    result = run(HypergradientBFGS(per_coordinate=per_coordinate), problem, 20)
    assert float(result.info["step_size"].min()) >= 0 and float(result.info["step_size"].max()) <= 2


def test_iterations_to_tolerance_counts_line_search_evaluations():
    problem = convex_problems("least_squares", 4, 8, seed=5, cond=10.0, dtype=torch.float64)
    its, evaluations = iterations_to_tolerance(BFGS(problem, line_search="armijo"), problem, max_steps=100)
    assert bool(torch.isfinite(its).all()) and bool((evaluations >= its).all())
    never, _ = iterations_to_tolerance(HypergradientBFGS(initial_step=1e-3, beta=0.0), problem, max_steps=3)
    assert bool((never == math.inf).all())


def test_a_diverging_inner_run_is_caught_and_counted_in_the_meta_loss():
    problem = convex_problems("least_squares", 6, 8, seed=6, cond=10.0)
    problem.a[:3] *= 100.0  # curvature 1e4: BFGS's first unit step on the raw gradient explodes there
    problem = LeastSquares(problem.a, problem.target, problem.x0)
    loss, parts = MetaLoss(BFGSSteps(BFGSStepsConfig()), steps=5, divergence_guard=1000.0)(problem)
    assert torch.isfinite(loss) and 0 < float(parts["diverged"]) < 1


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_meta_train_and_the_shipped_model_loads(preset, tmp_path):
    config = load_config(preset, ["meta.iterations=2", "meta.val_every=2", "meta.unroll_steps=4", "task.batch_size=8", "task.val_size=8"])
    summary = train(config, tmp_path / "run", progress=False)
    assert summary.iterations == 2 and math.isfinite(summary.best_val_loss)
    assert isinstance(make_learner(config), BFGSSteps)
    from lsr1 import pretrained

    shipped = pretrained.load(config.name, dtype=torch.float64)
    test = problem_set(config.task, "test", dtype=torch.float64)
    assert bool(torch.isfinite(run(shipped, test, 3).values).all())


def test_a_sweep_compares_learned_step_sizes_against_bfgs_with_a_line_search(tmp_path):
    from pipeline.sweep import compare

    config = load_config(
        PRESETS[1],
        [
            "meta.iterations=2",
            "meta.val_every=2",
            "meta.unroll_steps=4",
            "task.batch_size=8",
            "task.val_size=8",
            "task.test_size=8",
            "task.test_dim=12",
        ],
    )
    train(config, tmp_path / "run", progress=False)
    top = [
        {
            "rank": 1,
            "trial": "t1",
            "val_loss": 0.0,
            "params": {"bfgs_steps.reg_weight": 0.1},
            "checkpoint": str(tmp_path / "run" / "best.pt"),
        }
    ]
    rows = compare(top, 5, tmp_path / "comparison")
    assert rows[0]["test_final_gap"] >= 0 and "Reference: BFGS-Armijo" in (tmp_path / "comparison" / "comparison.md").read_text()
