import math

import torch

from lsr1.config import FORMULATIONS, LSR1Config
from lsr1.experiments.profiles import (
    FAMILIES,
    evaluation_problems,
    hand_designed_solvers,
    performance_ratios,
    profile,
    run_profiles,
    tuning_set,
    write_outputs,
)
from lsr1.learned import LSR1
from lsr1.tasks import rastrigin, rosenbrock


def test_ratios_and_profile_on_a_known_case():
    distances = torch.tensor([[1.0, 2.0, 4.0], [3.0, 3.0, math.inf]], dtype=torch.float64)
    ratios = performance_ratios(distances)
    assert ratios.tolist() == [[1.0, 2.0, 4.0], [1.0, 1.0, math.inf]]
    rho = profile(ratios, torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64))
    assert rho.tolist() == [[1.0, 1.0, 1.0], [0.5, 1.0, 1.0], [0.0, 0.0, 0.5]]


def test_the_test_set_is_30_seeded_problems_apart_from_the_tuning_set():
    problems = evaluation_problems()
    assert len(problems) == 30 and {p.family for p in problems} == set(FAMILIES)
    assert {p.dim for p in problems} == {50, 100, 250, 500, 1000}
    again = evaluation_problems()
    assert all(torch.equal(a.problem.x0, b.problem.x0) for a, b in zip(problems, again))
    tuning = tuning_set()
    assert {p.kind for p in tuning} == {p.kind for p in problems}
    # other functions, not the test functions at other starting points: no shared (family, N), and the
    # functions differ (spectrum, coefficient, amplitude)
    assert not {p.name for p in tuning} & {p.name for p in problems}
    assert not {p.dim for p in tuning} & {p.dim for p in problems}
    assert {p.family for p in tuning}.isdisjoint(FAMILIES)
    by_kind = {p.kind: p.problem for p in tuning}
    x = torch.full((1, 30), 0.3, dtype=torch.float64)
    assert float(by_kind["rosenbrock"].value(x)) != float(rosenbrock(1, 30, 0, dtype=torch.float64).value(x))
    assert float(by_kind["rastrigin"].value(x)) != float(rastrigin(1, 30, 0, dtype=torch.float64).value(x))


def test_profiles_end_to_end_on_a_small_set(tmp_path):
    torch.manual_seed(0)
    models = {size: LSR1(LSR1Config(**{**FORMULATIONS["paper"], "hidden_dim": 16, "buffer_size": size})).double().eval() for size in (2, 4)}
    solvers = {
        "untrained L-SR1": (lambda p, setting: models[4], None),
        "untrained L-SR1, L tuned": (lambda p, size: models[size], lambda kind: (2, 4)),  # as the shipped models' L
        **hand_designed_solvers(),
    }
    problems = evaluation_problems(dims=(50,))
    result = run_profiles(solvers, problems, steps=10, tuning_problems=[p for p in tuning_set() if p.dim == 30])
    assert result.distances.shape == (6, 6) and (result.ratios >= 1.0).all()
    assert set(result.tuning) == {"untrained L-SR1, L tuned", "Adam", "AdaHessian", "GD"}
    for tuned in result.tuning["untrained L-SR1, L tuned"].values():  # the grid value with the best score
        assert set(tuned["scores"]) == {"2", "4"} and tuned["scores"][tuned["chosen"]] == min(tuned["scores"].values())
    taus = torch.logspace(0, 2, 20, dtype=torch.float64)
    write_outputs(result, tmp_path, taus)
    assert {p.name for p in tmp_path.iterdir()} == {"profile.png", "distances.csv", "results.md", "tuning.json"}
    assert "untrained L-SR1" in (tmp_path / "results.md").read_text()


def test_the_shipped_profile_models_load_at_l64_and_step_on_their_family():
    from lsr1 import pretrained
    from lsr1.experiments.profiles import BFGS_STEPS_MODEL, BUFFER_SIZE, LEARNED_MODEL
    from lsr1.meta import run

    problems = {p.kind: p for p in evaluation_problems(dims=(50,))}
    for kind, name in LEARNED_MODEL.items():
        for model_name, size in ((name, BUFFER_SIZE), (name + "_noproj", BUFFER_SIZE), (name + "_official", None)):
            model = pretrained.load(model_name, buffer_size=size, dtype=torch.float64)  # the authors' at its trained L
            assert model.buffer_size == (size or 4) and pretrained.info(model_name)["best_iteration"] > 0
            trajectory = run(model, problems[kind].problem, steps=2)
            assert torch.isfinite(trajectory.values).all(), model_name
    for kind, name in BFGS_STEPS_MODEL.items():  # the second learned optimizer, on the same problems
        trajectory = run(pretrained.load(name, dtype=torch.float64), problems[kind].problem, steps=2)
        assert torch.isfinite(trajectory.values).all() and pretrained.info(name)["meta_iterations"] > 0, name


def test_l_sr1_is_tuned_over_the_general_models_the_lbfgs_memory_and_the_held_step_index():
    from lsr1.experiments.profiles import BUFFER_GRID, BUFFER_SIZE, _models, _shipped, label

    grid = _models("", ("mix", "mix_lbfgs"))("quadratic")
    assert ("quadratic100", 8, None, None) in grid and ("mix", 8, BUFFER_SIZE, None) not in grid  # no L-BFGS operator there
    assert {m for name, size, m, cap in grid if name == "mix_lbfgs"} == {None, BUFFER_SIZE}
    assert {cap for *_, cap in grid} == {None, True}  # every model here has global features
    assert len(grid) == 2 * 4 * len(BUFFER_GRID)
    assert label(("mix_lbfgs", 8, 64, True)) == "mix_lbfgs, L = 8, m = 64, step index held"
    assert label(("mix", 16, None, None)) == "mix, L = 16" and label(0.3) == "0.3"
    model = _shipped(("mix_lbfgs", 8, BUFFER_SIZE, True))
    assert model.buffer_size == 8 and model.config.lbfgs_memory == BUFFER_SIZE and model.encoder.fc1.weight.dtype == torch.float64
    assert model.last_trained_step == 15
