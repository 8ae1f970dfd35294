import pytest
import torch

from lsr1.config import LSR1Config
from lsr1.learned import LSR1, precondition, secant_residual, with_buffer_size
from lsr1.optim.base import fifo_push
from lsr1.tasks import random_quadratics
from tests.helpers import assert_close, smoketest_meta_step, smoketest_optimizer


def _small(**kw) -> LSR1:
    return LSR1(LSR1Config(hidden_dim=16, buffer_size=3, **kw))


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
    a, b = _small().double().eval(), _small(identity_in_step=True).double().eval()
    b.load_state_dict(a.state_dict())
    x0, g0 = torch.randn(2, 4, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)
    xa, _, info = a.step(a.init(x0, g0), x0, g0)
    xb, _, _ = b.step(b.init(x0, g0), x0, g0)
    alpha = a.gamma1 * torch.exp(a.gamma2 * a.lr_generator(a.encoder(torch.stack([x0, x0, g0, g0, g0], -1))).squeeze(-1))
    assert_close(xb, xa - alpha * g0)


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


def test_with_buffer_size_shares_weights():
    model = _small()
    other = with_buffer_size(model, 7)
    assert other.buffer_size == 7 and model.buffer_size == 3
    assert other.encoder is model.encoder
    with pytest.raises(ValueError):
        with_buffer_size(model, 0)


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


def test_last_step_secant_pairs_the_new_buffer_with_the_previous_step():
    model = _small(lambda_sec=2.0, secant_target="last_step").double()
    problem = random_quadratics(3, 4, seed=5, dtype=torch.float64)
    x0 = problem.x0
    g0 = problem.grad(x0)
    state = model.init(x0, g0)
    x1, state, _ = model.step(state, x0, g0)
    penalty, _ = model.meta_penalty(state, x1, problem.grad(x1))
    assert torch.count_nonzero(penalty) == 0  # (p_0, q_0) = (x_0, g_0) is no step
    g1 = problem.grad(x1)
    x2, state, _ = model.step(state, x1, g1)
    penalty, info = model.meta_penalty(state, x2, problem.grad(x2))
    assert_close(info["secant_residual"], secant_residual(state.buffer, x1 - x0, g1 - g0))
    assert_close(penalty, 2.0 * info["secant_residual"])
