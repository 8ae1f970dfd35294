"""Checkpoints: written atomically, read with `torch.load(weights_only=True)` (never a trusted pickle).

A checkpoint is a dict of tensors and plain values: the experiment config (as a dict), the unwrapped
model state, and for resumable ones the meta-optimizer, scheduler, iteration and RNG state.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from lsr1.config import FORMULATIONS, ConfigError, ExperimentConfig, config_from_dict

__all__ = ["CheckpointError", "config_of", "load_checkpoint", "save_checkpoint"]

FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used, with the file named."""


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write `payload` to `path` through a temporary file and a rename, so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for name, tensor in payload.get("model", {}).items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"refusing to write {path}: model entry {name!r} is not finite")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        torch.save({"format": FORMAT, **payload}, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint`; any other content is an error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an lsr1 checkpoint (format {FORMAT} expected)")
    for key in ("config", "model"):
        if key not in payload:
            raise CheckpointError(f"{path}: missing key {key!r}")
    return payload


def config_of(payload: dict[str, Any], path: str | Path = "<checkpoint>") -> ExperimentConfig:
    """The experiment config stored in a checkpoint; architecture always comes from here on resume.

    A checkpoint written before an L-SR1 switch existed lacks its key, and ran as the switch's paper value (each
    was added with that default); since the defaults became the project's formulation, a missing switch is
    filled from FORMULATIONS["paper"], so that such a checkpoint loads as it was trained."""
    stored = dict(payload["config"])
    if isinstance(stored.get("lsr1"), dict):
        stored["lsr1"] = {**FORMULATIONS["paper"], **stored["lsr1"]}
    try:
        return config_from_dict(ExperimentConfig, stored)
    except ConfigError as err:
        raise CheckpointError(f"{path}: stored config is invalid: {err}") from None
