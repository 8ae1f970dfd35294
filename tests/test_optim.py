import copy

import pytest
import torch

from lsr1.meta import run
from lsr1.optim import BFGS, LBFGS, SR1, AdaHessian, Adam, Backtracked, GradientDescent, backtracking, strong_wolfe
from lsr1.optim.bfgs import bfgs_update
from lsr1.optim.sr1 import sr1_update
from lsr1.tasks import diagonal_quadratics, random_quadratics, rosenbrock
from tests.helpers import assert_close, smoketest_optimizer

F64 = torch.float64


def _quadratics(batch: int = 6, n: int = 10, seed: int = 0):
    return random_quadratics(batch, n, seed=seed, max_cond=1000, dtype=F64)


@pytest.mark.parametrize(
    "make",
    [
        lambda p: GradientDescent(0.1),
        lambda p: Adam(0.01),
        lambda p: LBFGS(p, memory=4),
        lambda p: LBFGS(p, memory=4, line_search="armijo"),
        lambda p: BFGS(p),
        lambda p: BFGS(p, line_search="fixed", lr=0.5),
        lambda p: SR1(p),
        lambda p: AdaHessian(p),
    ],
    ids=["gd", "adam", "lbfgs-wolfe", "lbfgs-armijo", "bfgs", "bfgs-fixed", "sr1", "adahessian"],
)
def test_every_optimizer_keeps_the_interface(make):
    problem = _quadratics(4, 5)
    smoketest_optimizer(make(problem), problem)


def _oracle_trajectory(torch_opt_cls, problem, steps, **kw):
    x = problem.x0.clone().requires_grad_(True)
    opt = torch_opt_cls([x], **kw)
    xs = []
    for _ in range(steps):
        opt.zero_grad()
        problem.value(x).sum().backward()
        opt.step()
        xs.append(x.detach().clone())
    return torch.stack(xs)


@pytest.mark.parametrize(
    "ours, theirs, kw",
    [
        (lambda: GradientDescent(lr=0.3), torch.optim.SGD, {"lr": 0.3}),
        (lambda: Adam(lr=0.05, betas=(0.8, 0.99), eps=1e-6), torch.optim.Adam, {"lr": 0.05, "betas": (0.8, 0.99), "eps": 1e-6}),
    ],
    ids=["gd-vs-SGD", "adam-vs-Adam"],
)
def test_first_order_optimizers_match_torch_step_for_step(ours, theirs, kw):
    problem = _quadratics(3, 4)
    trajectory = run(ours(), problem, 25).iterates[1:]
    assert_close(trajectory, _oracle_trajectory(theirs, problem, 25, **kw), atol=1e-12, rtol=1e-12)


def _relative_error(result, problem):
    return (result.iterates[-1] - problem.x_star).norm(dim=-1) / problem.x_star.norm(dim=-1)


@pytest.mark.parametrize("method", [LBFGS, BFGS])
def test_quasi_newton_solves_a_10d_quadratic_within_2n_iterations(method):
    """With near-exact line searches (small c2; cubic interpolation is exact on a quadratic) BFGS-type
    methods terminate like conjugate gradients: here within 2N = 20 iterations to 1e-8."""
    problem = _quadratics(8, 10)
    kw = {"memory": 10} if method is LBFGS else {}
    assert _relative_error(run(method(problem, c2=1e-3, **kw), problem, 20), problem).max() < 1e-8


def test_lbfgs_default_searches_converge_on_quadratics():
    """With the usual c2 = 0.9 (as scipy's L-BFGS-B, which needs a similar 30-45 iterations here) the
    accuracy is limited by comparing f values: about sqrt(eps * cond) in x."""
    problem = _quadratics(8, 10)
    for line_search in ("strong_wolfe", "armijo"):
        assert _relative_error(run(LBFGS(problem, memory=10, line_search=line_search), problem, 60), problem).max() < 1e-6


def test_lbfgs_reaches_the_rosenbrock_minimum():
    problem = rosenbrock(4, 2, seed=0, dtype=F64)
    result = run(LBFGS(problem, memory=5), problem, 100)
    assert (result.iterates[-1] - 1.0).abs().max() < 1e-6


