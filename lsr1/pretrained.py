"""Trained learned optimizers shipped with the package, loaded by name: `lsr1.pretrained.load("quadratic")`
(L-SR1 models, and `bfgs_steps_*`: the LSTM coordinate-wise BFGS step sizes).

Each is a small checkpoint in lsr1/weights/<name>.pt holding the experiment config, the weights and a
summary of how it was trained (read it with `info(name)`).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from lsr1.checkpoint import config_of, load_checkpoint, save_checkpoint
from lsr1.learned import LSR1, LearnedOptimizer, with_buffer_size, with_lbfgs_memory
from lsr1.learners import make_learner

__all__ = ["WEIGHTS_DIR", "available", "export", "info", "load"]

WEIGHTS_DIR = Path(__file__).parent / "weights"


def available() -> list[str]:
    """Names of the shipped models."""
    return sorted(p.stem for p in WEIGHTS_DIR.glob("*.pt"))


def _path(name: str) -> Path:
    path = WEIGHTS_DIR / f"{name}.pt"
    if not path.is_file():
        raise ValueError(f"no pretrained model {name!r}; available: {available()}")
    return path


def info(name: str) -> dict[str, Any]:
    """The config and training summary stored with a shipped model."""
    payload = load_checkpoint(_path(name))
    return {"config": payload["config"], **payload.get("summary", {})}


def load(
    name: str,
    buffer_size: int | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    lbfgs_memory: int | None = None,
    cap_step_index: bool | None = None,
) -> LearnedOptimizer:
    """A shipped model in eval mode; `buffer_size` overrides the trained L of an L-SR1 model (the paper
    tests with other L than trained), `lbfgs_memory` the trained m of one with the L-BFGS operator, and
    `cap_step_index` whether the step index of its global features is held at the last step meta-training
    reached (`lsr1.cap_step_index`; no effect on a model without global features). The hold never binds
    in meta-training, so a model trained without it has the same weights as one trained with it: it only
    decides what the model sees past its horizon."""
    path = _path(name)
    payload = load_checkpoint(path)
    config = config_of(payload, path)
    if cap_step_index is not None:
        if config.learner != "lsr1":
            raise ValueError(f"cap_step_index is an L-SR1 setting; {name!r} is a {config.learner} model")
        config = dataclasses.replace(config, lsr1=dataclasses.replace(config.lsr1, cap_step_index=cap_step_index))
    model = make_learner(config)
    model.load_state_dict(payload["model"])
    model = model.to(device=device, dtype=dtype).eval()
    if buffer_size is None and lbfgs_memory is None:
        return model
    if not isinstance(model, LSR1):
        raise ValueError(f"buffer_size and lbfgs_memory are L-SR1 settings; {name!r} is a {type(model).__name__}")
    model = model if buffer_size is None else with_buffer_size(model, buffer_size)
    return model if lbfgs_memory is None else with_lbfgs_memory(model, lbfgs_memory)


def export(checkpoint: str | Path, name: str, summary: dict[str, Any] | None = None, directory: Path = WEIGHTS_DIR) -> Path:
    """Write the weights and config of a training checkpoint as a shipped model `name` (no optimizer state)."""
    payload = load_checkpoint(checkpoint)
    config_of(payload, checkpoint)  # refuse a checkpoint whose config does not load
    keep = {key: payload[key] for key in ("iteration", "best_val_loss", "best_iteration", "skipped") if key in payload}
    return save_checkpoint(directory / f"{name}.pt", {"config": payload["config"], "model": payload["model"], "summary": {**keep, **(summary or {})}})


def main(argv: list[str] | None = None) -> int:
    """`python -m lsr1.pretrained`: the shipped models and how each was trained; `export CHECKPOINT NAME`
    ships a training checkpoint (its best.pt) under NAME with a note of how it was trained."""
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m lsr1.pretrained", description=main.__doc__)
    sub = parser.add_subparsers(dest="action")
    out = sub.add_parser("export", help="write a checkpoint's config and weights as a shipped model")
    out.add_argument("checkpoint", type=Path)
    out.add_argument("name")
    out.add_argument("--trained-with", required=True, help="how it was trained (preset, iterations, selection)")
    out.add_argument("--command", required=True, help="the command that trained it")
    args = parser.parse_args(argv)
    if args.action == "export":
        path = export(args.checkpoint, args.name, {"trained_with": args.trained_with, "command": args.command})
        print(f"wrote {path}")
        return 0
    for name in available():
        summary = {k: v for k, v in info(name).items() if k != "config"}
        print(f"{name}: {json.dumps(summary)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
