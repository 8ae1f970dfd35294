import copy
from pathlib import Path

import pytest
import torch

from lsr1.config import FORMULATIONS, LSR1Config, load_config
from lsr1.learned import LSR1, applied_secant_residual, precondition, secant_residual
from lsr1.meta import run
from lsr1.optim import Backtracked
from lsr1.optim.base import fifo_push
from lsr1.tasks import Quadratic, random_quadratics
from tests.helpers import assert_close, smoketest_meta_step, smoketest_optimizer


def _paper(**kw) -> LSR1Config:
    """The paper's formulation (the switches these tests were written against), with `kw` on top."""
    return LSR1Config(**{**FORMULATIONS["paper"], **kw})


def _small(**kw) -> LSR1:
    return LSR1(_paper(hidden_dim=16, buffer_size=3, **kw))


def test_lsr1_smoke_on_quadratics():
    smoketest_optimizer(_small(), random_quadratics(8, 5, seed=1))


def test_same_weights_serve_any_dimension():
    model = _small().eval()
    for n in (2, 1000):
        x0 = torch.randn(2, n)
        g0 = torch.randn(2, n)
        state = model.init(x0, g0)
        x1, state, info = model.step(state, x0, g0)
        assert x1.shape == (2, n) and state.buffer.shape == (2, 3, n)
        assert torch.isfinite(x1).all()


def test_sqrt_dim_vector_norm_keeps_the_preconditioner_scale_independent_of_n():
    """Element-wise v has ||v||^2 ~ N; vector_norm "sqrt_dim" divides v by sqrt(N), so ||v||^2 stays put."""
    torch.manual_seed(0)
    plain, scaled = _small().eval(), _small(vector_norm="sqrt_dim").eval()
    scaled.load_state_dict(plain.state_dict())
    norms = {}
    for n in (100, 10000):
        x0, g0 = torch.randn(1, n), torch.randn(1, n)
        for name, model in (("plain", plain), ("scaled", scaled)):
            _, _, info = model.step(model.init(x0, g0), x0, g0)
            norms[name, n] = float(info["v_norm"][0].detach()) ** 2
    assert norms["plain", 10000] / norms["plain", 100] == pytest.approx(100, rel=0.2)
    assert norms["scaled", 10000] / norms["scaled", 100] == pytest.approx(1, rel=0.2)
    assert norms["scaled", 100] == pytest.approx(norms["plain", 100] / 100, rel=1e-5)


def test_buffer_is_fifo_oldest_first():
    buffer = torch.zeros(1, 3, 2)
    for k in range(1, 6):
        buffer = fifo_push(buffer, torch.full((1, 2), float(k)))
    assert buffer[0, :, 0].tolist() == [3.0, 4.0, 5.0]
    kept = fifo_push(buffer, torch.full((1, 2), 9.0), accept=torch.tensor([False]))
    assert torch.equal(kept, buffer)


def test_direction_and_secant_residual_match_dense_formulas():
    torch.manual_seed(3)
    buffer, g, p, q = torch.randn(4, 5, 7, dtype=torch.float64), *torch.randn(3, 4, 7, dtype=torch.float64)
    dense = torch.einsum("bli,blj->bij", buffer, buffer)  # sum_i v_i v_i^T
    eye = torch.eye(7, dtype=torch.float64)
    for c in (0.0, 1.0):
        assert_close(precondition(buffer, g, c), torch.einsum("bij,bj->bi", c * eye + dense, g))
    expected = (p - torch.einsum("bij,bj->bi", eye + dense, q)).pow(2).sum(-1)
    assert_close(secant_residual(buffer, p, q), expected)


def test_step_follows_algorithm_1():
    """x_1 = x_0 - alpha * (v v^T) g_0 with v, alpha from E(x0, x0, g0, g0, g0) (p0 = x0, q0 = d0 = g0)."""
    model = _small().double().eval()
    x0, g0 = torch.randn(2, 6, dtype=torch.float64), torch.randn(2, 6, dtype=torch.float64)
    state = model.init(x0, g0)
    x1, state, _ = model.step(state, x0, g0)
    features = model.encoder(torch.stack([x0, x0, g0, g0, g0], -1))
    v = model.vector_generator(features).squeeze(-1)
    alpha = model.gamma1 * torch.exp(model.gamma2 * model.lr_generator(features).squeeze(-1))
    assert_close(x1, x0 - alpha * v * (v * g0).sum(-1, keepdim=True))
    assert_close(state.buffer[:, -1], v)
    assert torch.count_nonzero(state.buffer[:, :-1]) == 0