def test_quasi_newton_updates_satisfy_the_secant_equation_exactly():
    torch.manual_seed(1)
    n = 6
    a = torch.randn(5, n, n, dtype=F64)
    h = a @ a.transpose(1, 2) + torch.eye(n, dtype=F64)
    s, y = torch.randn(5, n, dtype=F64), torch.randn(5, n, dtype=F64)
    y = torch.where(((s * y).sum(-1) > 0).unsqueeze(-1), y, -y)  # BFGS needs y.s > 0
    updated, ok = sr1_update(h, s, y)
    assert ok.all()
    assert_close(torch.einsum("bij,bj->bi", updated, y), s, atol=1e-10, rtol=1e-10)
    assert_close(updated, updated.transpose(1, 2))
    assert_close(torch.einsum("bij,bj->bi", bfgs_update(h, s, y), y), s, atol=1e-10, rtol=1e-10)


def test_sr1_skips_an_update_with_v_orthogonal_to_y():
    h = torch.eye(2, dtype=F64).unsqueeze(0)
    y = torch.tensor([[1.0, 1.0]], dtype=F64)
    _, ok = sr1_update(h, torch.tensor([[2.0, 0.0]], dtype=F64), y)  # v = s - H y = (1, -1), v . y = 0
    assert not ok.any()
    _, ok = sr1_update(h, torch.tensor([[2.0, 1.0]], dtype=F64), y)  # v = (1, 0), v . y = 1
    assert ok.all()


def test_adahessian_is_a_newton_step_on_diagonal_quadratics():
    """Hutchinson's estimate is exact for a diagonal H, so lr = 1 with tiny eps jumps to the optimum."""
    problem = diagonal_quadratics(3, 20, seed=0, cond=100, dtype=F64)
    result = run(AdaHessian(problem, lr=1.0, eps=1e-15), problem, 1)
    assert result.iterates[-1].abs().max() < 1e-11


def test_line_searches_meet_their_conditions():
    problem = _quadratics(16, 5)
    x = problem.x0
    f0, g0 = problem.value(x), problem.grad(x)
    d = -g0 * torch.rand(16, 1, dtype=F64) * 30  # steps of very different scales
    t0 = torch.ones(16, dtype=F64)
    gtd0 = (g0 * d).sum(-1)
    wolfe = strong_wolfe(problem, x, f0, g0, d, t0)
    assert (wolfe.f <= f0 + 1e-4 * wolfe.t * gtd0).all()
    assert ((wolfe.g * d).sum(-1).abs() <= -0.9 * gtd0 + 1e-12).all()
    assert_close(wolfe.f, problem.value(x + wolfe.t.unsqueeze(-1) * d))
    armijo = backtracking(problem, x, f0, g0, d, t0)
    assert (armijo.f <= f0 + 1e-4 * armijo.t * gtd0).all() and (armijo.t > 0).all()
    assert_close(armijo.g, problem.grad(x + armijo.t.unsqueeze(-1) * d))


def test_optimizer_arguments_are_checked():
    problem = _quadratics(2, 3)
    with pytest.raises(ValueError, match="line_search"):
        LBFGS(problem, line_search="exact")
    with pytest.raises(ValueError, match="memory"):
        LBFGS(problem, memory=0)
    with pytest.raises(ValueError, match="lr"):
        Adam(lr=-1.0)
    with pytest.raises(ValueError, match="NaN"):
        GradientDescent().init(torch.full((1, 2), float("nan")), torch.zeros(1, 2))


def test_backtracking_keeps_a_diverging_step_rule_monotone_and_leaves_good_steps_alone():
    problem = diagonal_quadratics(3, 8, seed=0, cond=100, dtype=torch.float64)  # eigenvalues up to 1
    diverging = run(GradientDescent(3.0), problem, 20).values  # beyond 2 / lambda_max
    assert diverging[-1].min() > diverging[0].max()
    safe = run(Backtracked(GradientDescent(3.0)), problem, 20).values
    assert (safe[1:] <= safe[:-1] + 1e-12).all() and (safe[-1] < safe[0]).all()
    plain, guarded = run(GradientDescent(0.5), problem, 5), run(Backtracked(GradientDescent(0.5)), problem, 5)
    assert torch.equal(plain.values, guarded.values)  # every step of 0.5 already decreases f enough


def test_backtracking_evaluates_f_at_its_trial_points_only():
    problem = diagonal_quadratics(1, 8, seed=0, cond=100, dtype=torch.float64)
    calls = []
    counting = copy.copy(problem)
    counting.value = lambda x: calls.append(1) or problem.value(x)
    result = run(Backtracked(GradientDescent(3.0)), counting, 5)
    # run records f(x_0)..f(x_5), and the driver's search starts from the recorded f(x_0), then evaluates
    # only its trial points (the accepted one's value starts the next search)
    assert len(calls) == 6 + int(result.info["evaluations"].sum())


