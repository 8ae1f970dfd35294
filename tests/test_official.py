"""The authors' L-SR1 step, ours (lsr1.learned.official) against a fixture made by running theirs
(tests/data/official_lsr1/README.md says how): every step's update, B~_old dg and step sizes to 1e-10, in eval
mode and in training mode with dropout off (BatchNorm's batch statistics pooled over B*D rows, as theirs)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from lsr1.config import LSR1Config
from lsr1.learned import LSR1, without_learned_terms
from lsr1.learned.official import SAFE_NORM, OfficialLSR1
from lsr1.pretrained import from_official
from lsr1.tasks import random_quadratics
from tests.helpers import assert_close

FIXTURE = Path(__file__).parent / "data" / "official_lsr1"


def _fixture() -> tuple[dict[str, torch.Tensor], dict[str, np.ndarray]]:
    weights = np.load(FIXTURE / "state_dict.npz", allow_pickle=False)
    recorded = np.load(FIXTURE / "trajectories.npz", allow_pickle=False)
    return {k: torch.from_numpy(weights[k]) for k in weights.files}, {k: recorded[k] for k in recorded.files}


def _loaded() -> tuple[OfficialLSR1, dict[str, np.ndarray]]:
    state_dict, recorded = _fixture()
    model = from_official(state_dict, alpha1=float(recorded["alpha1"]), alpha2=float(recorded["alpha2"]), buffer_size=int(recorded["L"]))
    return model, recorded


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_every_step_reproduces_the_authors_module(mode):
    """Each step is fed their recorded iterate and gradient (their eval trajectory renormalises tiny vectors,
    which would amplify rounding 600-fold if the trajectories ran freely), so each compares one call."""
    model, recorded = _loaded()
    if mode == "train":
        model.train()
        for module in model.modules():  # the fixture's training run had dropout off
            if isinstance(module, torch.nn.Dropout):
                module.eval()
    xs, gs = torch.from_numpy(recorded[f"{mode}_x"]), torch.from_numpy(recorded[f"{mode}_g"])
    state = model.init(xs[0], gs[0])
    with torch.no_grad():
        for k in range(gs.shape[0]):
            _, secant = model.meta_penalty(state, xs[k], gs[k])  # their secant term of call k: the step that led to x_k
            x_next, state, info = model.step(state, xs[k], gs[k])
            assert_close(x_next - xs[k], torch.from_numpy(recorded[f"{mode}_update"][k]), what=f"{mode} update {k}")
            assert_close(state.buffer[:, -1], torch.from_numpy(recorded[f"{mode}_v"][k]), what=f"{mode} v {k}")
            assert_close(info["step_size"], torch.from_numpy(recorded[f"{mode}_lr"][k]).mean(-1), what=f"{mode} lr {k}")
            b_old = torch.from_numpy(recorded[f"{mode}_bkdg"][k])
            dx = torch.from_numpy(recorded[f"{mode}_dx"][k])
            assert_close(secant["secant_residual"], (b_old - dx).pow(2).mean(-1), what=f"{mode} secant {k}")
    if mode == "train":  # momentum 0.1, one update per call, over the pooled rows
        after = np.load(FIXTURE / "train_bn_after.npz", allow_pickle=False)
        ours = {k: v for k, v in model.state_dict().items()}
        for key in after.files:
            mine = key.replace("get_v.mlp.", "vector_generator.").replace("get_lr.mlp.", "lr_generator.").replace("enc.", "encoder.", 1)
            assert_close(ours[mine].double(), torch.from_numpy(after[key]).double(), what=key)


def test_the_identity_is_in_the_operator_until_the_buffer_is_full_and_the_result_has_the_length_of_its_input():
    model = OfficialLSR1(buffer_size=3).double()
    u = torch.randn(2, 6, dtype=torch.float64)
    buffer = torch.randn(2, 3, 6, dtype=torch.float64)
    assert torch.equal(model.operator(buffer, 0, u), u)  # nothing pushed yet: u as it is
    low_rank = torch.einsum("bld,bl->bd", buffer, torch.einsum("bld,bd->bl", buffer, u))
    for pushed, y in ((2, u + low_rank), (3, low_rank), (7, low_rank)):
        got = model.operator(buffer, pushed, u)
        assert_close(got, y * u.norm(dim=-1, keepdim=True) / y.norm(dim=-1, keepdim=True))
        assert_close(got.norm(dim=-1), u.norm(dim=-1))


def test_a_vanishing_operator_gives_no_step_where_theirs_gives_nan():
    """Their one deviation we make on purpose (SAFE_NORM): y = 0 once the identity is gone."""
    model = OfficialLSR1(buffer_size=2).double()
    u = torch.randn(1, 4, dtype=torch.float64)
    orthogonal = torch.zeros(1, 2, 4, dtype=torch.float64)
    assert torch.equal(model.operator(orthogonal, 2, u), torch.zeros_like(u)) and SAFE_NORM > 0


def test_the_loader_names_the_keys_that_do_not_fit(tmp_path):
    state_dict, _ = _fixture()
    with pytest.raises(ValueError, match=r"missing \['enc.fc2.bias'\], unexpected \['enc.fc2.biass'\]"):
        from_official(
            {("enc.fc2.biass" if k == "enc.fc2.bias" else k): v for k, v in state_dict.items()}, alpha1=0.4, alpha2=0.001, buffer_size=4
        )
    checkpoint = tmp_path / "lsr1.ckpt"  # their Lightning checkpoint: one optimizer per prefix
    torch.save({"state_dict": {f"pose_upd_net.{k}": v for k, v in state_dict.items()}}, checkpoint)
    pose = from_official(checkpoint, alpha1=0.1, alpha2=0.001, buffer_size=4, prefix="pose_upd_net")
    assert torch.equal(pose.encoder.fc1.weight, state_dict["enc.fc1.weight"])
    with pytest.raises(ValueError, match="no keys under 'shape_upd_net'.*pose_upd_net"):
        from_official(checkpoint, alpha1=0.1, alpha2=0.001, buffer_size=4, prefix="shape_upd_net")


def test_without_learned_terms_the_authors_step_is_gradient_descent_at_alpha1():
    model, recorded = _loaded()
    plain = without_learned_terms(model)
    problem = random_quadratics(3, 5, seed=4, dtype=torch.float64)
    x, g = problem.x0, problem.grad(problem.x0)
    state = plain.init(x, g)
    with torch.no_grad():
        for _ in range(2 * plain.buffer_size):  # past the point where their operator drops the identity
            x_next, state, _ = plain.step(state, x, g)
            assert_close(x_next, x - float(recorded["alpha1"]) * g)
            x, g = x_next, problem.grad(x_next)
    assert model.learned_terms and plain.encoder is model.encoder  # the original is untouched, the weights shared


def test_without_learned_terms_ours_steps_gamma1_times_its_base_operator():
    """The project's formulation with the L-BFGS operator: v = 0 and alpha = gamma1 leave x - gamma1 H g, H the
    L-BFGS inverse Hessian of the measured pairs (s I before the first), as L-BFGS's own two-loop gives it."""
    from lsr1.optim.lbfgs import empty_memory, lbfgs_memory_update, two_loop

    model = without_learned_terms(LSR1(LSR1Config(hidden_dim=8, buffer_size=2, lbfgs_memory=3)).double().eval())
    problem = random_quadratics(2, 6, seed=1, dtype=torch.float64)
    x, g = problem.x0, problem.grad(problem.x0)
    state, pairs = model.init(x, g), empty_memory(x, 3)
    x_prev, g_prev = torch.zeros_like(x), torch.zeros_like(g)
    with torch.no_grad():
        for k in range(6):
            p, q = x - x_prev, g - g_prev
            if k > 0:
                pairs, _ = lbfgs_memory_update(pairs, p, q)
            s = (p * q).sum(-1, keepdim=True).abs() / q.pow(2).sum(-1, keepdim=True)
            base = torch.where(pairs.rho[:, -1:] > 0, two_loop(pairs, g), s * g)
            x_next, state, info = model.step(state, x, g)
            assert_close(x_next, x - model.gamma1 * base, what=f"step {k}")
            assert torch.count_nonzero(info["v_norm"]) == 0
            x_prev, g_prev, x, g = x, g, x_next, problem.grad(x_next)


