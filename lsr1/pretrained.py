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
from lsr1.learned.official import OfficialLSR1
from lsr1.learners import make_learner

__all__ = ["OFFICIAL_PREFIXES", "REPLACED", "WEIGHTS_DIR", "available", "export", "from_official", "info", "load"]

WEIGHTS_DIR = Path(__file__).parent / "weights"


def available() -> list[str]:
    """Names of the shipped models."""
    return sorted(p.stem for p in WEIGHTS_DIR.glob("*.pt"))


# Shipped models that were replaced: the paper-literal ones (our reading of the paper's text) by the authors'
# formulation trained by their protocol. Git tag REPLACED_TAG still has them.
REPLACED = {
    "quadratic_paper": "quadratic_official",
    "quadratic100_paper": "quadratic100_official",
    "rosenbrock_paper": "rosenbrock_official",
    "rastrigin_paper": "rastrigin_official",
}
REPLACED_TAG = "paper-models-2026-12-08"


def _path(name: str) -> Path:
    path = WEIGHTS_DIR / f"{name}.pt"
    if name in REPLACED and not path.is_file():
        raise ValueError(f"the pretrained model {name!r} was replaced by {REPLACED[name]!r} (git tag {REPLACED_TAG} has it)")
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
    if isinstance(model, OfficialLSR1) and set(changed) <= {"buffer_size"}:
        return model.with_settings(**changed)
    if not isinstance(model, LSR1):
        raise ValueError(f"{', '.join(changed)}: L-SR1 settings (of the project's module); {name!r} is a {type(model).__name__} model")
    return model.with_settings(**changed)


# their LSR1Optimizer's three networks -> ours (the keys after the prefix are the same: lsr1.learned.official)
OFFICIAL_PREFIXES = {"enc.": "encoder.", "get_v.mlp.": "vector_generator.", "get_lr.mlp.": "lr_generator."}


def from_official(
    state_dict: dict[str, torch.Tensor] | str | Path, *, alpha1: float, alpha2: float, buffer_size: int, prefix: str = ""
) -> OfficialLSR1:
    """The authors' L-SR1 (the `LSR1Optimizer` of their published code) with their weights, in eval mode.

    state_dict: that module's state_dict (keys `enc.*`, `get_v.mlp.*`, `get_lr.mlp.*`), or the path of their
    Lightning checkpoint, whose `state_dict` holds one such module per optimizer under `prefix` (`pose_upd_net`
    or `shape_upd_net` in their HMR model). A checkpoint is read as tensors only, never as code. The keys must
    match exactly: a missing or unexpected key is an error that names it."""
    if isinstance(state_dict, (str, Path)):
        state_dict = _official_checkpoint(Path(state_dict), prefix)
    model = OfficialLSR1(buffer_size=buffer_size, alpha1=alpha1, alpha2=alpha2)
    theirs = {_their_key(key) for key in model.state_dict()}
    missing, unexpected = sorted(theirs - set(state_dict)), sorted(set(state_dict) - theirs)
    if missing or unexpected:
        raise ValueError(f"not the state_dict of their LSR1Optimizer: missing {missing[:8]}, unexpected {unexpected[:8]}")
    tensors = {key: torch.as_tensor(value) for key, value in state_dict.items()}
    model = model.to(next(t for t in tensors.values() if t.is_floating_point()).dtype)  # before loading: no rounding
    model.load_state_dict({key: tensors[_their_key(key)] for key in model.state_dict()})
    return model.eval()


def _their_key(ours: str) -> str:
    """Our state_dict key as their LSR1Optimizer names it."""
    for their_prefix, our_prefix in OFFICIAL_PREFIXES.items():
        if ours.startswith(our_prefix):
            return their_prefix + ours[len(our_prefix) :]
    raise ValueError(f"no official name for {ours}")


def _official_checkpoint(path: Path, prefix: str) -> dict[str, torch.Tensor]:
    """The tensors under `prefix.` in a Lightning checkpoint's state_dict, loaded with weights_only=True."""
    if not prefix:
        raise ValueError(f"{path}: a checkpoint holds several optimizers; pass prefix='pose_upd_net' or 'shape_upd_net'")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # what torch refuses to read as tensors and containers only
        raise ValueError(f"{path}: not a checkpoint that loads as tensors only ({type(err).__name__}: {str(err)[:300]})") from None
    tensors = payload.get("state_dict", payload) if isinstance(payload, dict) else None
    if not isinstance(tensors, dict):
        raise ValueError(f"{path}: no state_dict in this checkpoint")
    picked = {key[len(prefix) + 1 :]: value for key, value in tensors.items() if key.startswith(prefix + ".")}
    if not picked:
        heads = sorted({key.split(".")[0] for key in tensors})
        raise ValueError(f"{path}: no keys under {prefix!r}; the state_dict's top-level names are {heads}")
    return picked


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