def test_identity_in_step_adds_g():
    weight = 1.0
    a, b = _small().double().eval(), _small(identity_in_step=True).double().eval()
    b.load_state_dict(a.state_dict())
    x0, g0 = torch.randn(2, 4, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)
    xa, _, info = a.step(a.init(x0, g0), x0, g0)
    xb, _, _ = b.step(b.init(x0, g0), x0, g0)
    alpha = a.gamma1 * torch.exp(a.gamma2 * a.lr_generator(a.encoder(torch.stack([x0, x0, g0, g0, g0], -1))).squeeze(-1))
    assert_close(xb, xa - alpha * weight * g0)


def test_encoder_inputs_subset_changes_encoder_width():
    model = _small(encoder_inputs=["x", "g"])
    assert model.encoder.fc1.in_features == 2
    smoketest_optimizer(model, random_quadratics(4, 3, seed=0))


def test_meta_penalty_is_lambda_times_secant_residual():
    model = _small(lambda_sec=7.0).double()
    problem = random_quadratics(4, 3, seed=2, dtype=torch.float64)
    x0 = problem.x0
    g0 = problem.grad(x0)
    state = model.init(x0, g0)
    x1, state, _ = model.step(state, x0, g0)
    g1 = problem.grad(x1)
    penalty, info = model.meta_penalty(state, x1, g1)
    assert_close(penalty, 7.0 * secant_residual(state.buffer, x1 - x0, g1 - g0))
    assert_close(info["secant_residual"], secant_residual(state.buffer, x1 - x0, g1 - g0))


def test_meta_gradient_reaches_every_module():
    smoketest_meta_step(_small(), lambda i: random_quadratics(16, 2, seed=i))


def test_another_buffer_size_shares_weights():
    model = _small()
    other = model.with_settings(buffer_size=7)
    assert other.buffer_size == 7 and model.buffer_size == 3
    assert other.encoder is model.encoder
    with pytest.raises(ValueError):
        model.with_settings(buffer_size=0)


def test_another_lbfgs_memory_keeps_more_pairs_with_the_same_weights():
    model = LSR1(_paper(hidden_dim=8, buffer_size=3, identity_in_step=True, lbfgs_memory=2)).double().eval()
    wider = model.with_settings(lbfgs_memory=5)
    assert wider.config.lbfgs_memory == 5 and model.config.lbfgs_memory == 2 and wider.encoder is model.encoder
    problem = random_quadratics(2, 6, seed=0, dtype=torch.float64)
    short, long = run(model, problem, 4), run(wider, problem, 4)
    # identical while at most two pairs are measured (steps 1-3), different once a third one is kept
    assert torch.equal(short.values[:4], long.values[:4]) and not torch.equal(short.values[4], long.values[4])
    with pytest.raises(ValueError, match="trained with the L-BFGS operator"):
        _small().with_settings(lbfgs_memory=4)
    with pytest.raises(ValueError, match=">= 1"):
        model.with_settings(lbfgs_memory=0)


def test_bad_inputs_give_clear_errors():
    model = _small()
    with pytest.raises(ValueError, match=r"shape \(B, N\)"):
        model.init(torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError, match="NaN"):
        model.init(torch.tensor([[float("nan"), 1.0]]), torch.zeros(1, 2))
    with pytest.raises(ValueError, match="same shape"):
        model.init(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(TypeError, match="floating"):
        model.init(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long))


def _newton_buffer(h: torch.Tensor) -> torch.Tensor:
    """v_i = u_i / sqrt(lambda_i) over H's eigenvectors, so that sum v v^T = H^-1: (1, N, N)."""
    eig, vec = torch.linalg.eigh(h[0])
    return (vec / eig.sqrt()).t().unsqueeze(0)


