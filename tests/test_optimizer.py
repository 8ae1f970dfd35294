"""lsr1.LearnedSR1, the drop-in torch.optim.Optimizer."""

import inspect

import pytest
import torch
from torch import nn

from lsr1 import LearnedSR1, pretrained


def _regression(dtype=torch.float32):
    torch.manual_seed(0)
    x = torch.randn(128, 6, dtype=dtype)
    y = x @ torch.randn(6, 1, dtype=dtype) + 0.05 * torch.randn(128, 1, dtype=dtype)
    model = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 1)).to(dtype)
    return model, x, y


def _closure(opt, model, x, y):
    def closure():
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    return closure


@pytest.mark.parametrize("name", ["quadratic", "mix", "mix_lbfgs", "mix_lbfgs_long"])
def test_it_fits_a_small_regression_model(name):
    model, x, y = _regression()
    opt = LearnedSR1(model.parameters(), pretrained=name)
    closure = _closure(opt, model, x, y)
    first = float(closure())
    for _ in range(30):
        opt.step(closure)
    assert float(closure()) < 0.2 * first


def test_state_dict_round_trip_continues_identically():
    model, x, y = _regression()
    opt = LearnedSR1(model.parameters(), pretrained="quadratic")
    for _ in range(3):
        opt.step(_closure(opt, model, x, y))
    saved_model = {k: v.clone() for k, v in model.state_dict().items()}
    saved_opt = opt.state_dict()
    for _ in range(2):
        opt.step(_closure(opt, model, x, y))
    expected = [p.detach().clone() for p in model.parameters()]

    model2, _, _ = _regression()
    model2.load_state_dict(saved_model)
    opt2 = LearnedSR1(model2.parameters(), pretrained="quadratic")
    opt2.load_state_dict(saved_opt)
    for _ in range(2):
        opt2.step(_closure(opt2, model2, x, y))
    for a, b in zip(expected, model2.parameters()):
        assert torch.equal(a, b)


def test_float64_parameters_run_the_model_in_float64():
    model, x, y = _regression(torch.float64)
    opt = LearnedSR1(model.parameters(), pretrained=pretrained.load("quadratic"), buffer_size=3)
    opt.step(_closure(opt, model, x, y))
    assert next(opt.model.parameters()).dtype == torch.float64 and opt.model.buffer_size == 3
    assert all(p.dtype == torch.float64 for p in model.parameters())


def test_clear_errors():
    model, x, y = _regression()
    opt = LearnedSR1(model.parameters(), pretrained="quadratic")
    with pytest.raises(RuntimeError, match="closure"):
        opt.step()
    embedding = nn.Embedding(10, 3, sparse=True)
    sparse_opt = LearnedSR1(embedding.parameters(), pretrained="quadratic")

    def sparse_closure():
        sparse_opt.zero_grad()
        loss = embedding(torch.tensor([1, 2])).sum()
        loss.backward()
        return loss

    with pytest.raises(RuntimeError, match="sparse"):
        sparse_opt.step(sparse_closure)
    with pytest.raises(ValueError, match="no pretrained model 'nope'"):
        LearnedSR1(model.parameters(), pretrained="nope")
    with pytest.raises(ValueError, match="line_search"):
        LearnedSR1(model.parameters(), pretrained="quadratic", line_search="wolfe")


def test_the_default_model_is_the_one_meta_trained_on_long_trajectories_of_a_mix_of_families_with_the_lbfgs_operator():
    assert inspect.signature(LearnedSR1).parameters["pretrained"].default == "mix_lbfgs_long"
    config = pretrained.info("mix_lbfgs_long")["config"]
    assert config["task"]["train_tasks"] == ["quadratic", "least_squares", "logistic"] and config["lsr1"]["lbfgs_memory"] == 8
    assert config["meta"]["burn_in"] == 48


def test_a_named_model_holds_its_step_index_at_the_training_horizon_and_a_module_is_used_as_it_is():
    model = torch.nn.Linear(3, 1)
    held = LearnedSR1(model.parameters()).model
    assert held.config.cap_step_index and held.last_trained_step == 63  # meta-trained on up to 48 + 16 steps
    assert LearnedSR1(model.parameters(), pretrained="mix_lbfgs").model.last_trained_step == 15  # K = 16, no burn-in
    as_given = LearnedSR1(model.parameters(), pretrained=pretrained.load("mix_lbfgs")).model
    assert not as_given.config.cap_step_index and as_given.last_trained_step is None


def _counting(closure):
    """The closure, and a list whose one entry counts its calls."""
    calls = [0]

    def counted():
        calls[0] += 1
        return closure()

    return counted, calls


@pytest.mark.parametrize("line_search", ["armijo", None])
def test_max_iter_takes_the_steps_of_repeated_calls_without_evaluating_each_start_twice(line_search):
    """Within one call the line search's accepted evaluation starts the next iteration; repeated calls
    evaluate each start again (without a line search every call evaluates once either way). The same
    iterates in both cases: the closure is deterministic."""
    runs = {}
    for max_iter, calls in ((1, 12), (12, 1)):
        model, x, y = _regression(torch.float64)
        opt = LearnedSR1(model.parameters(), pretrained="mix", line_search=line_search, max_iter=max_iter)
        closure, evaluations = _counting(_closure(opt, model, x, y))
        for _ in range(calls):
            opt.step(closure)
        runs[max_iter] = ([p.detach().clone() for p in model.parameters()], evaluations[0])
    assert all(torch.allclose(a, b, rtol=1e-10, atol=1e-12) for a, b in zip(runs[1][0], runs[12][0]))
    assert runs[12][1] == runs[1][1] - (11 if line_search else 0)


def test_max_eval_bounds_the_closure_calls_of_a_step():
    model, x, y = _regression()
    opt = LearnedSR1(model.parameters(), pretrained="mix", max_iter=100, max_eval=7)
    closure, evaluations = _counting(_closure(opt, model, x, y))
    first = float(closure())
    opt.step(closure)
    assert evaluations[0] == 8 and float(_closure(opt, model, x, y)()) < first  # the first call above, and 7
    with pytest.raises(ValueError, match="max_iter"):
        LearnedSR1(model.parameters(), max_iter=0)
