"""Single-process HMR check on synthetic data: meta-train initializer + L-SR1 and initializer + LGD for a few
minutes each with `lsr1.meta.train` (no Ray), then report PA-MPJPE per inner step on the synthetic 3DPW
test split. Step 0 is the jointly trained initializer alone; the refinement should lower the error.

    python benchmarks/hmr_check.py [--iterations 600] [--out /tmp/hmr-check] [--set key=value ...]

Starts from configs/hmr_smoke.yaml; the best checkpoint of each run is chosen by validation PA-MPJPE on the
synthetic 3DPW validation split. Last line: JSON with the per-step curves.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path

import torch

from lsr1.checkpoint import load_checkpoint
from lsr1.config import load_config
from lsr1.hmr.synthetic import generate
from lsr1.learners import make_learner
from lsr1.meta import run, step_metrics, train
from lsr1.optim import with_line_search
from lsr1.tasks import problem_set


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/hmr_smoke.yaml")
    parser.add_argument("--iterations", type=int, default=600)
    parser.add_argument("--eval-steps", type=int, default=None, help="inner steps at test time (default: unroll_steps)")
    parser.add_argument("--out", default="/tmp/hmr-check")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", nargs="*", default=[], help="config overrides, e.g. lsr1.hidden_dim=64")
    parser.add_argument("--learners", nargs="+", default=["lsr1", "lgd"], choices=["lsr1", "lgd"])
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    data = out / "data"
    if not (data / "complete").exists():
        generate(
            data,
            seed=0,
            amass={"datasets": 3, "subjects": 4, "sequences": 3, "frames": 60},
            pw3d={"sequences": {"train": 1, "validation": 3, "test": 4}, "frames": 40},
        )
        (data / "complete").touch()
    paths = [f"hmr.body_dir={data / 'body'}", f"hmr.amass_dir={data / 'amass'}", f"hmr.pw3d_dir={data / '3dpw'}"]
    curves, seconds = {}, {}
    for learner in args.learners:
        config = load_config(args.config, [*paths, f"learner={learner}", f"meta.iterations={args.iterations}", *args.set])
        tic = time.perf_counter()
        summary = train(config, out / learner, resume=False)
        seconds[learner] = time.perf_counter() - tic
        model = make_learner(config)
        model.load_state_dict(load_checkpoint(out / learner / "best.pt")["model"])
        test = problem_set(config.task, "test", hmr=config.hmr)
        steps = args.eval_steps or config.meta.unroll_steps
        curves[learner] = {
            k: v.tolist()
            for k, v in step_metrics(test, run(with_line_search(model, config.meta.line_search), test, steps).iterates).items()
        }
        print(
            f"{learner}: {summary.iterations} iterations in {seconds[learner]:.0f} s, best val PA-MPJPE "
            f"{summary.best_val_loss:.1f} mm at iteration {summary.best_iteration}; test split: {test.batch_size} frames"
        )

    print(f"machine: {platform.machine()} CPU, {args.threads} thread(s), torch {torch.__version__}")
    print("PA-MPJPE (mm) on the synthetic 3DPW test split per inner step (step 0: the initializer alone)")
    names = {"lsr1": "init + L-SR1", "lgd": "init + LGD"}
    print("step" + "".join(f"{names[learner]:>16}" for learner in curves))
    for k, values in enumerate(zip(*(c["pa_mpjpe"] for c in curves.values()))):
        print(f"{k:4d}" + "".join(f"{v:16.2f}" for v in values))
    summary = {f"{learner}_{key}": [round(v, 5) for v in c[key]] for learner, c in curves.items() for key in ("pa_mpjpe", "reprojection")}
    print(json.dumps({**summary, "iterations": args.iterations, "seconds": {k: round(v) for k, v in seconds.items()}}))


if __name__ == "__main__":
    main()
