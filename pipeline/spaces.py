"""Ray Tune search spaces from YAML (`tune_spaces/*.yaml`).

The grammar: a mapping from a dotted config key (as for `--set`) to one sampler,

    lsr1.lambda_sec: {loguniform: [0.1, 1000]}   # log-uniform on [low, high], 0 < low < high
    lsr1.gamma2:     {uniform: [0.0005, 0.005]}  # uniform on [low, high], low < high
    meta.seed:       {randint: [0, 1000]}        # integer in [low, high), low < high
    lsr1.buffer_size: {choice: [2, 4, 8]}        # one of the values, sampled
    meta.unroll_steps: {grid: [8, 16]}           # every value, crossed with the samples

Keys must exist in the experiment config (`lsr1.config.ExperimentConfig`); values are type-checked there
when a trial builds its config. Any other form is a SpaceError naming the file and the key.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

from lsr1.config import ConfigError, ExperimentConfig, config_from_dict, config_to_dict, flatten

__all__ = ["SAMPLERS", "SpaceError", "check_values", "grid_size", "load_space", "to_tune", "with_values"]

SAMPLERS = ("choice", "grid", "uniform", "loguniform", "randint")


class SpaceError(ValueError):
    """A search-space file that does not follow the grammar above."""


def _range(path: Path, key: str, kind: str, args: Any) -> tuple[float, float]:
    if not (isinstance(args, list) and len(args) == 2 and all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args)):
        raise SpaceError(f"{path}: {key}: {kind} needs [low, high] numbers, got {args!r}")
    low, high = args
    if not low < high:
        raise SpaceError(f"{path}: {key}: {kind} needs low < high, got [{low}, {high}]")
    if kind == "loguniform" and low <= 0:
        raise SpaceError(f"{path}: {key}: loguniform needs low > 0, got {low}")
    if kind == "randint" and not (isinstance(low, int) and isinstance(high, int)):
        raise SpaceError(f"{path}: {key}: randint needs integers, got [{low}, {high}]")
    return low, high


def load_space(path: str | Path) -> dict[str, tuple[str, Any]]:
    """{dotted key: (sampler, arguments)} after checking the grammar and the keys."""
    path = Path(path)
    if not path.is_file():
        raise SpaceError(f"search space {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise SpaceError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict) or not raw:
        raise SpaceError(f"{path}: expected a non-empty mapping of config keys to samplers")
    valid = flatten(config_to_dict(ExperimentConfig()))
    space: dict[str, tuple[str, Any]] = {}
    for key, spec in raw.items():
        if key not in valid:
            close = [k for k in valid if k.split(".")[-1] == str(key).split(".")[-1]]
            raise SpaceError(
                f"{path}: unknown config key {key!r}" + (f"; did you mean {close}?" if close else f"; valid keys: {sorted(valid)}")
            )
        if not (isinstance(spec, dict) and len(spec) == 1):
            raise SpaceError(f"{path}: {key}: expected one sampler such as {{loguniform: [low, high]}}, got {spec!r}")
        ((kind, args),) = spec.items()
        if kind not in SAMPLERS:
            raise SpaceError(f"{path}: {key}: unknown sampler {kind!r}; valid: {list(SAMPLERS)}")
        if kind in ("choice", "grid"):
            if not (isinstance(args, list) and args):
                raise SpaceError(f"{path}: {key}: {kind} needs a non-empty list, got {args!r}")
        else:
            args = list(_range(path, key, kind, args))
        space[key] = (kind, args)
    return space


def to_tune(space: dict[str, tuple[str, Any]]) -> dict[str, Any]:
    """The same space as Ray Tune samplers, keyed by the dotted config keys."""
    from ray import tune

    make = {
        "choice": tune.choice,
        "grid": tune.grid_search,
        "uniform": lambda a: tune.uniform(*a),
        "loguniform": lambda a: tune.loguniform(*a),
        "randint": lambda a: tune.randint(*a),
    }
    return {key: make[kind](args) for key, (kind, args) in space.items()}


def grid_size(space: dict[str, tuple[str, Any]]) -> int:
    """How many grid combinations each sample is crossed with."""
    return math.prod(len(args) for kind, args in space.values() if kind == "grid")


def with_values(base: dict[str, Any], values: dict[str, Any]) -> ExperimentConfig:
    """The config dict `base` with dotted keys set to `values`, type-checked as an ExperimentConfig."""
    data = {section: dict(v) if isinstance(v, dict) else v for section, v in base.items()}
    for key, value in values.items():
        *parents, leaf = key.split(".")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return config_from_dict(ExperimentConfig, data)


def check_values(space: dict[str, tuple[str, Any]], base: dict[str, Any], path: str | Path = "<space>") -> None:
    """Fail before any trial starts if a value of the space does not type-check in the config."""
    for key, (kind, args) in space.items():
        for value in args if kind in ("choice", "grid") else args:
            try:
                with_values(base, {key: int(value) if kind == "randint" else value})
            except ConfigError as err:
                raise SpaceError(f"{path}: {key}: value {value!r} does not fit the config: {err}") from None
