import pytest
from ray import tune

from lsr1.config import config_to_dict, load_config
from pipeline.spaces import SpaceError, check_values, grid_size, load_space, to_tune, with_values


@pytest.mark.parametrize(
    ("name", "preset"), [("smoke", "smoke"), ("quadratic", "quadratic"), ("hmr", "hmr"), ("bfgs_steps", "bfgs_steps_logistic")]
)
def test_shipped_spaces_load_and_fit_their_preset(name, preset):
    space = load_space(f"tune_spaces/{name}.yaml")
    check_values(space, config_to_dict(load_config(f"configs/{preset}.yaml")))
    samplers = to_tune(space)
    assert set(samplers) == set(space)


def test_every_sampler_maps_to_ray_tune(tmp_path):
    path = tmp_path / "all.yaml"
    path.write_text(
        "lsr1.lambda_sec: {loguniform: [0.1, 10]}\nlsr1.gamma2: {uniform: [0.001, 0.002]}\nmeta.seed: {randint: [0, 5]}\n"
        "lsr1.buffer_size: {choice: [2, 4]}\nmeta.unroll_steps: {grid: [4, 8, 16]}\n"
    )
    space = load_space(path)
    samplers = to_tune(space)
    assert isinstance(samplers["lsr1.lambda_sec"], tune.search.sample.Float)
    assert isinstance(samplers["meta.seed"], tune.search.sample.Integer)
    assert isinstance(samplers["lsr1.buffer_size"], tune.search.sample.Categorical)
    assert samplers["meta.unroll_steps"] == {"grid_search": [4, 8, 16]}
    assert grid_size(space) == 3


@pytest.mark.parametrize(
    "text, message",
    [
        ("lsr1.bufer_size: {choice: [2]}", r"unknown config key 'lsr1.bufer_size'"),
        ("lsr1.buffer_size: {choose: [2]}", "unknown sampler 'choose'"),
        ("lsr1.lambda_sec: {loguniform: [0, 10]}", "loguniform needs low > 0"),
        ("lsr1.lambda_sec: {uniform: [5, 1]}", "low < high"),
        ("lsr1.lambda_sec: {uniform: [1]}", r"needs \[low, high\]"),
        ("meta.seed: {randint: [0.5, 3]}", "randint needs integers"),
        ("lsr1.buffer_size: {choice: []}", "non-empty list"),
        ("lsr1.buffer_size: 4", "expected one sampler"),
        ("- just a list", "non-empty mapping"),
        ("a: [unclosed", "not valid YAML"),
    ],
)
def test_errors_name_the_file_and_the_key(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text + "\n")
    with pytest.raises(SpaceError, match="bad.yaml") as err:
        load_space(path)
    assert err.match(message)


def test_values_are_checked_against_the_config(tmp_path):
    path = tmp_path / "wrong.yaml"
    path.write_text("lsr1.buffer_size: {choice: [4, 0]}\n")
    with pytest.raises(SpaceError, match=r"wrong.yaml: lsr1.buffer_size: value 0"):
        check_values(load_space(path), config_to_dict(load_config("configs/smoke.yaml")), path)
    config = with_values(config_to_dict(load_config("configs/smoke.yaml")), {"lsr1.buffer_size": 3, "meta.lr": 0.01})
    assert config.lsr1.buffer_size == 3 and config.meta.lr == 0.01
