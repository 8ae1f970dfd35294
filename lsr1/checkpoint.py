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

    Older checkpoints are migrated: a switch that did not exist yet when one was written is filled with the
    value it ran as, the paper's (each switch was added with that default; since the defaults became the
    project's formulation, from FORMULATIONS["paper"]); `lsr1.line_search` moves to `meta.line_search` (for
    an L-SR1 learner: it never searched another's steps),
    `lsr1.secant_penalty` "applied" / "paper" becomes `lsr1.formulation` "project" / "paper", and
    `lsr1.vector_init_scale` is dropped (it only initialised weights that the checkpoint's replace)."""
    stored = dict(payload["config"])
    if isinstance(stored.get("lsr1"), dict):
        lsr1 = dict(stored["lsr1"])
        lsr1.pop("vector_init_scale", None)
        line_search = lsr1.pop("line_search", "none")
        if stored.get("learner", "lsr1") == "lsr1" and line_search != "none":  # it only ever searched L-SR1's steps
            stored["meta"] = {"line_search": line_search, **stored.get("meta", {})}
        if "secant_penalty" in lsr1:
            penalty = lsr1.pop("secant_penalty")
            lsr1.setdefault("formulation", "project" if penalty == "applied" else penalty)
        stored["lsr1"] = {**FORMULATIONS["paper"], **lsr1}
    try:
        return config_from_dict(ExperimentConfig, stored)
    except ConfigError as err:
        raise CheckpointError(f"{path}: stored config is invalid: {err}") from None