def test_applied_penalty_is_zero_at_the_newton_step_and_positive_at_a_short_step():
    problem = random_quadratics(1, 4, seed=11, max_cond=100.0, dtype=torch.float64)
    x = problem.x0
    g = problem.grad(x)
    alpha = torch.ones_like(x)
    newton = _newton_buffer(problem.h)  # M = diag(1) (0 I + H^-1)
    p = -alpha * precondition(newton, g, 0.0)
    q = problem.grad(x + p) - g
    assert_close(p, problem.newton_direction(g))
    assert float(applied_secant_residual(newton, alpha, 0.0, p, q)) < 1e-20
    # the paper's form charges the same Newton step: B~ = I + H^-1 gives ||p - (I + H^-1) H p||^2 = ||q||^2
    assert_close(secant_residual(newton, p, q), q.pow(2).sum(-1), rtol=1e-7)
    assert float(q.pow(2).sum()) > 0.1
    # a short gradient step, M = 0.01 I: the applied penalty does not reward not moving
    empty, short = torch.zeros(1, 2, 4, dtype=torch.float64), torch.full_like(x, 0.01)
    p = -short * precondition(empty, g, 1.0)
    q = problem.grad(x + p) - g
    assert float(applied_secant_residual(empty, short, 1.0, p, q)) > 0.5
    assert float(secant_residual(empty, 1e-6 * p, 1e-6 * q)) < 1e-10  # while the paper's form vanishes with p


def test_applied_penalty_measures_the_operator_of_the_step():
    """meta_penalty with formulation 'project' is ||p - alpha (c s q + sum v v^T q)||^2 / ||p||^2 of the
    step it follows, with the state's own alpha, s and buffer, in dense form."""
    model = _small(formulation="project", identity_in_step=True, curvature_scale="secant", lambda_sec=3.0).double()
    problem = random_quadratics(3, 5, seed=4, dtype=torch.float64)
    x0 = problem.x0
    g0 = problem.grad(x0)
    x1, state, _ = model.step(model.init(x0, g0), x0, g0)
    x2, state, _ = model.step(state, x1, problem.grad(x1))
    g2 = problem.grad(x2)
    penalty, info = model.meta_penalty(state, x2, g2)
    p, q = x2 - x1, g2 - problem.grad(x1)
    dense = torch.einsum("bli,blj->bij", state.buffer, state.buffer) + state.scale.unsqueeze(-1) * torch.eye(5, dtype=torch.float64)
    mq = state.alpha * torch.einsum("bij,bj->bi", dense, q)
    expected = (p - mq).pow(2).sum(-1) / p.pow(2).sum(-1)
    assert_close(info["secant_residual"], expected)
    assert_close(penalty, 3.0 * expected)
    assert_close(x2, x1 - state.alpha * torch.einsum("bij,bj->bi", dense, problem.grad(x1)))  # the same operator


def test_the_first_steps_curvature_scale_comes_from_x0_and_g0():
    """With curvature_scale 'secant' the first step's s comes from (x0, g0), as Alg. 1 seeds E with them; every
    later step's s is |p.q| / q.q of the step before it."""
    model = _small(curvature_scale="secant", identity_in_step=True).double().eval()
    problem = random_quadratics(3, 5, seed=2, dtype=torch.float64)
    x0 = problem.x0
    g0 = problem.grad(x0)
    x1, state, first = model.step(model.init(x0, g0), x0, g0)
    g1 = problem.grad(x1)
    _, _, second = model.step(state, x1, g1)
    assert_close(first["curvature_scale"], (x0 * g0).sum(-1).abs() / g0.pow(2).sum(-1))
    p, q = x1 - x0, g1 - g0
    assert_close(second["curvature_scale"], (p * q).sum(-1).abs() / q.pow(2).sum(-1))


