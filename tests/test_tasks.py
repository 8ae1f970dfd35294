import pytest
import torch

from lsr1.config import TaskConfig
from lsr1.tasks import Quadratic, diagonal_quadratics, mlp_problems, problem_set, random_quadratics, rastrigin, rosenbrock
from tests.helpers import assert_close, smoketest_task

F64 = torch.float64


@pytest.mark.parametrize(
    "problem",
    [
        random_quadratics(4, 6, seed=0, max_cond=1000, dtype=F64),
        diagonal_quadratics(3, 9, seed=0, cond=100, dtype=F64),
        rosenbrock(3, 7, seed=0, dtype=F64),
        rastrigin(3, 7, seed=0, dtype=F64),
        rosenbrock(3, 7, seed=0, dtype=F64, coefficient=30.0),
        rastrigin(3, 7, seed=0, dtype=F64, amplitude=5.0),
        mlp_problems(3, 20, seed=0, dtype=F64),
    ],
    ids=["quadratic", "diagonal", "rosenbrock", "rastrigin", "rosenbrock_c30", "rastrigin_a5", "mlp"],
)
def test_analytic_gradients_hvps_and_optima(problem):
    smoketest_task(problem)


def test_known_optimal_values():
    assert rosenbrock(2, 5, seed=0, dtype=F64).value(torch.ones(2, 5, dtype=F64)).abs().max() == 0
    assert rastrigin(2, 5, seed=0, dtype=F64).value(torch.zeros(2, 5, dtype=F64)).abs().max() == 0


def test_random_quadratics_follow_appendix_c21():
    q = random_quadratics(64, 3, seed=1, max_cond=1000, dtype=F64)
    assert_close(torch.linalg.matrix_norm(q.h, ord="fro"), torch.ones(64, dtype=F64))
    assert_close(q.b.norm(dim=-1), torch.ones(64, dtype=F64))
    assert (torch.linalg.eigvalsh(q.h) >= 0).all()
    assert torch.linalg.cond(q.h).max() <= 1000
    unfiltered = random_quadratics(512, 3, seed=1, dtype=F64)
    assert torch.linalg.cond(unfiltered.h).max() > 1000  # training batches accept every draw


def test_diagonal_quadratic_has_requested_condition_number():
    q = diagonal_quadratics(2, 50, seed=0, cond=1e4, dtype=F64)
    assert q.diagonal and q.h.max() == 1.0
    assert_close(q.h.max() / q.h.min(), torch.tensor(1e4, dtype=F64), rtol=1e-9, atol=0)
    assert torch.count_nonzero(q.x_star) == 0


def test_problem_sets_are_seeded_and_splits_differ():
    task = TaskConfig(name="quadratic", dim=3, batch_size=8, val_size=4, test_dim=5, test_size=2)
    a, b = problem_set(task, "train", 7), problem_set(task, "train", 7)
    assert torch.equal(a.h, b.h) and torch.equal(a.x0, b.x0)
    assert not torch.equal(problem_set(task, "train", 8).h, a.h)
    assert problem_set(task, "val").x0.shape == (4, 3)
    assert problem_set(task, "test").x0.shape == (2, 5)
    with pytest.raises(ValueError, match="split"):
        problem_set(task, "holdout")


def test_select_takes_a_share_of_the_batch():
    q = random_quadratics(6, 2, seed=0)
    share = q.select(slice(1, None, 2))
    assert torch.equal(share.h, q.h[1::2]) and torch.equal(share.x0, q.x0[1::2])
    assert_close(share.value(share.x0), q.value(q.x0)[1::2])


def test_bad_problem_inputs():
    with pytest.raises(ValueError, match="NaN"):
        Quadratic(torch.ones(1, 2), torch.zeros(1, 2), torch.tensor([[float("nan"), 0.0]]))
    with pytest.raises(ValueError, match="h must be"):
        Quadratic(torch.ones(1, 3), torch.zeros(1, 2), torch.zeros(1, 2))
    with pytest.raises(ValueError, match="N >= 2"):
        rosenbrock(1, 1, seed=0)
    with pytest.raises(ValueError, match="max_cond=1.5 accepted none of 200 random quadratics at N = 20"):
        random_quadratics(2, 20, seed=0, max_cond=1.5)


def test_derived_seeds_depend_on_every_character_of_a_key():
    from lsr1.tasks import derive_seed

    seeds = {derive_seed(0, key) for key in ("quadratic_cond1", "quadratic_cond100", "profiles-test", "profiles-validation")}
    assert len(seeds) == 4
    assert derive_seed(0, "train", 1) != derive_seed(0, "train", 2) != derive_seed(1, "train", 1)
    assert derive_seed(0, "train", 2**40) != derive_seed(0, "train", 0)