def test_the_authors_problems_start_in_their_box_and_singular_draws_are_redrawn_and_counted():
    from lsr1.tasks import official_quadratics
    from lsr1.tasks.quadratic import OFFICIAL_BOX

    problem = official_quadratics(20000, 2, seed=1)  # 20 000 draws at D = 2 meet float32-singular ones
    assert problem.redrawn > 0 and problem.batch_size == 20000
    assert bool((torch.linalg.inv_ex(problem.h).info == 0).all()) and torch.isfinite(problem.x_star).all()
    assert float(problem.x0.abs().max()) <= OFFICIAL_BOX
    assert torch.equal(official_quadratics(64, 2, seed=1).x0, official_quadratics(64, 2, seed=1).x0)  # seeded


def test_the_preset_trains_their_module_on_their_meta_loss():
    """configs/quadratic_official.yaml's meta-loss is theirs: the mean of f over x_0..x_{K-1} plus 10 times
    the sum of the secant terms of the steps that produced x_1..x_{K-1}, over K (their k = 0 secant term is a
    constant and left out), written out here step by step."""
    from lsr1.config import load_config
    from lsr1.learners import make_learner
    from lsr1.meta import MetaLoss
    from lsr1.tasks import problem_set

    config = load_config("configs/quadratic_official.yaml", ["task.batch_size=6"])
    torch.manual_seed(0)
    model = make_learner(config).double()
    assert isinstance(model, OfficialLSR1) and (model.buffer_size, model.alpha1, model.secant_weight) == (4, 0.4, 10.0)
    for module in model.modules():  # dropout off, so that the two passes see the same network
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    problem = problem_set(config.task, "train", 0, dtype=torch.float64)
    meta = config.meta
    loss, _ = MetaLoss(model, meta.unroll_steps, divergence_guard=meta.divergence_guard, scored=meta.scored, discount=meta.discount)(
        problem
    )
    x = problem.x0
    g = problem.grad(x)
    state, values, secants = model.init(x, g), [], []
    for k in range(meta.unroll_steps):
        values.append(problem.value(x).mean())
        if k > 0:
            secants.append(model.meta_penalty(state, x, g)[0].mean())
        x, state, _ = model.step(state, x, g)
        g = problem.grad(x.detach())
    expected = torch.stack(values).mean() + torch.stack(secants).sum() / meta.unroll_steps
    assert_close(loss, expected)


