import dataclasses
from pathlib import Path

import pytest

from lsr1.config import (
    FORMULATIONS,
    SWITCHES_TAG,
    ConfigError,
    ExperimentConfig,
    LSR1Config,
    config_from_dict,
    config_to_dict,
    flatten,
    load_config,
)

CONFIGS = sorted(Path("configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_preset_loads(path):
    config = load_config(path)
    assert config.name == path.stem or config.name  # presets name their runs
    assert config_from_dict(ExperimentConfig, config_to_dict(config)) == config  # round trip


def test_the_paper_formulation_sets_the_papers_switches():
    c = load_config("configs/quadratic.yaml", ["lsr1.formulation=paper"])
    assert (c.lsr1.buffer_size, c.meta.unroll_steps, c.lsr1.gamma1, c.lsr1.gamma2, c.lsr1.lambda_sec) == (8, 16, 0.4, 0.001, 100.0)
    assert (c.lsr1.formulation, c.lsr1.identity_in_step, c.lsr1.input_scaling, c.lsr1.curvature_scale) == (
        "paper",
        False,
        "none",
        "none",
    )
    assert (c.task.dim, c.task.batch_size, c.task.val_size, c.task.test_dim, c.task.test_size) == (2, 128, 32, 10, 32)
    assert (c.meta.lr, c.meta.betas, c.meta.weight_decay) == (1e-4, (0.9, 0.999), 0.01)


def test_quadratic_preset_is_the_paper_problem_with_the_projects_formulation():
    ours = load_config("configs/quadratic.yaml")
    assert (ours.task.dim, ours.task.test_dim, ours.task.batch_size, ours.meta.unroll_steps, ours.lsr1.buffer_size) == (2, 10, 128, 16, 8)
    assert ours.lsr1.formulation == "project" and ours.lsr1.identity_in_step and ours.lsr1.curvature_scale == "secant"
    assert ours.meta.iterations == load_config("configs/quadratic_official.yaml").meta.iterations == 400  # as the authors' example


def test_overrides_are_typed():
    c = load_config(
        "configs/smoke.yaml",
        [
            "meta.lr=1e-4",
            "lsr1.identity_in_step=true",
            "meta.grad_clip=none",
            "lsr1.encoder_inputs=[x,g]",
            "meta.betas=[0.8,0.9]",
            "task.max_cond=50",
        ],
    )
    assert c.meta.lr == 1e-4 and c.lsr1.identity_in_step is True and c.meta.grad_clip is None
    assert c.lsr1.encoder_inputs == ["x", "g"] and c.meta.betas == (0.8, 0.9) and c.task.max_cond == 50.0


def test_unknown_key_lists_the_valid_ones():
    with pytest.raises(ConfigError, match=r"lsr1\.bufer_size.*buffer_size"):
        load_config("configs/smoke.yaml", ["lsr1.bufer_size=4"])
    with pytest.raises(ConfigError, match="unknown config key"):
        load_config(None, ["optimiser.lr=1"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("meta.iterations=ten", "expected an integer"),
        ("lsr1.gamma1=-1", "gamma1 must be > 0"),
        ("lsr1.encoder_inputs=[x,z]", "unknown"),
        ("task.name=sphere", "unknown task"),
        ("meta.betas=[0.9]", "expected 2 items"),
        ("lsr1.identity_in_step=maybe", "true or false"),
        ("lsr1.identity_weight=0", "identity_weight=0: this switch was deleted"),
        ("meta.lr", "section.key=value"),
        ("lsr1.vector_norm=l2", "vector_norm must be"),
        ("lsr1.first_scale=zero", "first_scale='zero': this switch was deleted"),
        ("lsr1.formulation=theirs", "unknown formulation"),
    ],
)
def test_bad_values_are_clear_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("configs/smoke.yaml", [override])


def test_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("lsr1: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="list.yaml: expected a mapping"):
        load_config(listy)
    typo = tmp_path / "typo.yaml"
    typo.write_text("meta:\n  iteratons: 3\n")
    with pytest.raises(ConfigError, match=r"typo.yaml: .*meta\.iteratons"):
        load_config(typo)


def test_flatten_gives_dotted_keys():
    flat = flatten(config_to_dict(load_config("configs/smoke.yaml")))
    assert flat["lsr1.buffer_size"] == 4 and flat["meta.betas"] == [0.9, 0.999]


def test_the_defaults_are_the_formulation_of_the_shipped_models():
    from lsr1 import pretrained
    from lsr1.checkpoint import config_of

    switches = [k for k in FORMULATIONS["paper"] if k != "lbfgs_memory"]  # mix_lbfgs_long adds the L-BFGS operator
    for name in ("quadratic", "mix_lbfgs_long", "rosenbrock"):
        trained = config_of({"config": pretrained.info(name)["config"]}).lsr1
        assert {k: getattr(trained, k) for k in switches} == {k: getattr(LSR1Config(), k) for k in switches}, name


def test_a_formulation_sets_its_switches_and_keys_after_it_win():
    paper = load_config("configs/smoke.yaml").lsr1  # formulation: paper, lambda_sec 10 beside it
    assert paper.formulation == "paper" and paper.gamma2 == 0.001 and paper.lambda_sec == 10.0 and paper.hidden_dim == 32
    demo = load_config("configs/hmr_demo.yaml")  # the project's (the defaults) with its own additions
    assert (demo.lsr1.formulation, demo.meta.line_search, demo.lsr1.lbfgs_memory) == ("project", "armijo", 10)
    # an override names a formulation over the preset's keys; a later override still wins
    literal = load_config("configs/hmr_demo.yaml", ["lsr1.formulation=paper", "lsr1.gamma1=0.1"]).lsr1
    assert literal == dataclasses.replace(
        LSR1Config(**FORMULATIONS["paper"]), buffer_size=4, hidden_dim=32, gamma1=0.1, cap_step_index=True
    )
    assert load_config(None, ["lsr1.formulation=project"]).lsr1 == LSR1Config()


def test_a_stored_config_with_a_deleted_switch_loads_only_at_the_value_that_remains(tmp_path):
    from lsr1.checkpoint import CheckpointError, config_of

    stored = config_to_dict(load_config("configs/quadratic.yaml"))
    stored["lsr1"] |= {"identity_weight": 1.0, "secant_target": "new_step", "secant_normalize": False, "first_scale": "pair"}
    assert config_of({"config": stored}) == load_config("configs/quadratic.yaml")
    stored["lsr1"]["first_scale"] = "one"
    with pytest.raises(CheckpointError, match=f"first_scale='one': this switch was deleted.*{SWITCHES_TAG}"):
        config_of({"config": stored}, tmp_path / "old.pt")
    # a checkpoint from before a switch existed ran it at its paper value (each was added with that default)
    paper = load_config("configs/quadratic.yaml", ["lsr1.formulation=paper"])
    old = config_to_dict(paper)
    del old["lsr1"]["global_features"], old["lsr1"]["eval_norm"]
    assert config_of({"config": old}) == paper


def test_a_stored_config_from_before_the_line_search_moved_to_the_driver_is_migrated():
    from lsr1.checkpoint import config_of

    demo = load_config("configs/hmr_demo.yaml")
    old = config_to_dict(demo)
    del old["meta"]["line_search"], old["lsr1"]["formulation"]
    old["lsr1"] |= {"line_search": "armijo", "secant_penalty": "applied", "vector_init_scale": 0.001}
    assert config_of({"config": old}) == demo
    # LGD's run of the same preset stored the lsr1 section too, but its steps were never searched
    lgd = config_of({"config": {**old, "learner": "lgd"}})
    assert lgd.meta.line_search == "none" and lgd.learner == "lgd"
    old["lsr1"]["secant_penalty"] = "paper"
    assert config_of({"config": old}).lsr1.formulation == "paper"


def test_moved_keys_name_their_new_place_and_lgd_refuses_a_line_search():
    with pytest.raises(ConfigError, match="lsr1.secant_penalty moved to lsr1.formulation"):
        load_config("configs/quadratic.yaml", ["lsr1.secant_penalty=paper"])
    with pytest.raises(ConfigError, match="lsr1.line_search moved to meta.line_search"):
        load_config("configs/quadratic.yaml", ["lsr1.line_search=armijo"])
    with pytest.raises(ConfigError, match="vector_init_scale=0.5: this switch was deleted"):
        load_config("configs/quadratic.yaml", ["lsr1.vector_init_scale=0.5"])
    with pytest.raises(ConfigError, match="learner 'lgd'.*meta.line_search=none"):
        load_config("configs/hmr_demo.yaml", ["learner=lgd"])
    assert load_config("configs/hmr_demo.yaml", ["learner=lgd", "meta.line_search=none"]).meta.line_search == "none"