def test_cap_step_index_holds_the_step_feature_past_the_training_horizon_only():
    """With cap_step_index the step k = 2, 3, ... of a model meta-trained with K = 3 unrolled steps feeds E
    the step index 2: a K-step unroll is unchanged, the steps after it repeat step K's index."""
    options = dict(global_features=True, input_scaling="rms", curvature_scale="secant", identity_in_step=True)
    torch.manual_seed(0)
    plain = LSR1(_paper(hidden_dim=16, buffer_size=3, **options)).double().eval()
    capped = LSR1(_paper(hidden_dim=16, buffer_size=3, cap_step_index=True, **options), horizon=3).double().eval()
    capped.load_state_dict(plain.state_dict())
    problem = random_quadratics(2, 4, seed=3, dtype=torch.float64)
    x, g = problem.x0, problem.grad(problem.x0)
    state = plain.init(x, g)
    for k in range(5):
        p, q = x - state.x_prev, g - state.g_prev
        scale = plain._scale(p, q)
        held = plain._features(state._replace(count=min(k, 2)), x, g, p, q, scale)
        assert_close(capped._features(state, x, g, p, q, scale), held)
        if k <= 2:
            assert_close(plain._features(state, x, g, p, q, scale), held)  # inside the horizon: no change
        x_next, state, _ = plain.step(state, x, g)
        x, g = x_next, problem.grad(x_next)
    with pytest.raises(ValueError, match="horizon"):
        LSR1(LSR1Config(cap_step_index=True, global_features=True))


def test_a_shipped_model_loaded_with_its_step_index_held_changes_only_past_its_training_horizon():
    from lsr1 import pretrained

    held = pretrained.load("mix_lbfgs", dtype=torch.float64, cap_step_index=True)  # meta-trained on K = 16 steps
    plain = pretrained.load("mix_lbfgs", dtype=torch.float64)
    assert held.last_trained_step == 15 and plain.last_trained_step is None
    problem = random_quadratics(2, 12, seed=5, dtype=torch.float64)
    a, b = run(held, problem, 20), run(plain, problem, 20)
    # steps 0-15 see the same index; x_17 is the first iterate a held index made
    assert torch.equal(a.values[:17], b.values[:17]) and not torch.equal(a.values[17:], b.values[17:])
    with pytest.raises(ValueError, match="L-SR1 setting"):
        pretrained.load("bfgs_steps_logistic", cap_step_index=True)


def test_paper_penalty_is_equation_8_as_written():
    model = _small(formulation="paper", identity_in_step=True, curvature_scale="secant", lambda_sec=2.0).double()
    problem = random_quadratics(2, 4, seed=8, dtype=torch.float64)
    x0 = problem.x0
    g0 = problem.grad(x0)
    x1, state, _ = model.step(model.init(x0, g0), x0, g0)
    g1 = problem.grad(x1)
    penalty, _ = model.meta_penalty(state, x1, g1)
    b_tilde = torch.eye(4, dtype=torch.float64) + torch.einsum("bli,blj->bij", state.buffer, state.buffer)
    expected = (x1 - x0 - torch.einsum("bij,bj->bi", b_tilde, g1 - g0)).pow(2).sum(-1)
    assert_close(penalty, 2.0 * expected)


VARIANTS = [
    dict(),  # the paper's
    dict(eval_norm="problem"),
    dict(
        formulation="project",
        identity_in_step=True,
        input_scaling="rms",
        curvature_scale="secant",
        vector_norm="sqrt_dim",
        global_features=True,
        gamma2=1.0,
    ),
]


@pytest.mark.parametrize("options", VARIANTS)
def test_a_problem_takes_the_same_steps_alone_and_inside_any_batch(options):
    """Evaluation never couples problems: each problem's trajectory in a batch of mixed problems equals its
    trajectory alone, to float rounding."""
    from lsr1.meta import run

    torch.manual_seed(0)
    model = _small(**options).double()
    model.train()  # move the running statistics away from their initial values first
    for seed in range(3):
        run_problem = random_quadratics(16, 6, seed=seed, dtype=torch.float64)
        model.step(model.init(run_problem.x0, run_problem.grad(run_problem.x0)), run_problem.x0, run_problem.grad(run_problem.x0))
    batch = random_quadratics(6, 6, seed=21, dtype=torch.float64)
    h = batch.h.clone()
    h[::2] *= 5.0  # mixed scales: a batch statistic would differ from each problem's own
    mixed = Quadratic(h, batch.b, 3.0 * batch.x0)
    together = run(model, mixed, 8).iterates
    assert torch.isfinite(together).all()
    for i in range(mixed.batch_size):
        alone = run(model, mixed.select(slice(i, i + 1)), 8).iterates
        assert_close(alone[:, 0], together[:, i], rtol=1e-9, atol=1e-12)


