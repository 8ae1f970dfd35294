"""Trained learned optimizers shipped with the package, loaded by name: `lsr1.pretrained.load("quadratic")`
(L-SR1 models, and `bfgs_steps_*`: the LSTM coordinate-wise BFGS step sizes).

Each is a small checkpoint in lsr1/weights/<name>.pt holding the experiment config, the weights and a
summary of how it was trained (read it with `info(name)`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lsr1.checkpoint import config_of, load_checkpoint, save_checkpoint
from lsr1.learned import LSR1, LearnedOptimizer
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
    """A shipped model in eval mode. `buffer_size`, `lbfgs_memory` and `cap_step_index` change the settings an
    L-SR1 model may change after training (`LSR1.with_settings`, which says what each does); None keeps the
    trained one."""
    path = _path(name)
    payload = load_checkpoint(path)
    config = config_of(payload, path)
    model = make_learner(config)
    model.load_state_dict(payload["model"])
    model = model.to(device=device, dtype=dtype).eval()
    settings = {"buffer_size": buffer_size, "lbfgs_memory": lbfgs_memory, "cap_step_index": cap_step_index}
    changed = {key: value for key, value in settings.items() if value is not None}
    if not changed:
        return model
    if not isinstance(model, LSR1):
        raise ValueError(f"{', '.join(changed)}: L-SR1 settings; {name!r} is a {config.learner} model")
    return model.with_settings(**changed)


def export(checkpoint: str | Path, name: str, summary: dict[str, Any] | None = None, directory: Path = WEIGHTS_DIR) -> Path:
    """Write the weights and config of a training checkpoint as a shipped model `name` (no optimizer state)."""
    payload = load_checkpoint(checkpoint)
    config_of(payload, checkpoint)  # refuse a checkpoint whose config does not load
    keep = {key: payload[key] for key in ("iteration", "best_val_loss", "best_iteration", "skipped") if key in payload}
    return save_checkpoint(
        directory / f"{name}.pt", {"config": payload["config"], "model": payload["model"], "summary": {**keep, **(summary or {})}}
    )


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