def test_backtracking_leaves_a_problem_with_a_non_finite_direction_where_it_is_without_evaluating():
    from lsr1.optim import armijo_step

    problem = diagonal_quadratics(3, 4, seed=0, cond=10, dtype=torch.float64)
    x = problem.x0
    f, g = problem.value(x), problem.grad(x)
    proposal = x - g
    proposal[1, 2] = float("nan")
    proposal[2, 0] = float("inf")
    x_next, search = armijo_step(problem, x, f, g, proposal)
    assert torch.equal(x_next[1:], x[1:]) and torch.equal(search.t[1:], torch.zeros(2, dtype=x.dtype))
    assert search.evaluations.tolist()[1:] == [0, 0] and torch.equal(search.f[1:], f[1:]) and torch.equal(search.g[1:], g[1:])
    assert search.t[0] > 0 and search.f[0] < f[0]  # the finite problem beside them takes its step


def test_step_curves_count_the_line_search_evaluations_of_every_step():
    from lsr1.experiments.analysis import step_curves

    problem = random_quadratics(6, 5, seed=3, dtype=torch.float64)
    lbfgs, gd = step_curves(
        problem, {"L-BFGS": lambda part: (LBFGS(part, memory=3), part), "GD": lambda part: (GradientDescent(0.1), part)}, steps=6, chunk=4
    )
    per_step = run(LBFGS(problem, memory=3), problem, 6).info["evaluations"].double().mean(1)
    assert_close(lbfgs.metrics["evaluations"], torch.cat([per_step.new_zeros(1), per_step.cumsum(0)]))
    assert float(lbfgs.metrics["evaluations"][-1]) > 6 and gd.metrics["evaluations"].tolist() == list(range(7))
    from lsr1.experiments.analysis import markdown_table

    assert markdown_table([gd], "evaluations", [0, 1, 6]).splitlines()[-1] == "| GD | 0 | 1 | 6 |"  # spent by step k


def test_a_pair_too_small_to_square_in_float32_is_not_kept_by_the_quasi_newton_memories():
    """Seen in HMR meta-training: a step backtracked to ~1e-9 leaves a y whose y . y underflows to 0; the old
    relative test read both norms as 0, kept the pair, and the recursion's scale (y . s) / (y . y) became Inf."""
    from lsr1.optim.lbfgs import empty_memory, lbfgs_memory_update, two_loop
    from lsr1.optim.quasi_newton import curvature_ok

    s = torch.zeros(2, 4)
    y = torch.zeros(2, 4)
    s[:, 0], y[:, 0] = 3e-9, 2e-28  # y . s = 6e-37 is a normal float32; y . y = 4e-56 is not
    s[1, 1], y[1, 1] = 0.5, 0.25  # a measurable pair beside it
    y[1, 0] = 0.0
    assert curvature_ok(s, y).tolist() == [False, True]
    memory, ok = lbfgs_memory_update(empty_memory(s, 3), s, y)
    assert ok.tolist() == [False, True]
    assert torch.isfinite(two_loop(memory, torch.ones(2, 4))).all()


def test_the_one_armijo_search_halves_or_interpolates_and_gives_up_at_no_move():
    from lsr1.optim import armijo

    trials = []

    def phi(t):  # f along the line: 1 - t + 2 t^2 from f0 = 1, slope -1; Armijo holds for t <= 0.49995
        trials.append(t.clone())
        return 1.0 - t + 2.0 * t * t

    one = torch.ones(2, dtype=torch.float64)
    t, f, evaluations = armijo(phi, one, -one, one * torch.tensor([1.0, 0.25], dtype=torch.float64), shrink="halve")
    assert t.tolist() == [0.25, 0.25] and evaluations.tolist() == [3, 1] and torch.equal(f, 1.0 - t + 2.0 * t * t)
    assert [float(trial[0]) for trial in trials] == [1.0, 0.5, 0.25]
    t, _, evaluations = armijo(phi, one, -one, one, shrink="interpolate")
    assert t[0] == 0.25 and evaluations[0] == 2  # the quadratic through f0, the slope and f(1) is phi itself: its minimiser
    t, f, evaluations = armijo(phi, one, -one, one, max_evals=1)  # no acceptable trial within the budget: stay
    assert t.tolist() == [0.0, 0.0] and torch.equal(f, one) and evaluations.tolist() == [1, 1]
    with pytest.raises(ValueError, match="shrink"):
        armijo(phi, one, -one, one, shrink="third")