def test_a_trained_official_module_changes_its_buffer_size_one_way_and_shares_its_weights():
    model = OfficialLSR1(buffer_size=4).double().eval()
    longer = model.with_settings(buffer_size=6)
    assert longer.buffer_size == 6 and model.buffer_size == 4 and longer.encoder is model.encoder
    problem = random_quadratics(3, 5, seed=0, dtype=torch.float64)
    x, g = problem.x0, problem.grad(problem.x0)
    state = longer.init(x, g)
    with torch.no_grad():
        for _ in range(5):  # five vectors pushed: the identity is still in L = 6's operator, no longer in L = 4's
            x, state, _ = longer.step(state, x, g)
            g = problem.grad(x)
    assert state.buffer.shape[1] == 6 and state.pushed == 5
    with pytest.raises(ValueError, match="buffer_size"):
        model.with_settings(buffer_size=0)


def test_bfloat16_networks_are_opt_in_and_step_close_to_float32():
    model = OfficialLSR1(buffer_size=2, alpha1=0.1).eval()
    lowered = model.with_settings(network_dtype=torch.bfloat16)
    assert model.network_dtype is None and lowered.encoder is model.encoder
    problem = random_quadratics(16, 12, seed=0)
    x, g = problem.x0, problem.grad(problem.x0)
    state = model.init(x, g)
    with torch.no_grad():
        for _ in range(4):  # from the float32 run's states, past the point where the identity drops out
            x_low, _, _ = lowered.step(state, x, g)
            x_next, state, _ = model.step(state, x, g)
            assert x_low.dtype == torch.float32 and not torch.equal(x_low, x_next)
            assert float((x_low - x_next).norm() / (x_next - x).norm()) < 0.05
            x, g = x_next, problem.grad(x_next)
    with pytest.raises(ValueError, match="bfloat16"):
        model.with_settings(network_dtype=torch.float16)


