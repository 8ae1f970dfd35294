"""The drop-in comparison: LearnedSR1 against best-of-grid Adam on the held-out problems (lsr1.dropin)."""

import math

import pytest
import torch

from lsr1.experiments import dropin


def test_every_held_out_problem_builds_the_same_finite_model_each_time():
    names = [p.name for p in dropin.problems()]
    assert len(names) == len(set(names)) == 18
    for problem in dropin.problems():
        (model_a, loss_a), (model_b, loss_b) = problem.build(), problem.build()
        assert math.isfinite(float(loss_a().detach())) and float(loss_a().detach()) == float(loss_b().detach())
        assert all(torch.equal(p, q) for p, q in zip(model_a.parameters(), model_b.parameters()))


def test_the_validation_split_has_the_same_problems_from_other_seeds():
    test, validation = dropin.problems("test"), dropin.problems("validation")
    assert [p.name for p in test] == [p.name for p in validation]
    for a, b in zip(test, validation):  # other data (logistic regression starts at log 2 on any): other gradients
        gradients = [
            torch.cat([g.flatten() for g in torch.autograd.grad(loss(), list(model.parameters()))])
            for model, loss in (a.build(), b.build())
        ]
        assert not torch.allclose(*gradients)
    with pytest.raises(ValueError, match="split"):
        dropin.problems("train")


def test_learned_sr1_gets_exactly_the_budget_line_search_included():
    problem = dropin.problems()[0]  # least squares: the first step's line search backtracks
    start = float(problem.build()[1]())
    for budget in (1, 2, 7, 12):
        final, calls = dropin.run_learned(problem, "quadratic", evaluations=budget)
        assert calls == budget
        assert final <= start


def test_compare_reports_a_winner_per_problem_and_adam_lowers_the_loss():
    rows = dropin.compare("quadratic", evaluations=5, progress=False)
    assert len(rows) == 18
    for row in rows:
        assert row["winner"] in ("LearnedSR1", "tie", "Adam")
        assert row["adam"] <= row["start"]
        assert row["adam_lr"] in dropin.ADAM_LRS
        # the ablation and L-BFGS, each against the same budget: neither may end above the start
        assert row["ablation"] <= row["start"] and row["lbfgs"] <= row["start"]
        assert row["vs_ablation"] in ("ours", "tie", "theirs") and row["vs_lbfgs"] in ("ours", "tie", "theirs")
        expected = "tie" if abs(row["learned_sr1"] - row["ablation"]) <= dropin.TIE * abs(row["ablation"]) else None
        assert expected is None or row["vs_ablation"] == expected