def test_frozen_problems_are_left_out_of_the_training_statistics():
    """In training, a problem the divergence guard froze (active 0) does not move BatchNorm's statistics:
    the live problems step exactly as they would without it, whatever its state holds."""
    torch.manual_seed(1)
    model = _small(input_scaling="rms", global_features=True).double().train()
    problem = random_quadratics(4, 5, seed=3, dtype=torch.float64)
    x, g = problem.x0, problem.grad(problem.x0)
    state = model.with_active(model.init(x, g), torch.tensor([True, False, True, True]))
    x_wild = x.clone()
    x_wild[1] = 1e30
    ours, _, _ = model.step(state, x_wild, g)
    live = [0, 2, 3]
    reference, _, _ = model.step(model.init(x[live], g[live]), x[live], g[live])
    assert_close(ours[live], reference)


def test_unroll_marks_frozen_problems_inactive_in_the_state():
    from lsr1.meta import unroll

    problem = random_quadratics(3, 4, seed=2, dtype=torch.float64)
    h = problem.h.clone()
    h[2] *= 1e6  # diverges at once under a step of gamma1 = 0.4 and unit curvature scale
    model = _small(identity_in_step=True).double()
    result = unroll(model, Quadratic(h, problem.b, problem.x0), 4, divergence_guard=10.0)
    assert result.info["diverged"][-1].tolist() == [0.0, 0.0, 1.0]
    assert result.state.active.tolist() == [1.0, 1.0, 0.0]


def test_a_non_finite_step_under_the_line_search_freezes_its_problem_at_its_iterate():
    from lsr1.meta import unroll

    model = _small(identity_in_step=True).double()
    problem = random_quadratics(3, 4, seed=2, dtype=torch.float64)
    step = model.step

    def poisoned(state, x, g):  # the step of problem 2 is NaN: the search keeps it at x, the guard freezes it
        x_next, state, info = step(state, x, g)
        return x_next.index_fill(0, torch.tensor([2]), float("nan")), state, info

    model.step = poisoned
    result = unroll(Backtracked(model), problem, 3, divergence_guard=10.0, keep_iterates=True)
    assert result.info["diverged"][-1].tolist() == [0.0, 0.0, 1.0] and result.state.active.tolist() == [1.0, 1.0, 0.0]
    assert torch.isfinite(result.iterates).all() and torch.equal(result.iterates[-1, 2], problem.x0[2])
    assert (result.values[-1, :2] < result.values[0, :2]).all()


def test_mixed_dimension_training_batches_and_validation_dimension():
    from lsr1.config import TaskConfig
    from lsr1.tasks import problem_set

    task = TaskConfig(dim=2, train_dims=[2, 5, 9], val_dim=7)
    assert [problem_set(task, "train", i).dim for i in range(4)] == [2, 5, 9, 2]
    assert problem_set(task, "val").dim == 7 and problem_set(task, "test").dim == task.test_dim


def test_a_mix_of_families_in_training_batches_with_validation_on_the_named_task():
    from lsr1.config import ConfigError, TaskConfig
    from lsr1.tasks import MLPRegression, Quadratic, problem_set
    from lsr1.tasks.convex import LeastSquares, Logistic

    task = TaskConfig(train_tasks=["quadratic", "least_squares", "logistic", "mlp"], train_dims=[3, 6, 20], meta_objective="log_gap")
    batches = [problem_set(task, "train", i) for i in range(5)]
    assert [type(b) for b in batches] == [Quadratic, LeastSquares, Logistic, MLPRegression, Quadratic]
    assert [b.dim for b in batches] == [3, 6, 20, 13, 6]  # the MLP nearest 3 parameters has 2 hidden units: 13
    assert isinstance(problem_set(task, "val"), Quadratic)
    for batch in batches[1:4]:  # every family's meta-loss term is log10 of a relative gap or loss: 0 at x0
        start = batch.x0
        assert torch.allclose(batch.meta_objective(start, batch.value(start)), torch.zeros(len(start)), atol=1e-6)
    with pytest.raises(ConfigError, match="log_gap"):
        TaskConfig(train_tasks=["quadratic", "logistic"])
    with pytest.raises(ConfigError, match="train_tasks"):
        TaskConfig(train_tasks=["rosenbrock"], meta_objective="value")