def test_the_side_by_side_scores_their_module_and_ours_each_beside_its_ablation(tmp_path, capsys):
    """`python -m lsr1.experiments.official` on an .npz as their (patched) script writes it and on a checkpoint
    of configs/quadratic_official.yaml: their metric on their validation batch, the gap fraction on fresh
    problems, each module and its ablation (x - alpha1 g: the same for both, they share alpha1) and L-BFGS."""
    import json

    from lsr1.checkpoint import save_checkpoint
    from lsr1.config import config_to_dict, load_config
    from lsr1.experiments.official import main
    from lsr1.pretrained import _their_key
    from lsr1.tasks import official_quadratics

    torch.manual_seed(0)
    theirs, ours = OfficialLSR1(), OfficialLSR1()
    batch = official_quadratics(4, 2, seed=5)
    arrays = {_their_key(k): v.numpy() for k, v in theirs.state_dict().items()}
    arrays |= {"val_H": batch.h.numpy(), "val_b": batch.b.numpy(), "val_x0": batch.x0.numpy(), "val_x_star": batch.x_star.numpy()}
    np.savez(tmp_path / "theirs_s0.npz", **arrays, history=np.zeros((1, 2)), redrawn=0)
    config = config_to_dict(load_config("configs/quadratic_official.yaml"))
    save_checkpoint(tmp_path / "qo" / "best.pt", {"config": config, "model": ours.state_dict()})
    assert main(["--theirs", str(tmp_path / "theirs_s0.npz"), "--ours", str(tmp_path / "qo" / "best.pt"), "--test-size", "8"]) == 0
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [r["model"] for r in rows] == ["theirs theirs_s0", "theirs theirs_s0 ablation", "ours qo", "ours qo ablation", "L-BFGS (m=4)"]
    assert rows[1]["their val theirs_s0 distance eval"] == rows[3]["their val theirs_s0 distance eval"]  # both x - 0.4 g
    assert all(math.isfinite(v) for r in rows for k, v in r.items() if k != "model")
    assert rows[4]["D=2 test gap eval"] < 1e-6  # L-BFGS solves D = 2 in 20 steps


def test_the_ablation_of_an_hmr_learner_leaves_the_learner_itself_untouched():
    """A copy of a module shares its registry of submodules: the ablation of an initializer + update learner
    must be a new module, or switching its update's terms off would switch off the original's too."""
    from lsr1.learned.initializer import Initializer, WithInitializer

    update = LSR1(LSR1Config(hidden_dim=8, buffer_size=2))
    model = WithInitializer(Initializer(6, torch.zeros(5), 3, hidden=8, dropout=0.0), update).eval()
    plain = without_learned_terms(model)
    assert model.update is update and update.learned_terms and not plain.update.learned_terms
    assert plain.initializer is model.initializer and not plain.training


def test_a_replaced_paper_literal_model_names_its_replacement():
    from lsr1 import pretrained

    with pytest.raises(ValueError, match="'rosenbrock_paper' was replaced by 'rosenbrock_official'.*paper-models-2026-12-08"):
        pretrained.load("rosenbrock_paper")
    assert all(replacement in pretrained.available() for replacement in pretrained.REPLACED.values())
