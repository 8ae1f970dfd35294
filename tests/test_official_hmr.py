"""The authors' HMR protocol (configs/hmr_official.yaml): two of their modules, their truncated meta-gradient and
their meta-loss, with the beta-secant slip and without it."""

import pytest
import torch

from lsr1.config import ConfigError, load_config
from lsr1.learned import without_learned_terms
from lsr1.learned.blocks import Blocks
from lsr1.learned.initializer import WithInitializer
from lsr1.learned.official import OfficialLSR1
from lsr1.learners import make_learner
from lsr1.meta import MetaLoss, run, unroll
from lsr1.tasks import problem_set
from tests.helpers import smoketest_meta_step
from tests.hmr_data import hmr_data  # noqa: F401  (session fixture)

SMALL = ["task.batch_size=8", "lsr1.hidden_dim=16", "hmr.init_hidden_dim=16", "hmr.init_dropout=0", "lsr1.dropout=0"]


def _config(data, *overrides):
    paths = [
        f"hmr.body_dir={data['body']}",
        f"hmr.amass_dir={data['amass']}",
        f"hmr.pw3d_dir={data['3dpw']}",
        f"hmr.cache_dir={data['cache']}",
        "hmr.gender=neutral",
        "hmr.h36m_regressor=null",
        "meta.select_metric=val_pa_mpjpe14_smpl",
    ]
    return load_config("configs/hmr_official.yaml", [*paths, *SMALL, *overrides])


def test_the_preset_builds_their_two_modules_behind_the_initializer(hmr_data):  # noqa: F811
    config = _config(hmr_data)
    model = make_learner(config)
    assert isinstance(model, WithInitializer) and isinstance(model.update, Blocks)
    pose, shape = model.update.parts["pose"], model.update.parts["shape"]
    assert isinstance(pose, OfficialLSR1) and isinstance(shape, OfficialLSR1) and model.update.sizes == [72, 10]
    assert (pose.alpha1, pose.buffer_size) == (0.1, 4)
    assert (pose.secant_weight, shape.secant_weight) == (2.0, 0.0)  # the slip: the pose term twice, no shape term
    own = make_learner(_config(hmr_data, "lsr1.beta_secant=own")).update
    assert (own.parts["pose"].secant_weight, own.parts["shape"].secant_weight) == (1.0, 1.0)
    smoketest_meta_step(model, lambda i: problem_set(config.task, "train", i, hmr=config.hmr), steps=3)
    with pytest.raises(ConfigError, match="beta_secant"):
        _config(hmr_data, "lsr1.beta_secant=theta")


def test_each_block_is_stepped_by_its_own_module_and_the_ablation_is_gradient_descent(hmr_data):  # noqa: F811
    config = _config(hmr_data)
    model = make_learner(config).eval()
    problem = problem_set(config.task, "train", 0, hmr=config.hmr)
    with torch.no_grad():
        x0 = model.initial_point(problem)
        g0 = problem.grad(x0)
        x1, _, _ = model.step(model.init(x0, g0), x0, g0)
        pose = model.update.parts["pose"]
        alone, _, _ = pose.step(pose.init(x0[:, :72], g0[:, :72]), x0[:, :72], g0[:, :72])
    assert torch.equal(x1[:, :72], alone)  # the pose block is the pose module's alone
    plain = run(without_learned_terms(model), problem, 2).iterates
    assert torch.allclose(plain[1], x0 - 0.1 * g0) and model.update.parts["pose"].learned_terms


def test_the_inner_loss_weight_scales_the_gradient_the_modules_see(hmr_data):  # noqa: F811
    problem = problem_set(_config(hmr_data).task, "train", 0, hmr=_config(hmr_data).hmr)
    plain = problem_set(_config(hmr_data).task, "train", 0, hmr=_config(hmr_data, "hmr.inner_loss_weight=1").hmr)
    x = plain.target + 0.1
    assert torch.allclose(problem.grad(x), 7.8125 * plain.grad(x))
    assert torch.equal(problem.evaluation_metrics(x)["reprojection"], plain.evaluation_metrics(x)["reprojection"])
    from lsr1.experiments.evaluate import with_inner_loss_weight

    rescaled = with_inner_loss_weight(problem, 1.0)  # how the evaluation runs a learner trained on another scale
    assert torch.allclose(rescaled.grad(x), plain.grad(x)) and problem.config.inner_loss_weight == 7.8125


def test_their_meta_loss_scores_the_joints_of_x0_alone_and_the_parameters_everywhere(hmr_data):  # noqa: F811
    config = _config(hmr_data)
    problem = problem_set(config.task, "train", 0, hmr=config.hmr)
    x = problem.target + 0.05
    value = problem.value(x)
    later, initial = problem.meta_objective(x, value), problem.meta_objective(x, value, initial=True)
    pose, betas = x[:, :72] - problem.target[:, :72], x[:, 72:] - problem.target[:, 72:]
    assert torch.allclose(later, pose.abs().mean(1) + betas.abs().mean(1))
    assert (initial > later).all()  # the joint terms
    assert float(problem.meta_objective(problem.target, problem.value(problem.target), initial=True).abs().max()) < 1e-6  # float32


@pytest.mark.parametrize("line_search", ["none", "armijo"])  # the search starts from the detached iterate too
def test_the_truncated_unroll_trains_the_initializer_by_its_own_terms_only(hmr_data, line_search):  # noqa: F811
    config = _config(hmr_data)
    torch.manual_seed(0)
    model = make_learner(config).train()
    problem = problem_set(config.task, "train", 0, hmr=config.hmr)
    steps = config.meta.unroll_steps

    def initializer_grads(loss: torch.Tensor) -> list[torch.Tensor]:
        model.zero_grad()
        loss.backward()
        return [p.grad.clone() for p in model.initializer.parameters()]

    def metaloss(truncate: bool) -> torch.Tensor:
        meta = MetaLoss(model, steps, divergence_guard=None, line_search=line_search, last_penalty=False, truncate=truncate)
        return meta(problem)[0]

    x0 = model.initial_point(problem)
    own = initializer_grads(problem.meta_objective(x0, problem.value(x0), initial=True).mean() / (steps + 1))
    truncated, full = initializer_grads(metaloss(True)), initializer_grads(metaloss(False))
    assert all(torch.allclose(a, b, atol=1e-7) for a, b in zip(truncated, own))
    assert not all(torch.allclose(a, b, atol=1e-7) for a, b in zip(full, own))


def test_their_meta_loss_drops_the_last_steps_secant_term_and_divides_by_the_scored_iterates(hmr_data):  # noqa: F811
    config = _config(hmr_data)
    torch.manual_seed(0)
    model = make_learner(config).eval()
    problem = problem_set(config.task, "train", 0, hmr=config.hmr)
    result = unroll(model, problem, 3, meta_objective=True, truncate=True)
    _, parts = MetaLoss(model, 3, divergence_guard=None, last_penalty=False, truncate=True)(problem)
    assert torch.allclose(parts["objective"], result.objectives.mean())
    assert torch.allclose(parts["penalty"], result.penalties[:-1].mean(1).sum() / 4)
    assert float(result.penalties[:-1].abs().sum()) > 0  # the pose modules' secant terms