def test_old_batch_wide_evaluation_is_refused_with_the_reason():
    from lsr1.config import ConfigError

    with pytest.raises(ConfigError, match="problem.*running"):
        LSR1Config(eval_norm="batch")


@pytest.mark.parametrize("name", sorted(p.stem for p in (Path(__file__).parents[1] / "lsr1" / "weights").glob("*.pt")))
def test_every_shipped_model_loads_and_steps_finitely_on_its_test_problems(name):
    from lsr1 import pretrained
    from lsr1.checkpoint import config_of, load_checkpoint
    from lsr1.tasks import problem_set

    config = config_of(load_checkpoint(pretrained.WEIGHTS_DIR / f"{name}.pt"))
    test = problem_set(config.task, "test", dtype=torch.float64)
    result = run(pretrained.load(name, dtype=torch.float64), test, 5)
    assert torch.isfinite(result.values).all()


@pytest.mark.parametrize("name", ["quadratic", "quadratic_noproj", "mix", "mix_lbfgs", "mix_lbfgs_long", "quadratic_official"])
def test_a_shipped_quadratic_model_says_how_it_was_trained(name):
    from lsr1 import pretrained

    assert "trained_with" in pretrained.info(name) and "command" in pretrained.info(name)


def test_lbfgs_memory_makes_the_identity_part_of_b_the_lbfgs_inverse_hessian_of_the_measured_steps():
    from lsr1.optim.lbfgs import two_loop

    options = dict(identity_in_step=True, curvature_scale="secant", lbfgs_memory=3)
    model = _small(**options).double().eval()
    problem = random_quadratics(4, 6, seed=2, dtype=torch.float64)
    x, g = problem.x0, problem.grad(problem.x0)
    state = model.init(x, g)
    steps = []
    for k in range(5):
        x_next, state, _ = model.step(state, x, g)
        if k == 0:  # (x_0, g_0) is not a step: nothing measured yet, so the identity part is s I
            assert int(torch.count_nonzero(state.pair_rho)) == 0
            assert_close(state.d, precondition(state.buffer, g, state.scale))
        x, g = x_next, problem.grad(x_next)
        steps.append(x - state.x_prev)
    # the last three steps taken are the memory (every step passes the curvature test on these PD quadratics)
    assert_close(state.pair_p, torch.stack(steps[-4:-1], dim=1))
    u = torch.randn(4, 6, dtype=torch.float64)
    assert_close(model._operator(state.buffer, state.pairs, state.scale, u), precondition(state.buffer, u, 0.0) + two_loop(state.pairs, u))
    assert_close(model._operator(torch.zeros_like(state.buffer), state.pairs, state.scale, u), two_loop(state.pairs, u))


def test_lbfgs_memory_needs_the_identity_in_the_step():
    with pytest.raises(ValueError, match="identity_in_step"):
        LSR1Config(lbfgs_memory=4, identity_in_step=False)


def test_line_search_armijo_shortens_every_step_in_the_driver_and_keeps_the_meta_gradient_of_the_direction():
    from lsr1.config import ConfigError, MetaConfig
    from lsr1.meta import unroll
    from lsr1.optim import armijo_step

    options = dict(identity_in_step=True, curvature_scale="secant", lbfgs_memory=3, gamma1=2.0)  # long steps
    torch.manual_seed(0)
    model = _small(**options).double()
    searched = Backtracked(model)
    problem = random_quadratics(4, 6, seed=3, dtype=torch.float64)
    # evaluation: the iterates of the learner's steps, each shortened by the one Armijo search, written out
    ours = run(searched, problem, 6)
    x, f, g = problem.x0, problem.value(problem.x0), problem.grad(problem.x0)
    state, iterates, evaluations = model.eval().init(x, g), [x], []
    with torch.no_grad():
        for _ in range(6):
            proposal, state, _ = model.step(state, x, g)
            x, search = armijo_step(problem, x, f, g, proposal)
            state, f, g = model.with_step_length(state, search.t), search.f, search.g
            iterates.append(x)
            evaluations.append(search.evaluations.double())
    assert torch.equal(ours.iterates, torch.stack(iterates))
    assert torch.equal(ours.info["evaluations"], torch.stack(evaluations)) and (ours.info["evaluations"] >= 1).all()
    assert (ours.values[1:] <= ours.values[:-1]).all() and (ours.info["step_length"] < 1).any()
    # f and its gradient at the accepted point come from the search: one gradient per step, none twice
    grads = []
    counting = copy.copy(problem)
    counting.grad = lambda x: grads.append(1) or problem.grad(x)
    run(searched, counting, 6)
    assert len(grads) == 1 + 6
    # training: the step length is a statistic, the direction carries the meta-gradient; the divergence guard
    # reads f at the accepted point from the search: batched calls for f(x_0), each round of trials, and
    # each recorded f(x_k)
    model.train()
    values = []
    counting.value = lambda x: values.append(1) or problem.value(x)
    result = unroll(searched, counting, 3, divergence_guard=1e6)
    assert len(values) == 1 + int(result.info["evaluations"].amax(-1).sum()) + 3
    result.values[1:].mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
    assert model.vector_generator.fc2.weight.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match="line_search"):
        MetaConfig(line_search="wolfe")
    with pytest.raises(ConfigError, match="lsr1.line_search moved to meta.line_search"):
        load_config(None, ["lsr1.line_search=armijo"])


def test_after_a_shortened_step_the_applied_penalty_measures_the_step_taken():
    model = _small(identity_in_step=True, curvature_scale="secant", formulation="project", lambda_sec=1.0).double().eval()
    problem = random_quadratics(3, 5, seed=4, dtype=torch.float64)
    x, g = problem.x0, problem.grad(problem.x0)
    proposal, state, _ = model.step(model.init(x, g), x, g)
    t = torch.tensor([1.0, 0.5, 0.1], dtype=torch.float64)
    short = x + t.unsqueeze(-1) * (proposal - x)
    shortened = model.with_step_length(state, t)
    penalty, _ = model.meta_penalty(shortened, short, problem.grad(short))
    q = problem.grad(short) - g
    expected = applied_secant_residual(state.buffer, state.alpha * t.unsqueeze(-1), state.scale, short - x, q)
    assert_close(penalty, expected)
    untaken, _ = model.meta_penalty(state, short, problem.grad(short))
    assert torch.equal(penalty[0], untaken[0]) and not torch.isclose(penalty[1:], untaken[1:]).any()


def test_a_step_the_search_did_not_take_passes_no_gradient_through_its_scaled_inputs():
    """After t = 0 a problem's p is 0; its RMS-scaled input must be 0 with no gradient, not 0 / tiny, whose
    gradient (1 / tiny times the upstream one) overflowed the meta-gradient in HMR meta-training."""
    torch.manual_seed(0)
    model = _small(identity_in_step=True, curvature_scale="secant", input_scaling="rms", global_features=True)
    problem = random_quadratics(3, 5, seed=1)
    x0 = problem.x0
    state = model.init(x0, problem.grad(x0))
    x1, state, _ = model.step(state, x0, problem.grad(x0))
    x = x1.detach().clone()
    x[1] = state.x_prev[1]  # problem 1 did not move: p = 0
    x.requires_grad_(True)
    x_next, _, _ = model.step(state, x, problem.grad(x.detach()))
    (grad,) = torch.autograd.grad(x_next.sum(), x)
    assert torch.isfinite(grad).all()
    assert grad[1].abs().max() < 1e3 * grad[[0, 2]].abs().max()
