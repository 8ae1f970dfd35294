"""Meta-training throughput of the HMR pipeline with 1 and 2 Ray Train workers, measured in one run.

The real product path: `pipeline.train.fit_with_ray` on a local Ray instance, Ray Data feeding the prepared
synthetic AMASS shards through the KeypointBatches actor, DDP (gloo) between the workers, MLflow logging to
a throw-away store. From rank 0's metrics.jsonl, after `--warmup` iterations:

    samples/s           global batch / (compute + data wait) per iteration, summed over the measured ones
    data_wait_fraction  time blocked on Ray Data / (compute + data wait)

Every worker runs 1 torch thread (Ray sets OMP_NUM_THREADS from a worker's CPU share; workers get 0.25 CPU
each here and Ray Data keeps 1.5 for its tasks and actor). Validation iterations are not timed.

    python benchmarks/train_scaling.py [--config configs/hmr_smoke.yaml] [--batch-size 64] [--iterations 60] [--num-cpus 2]

Data parallelism pays once a worker's share of the batch is large enough for the compute to outgrow the
fixed cost of an iteration (Python and per-operator overhead of the small networks, the DDP all-reduce),
and only as far as there are cores the feed does not use: with 1 worker the KeypointBatches actor runs
on the otherwise idle second core, with 2 workers on this 2-core machine it competes with them.

Last line: one JSON object (samples_per_s_1worker, samples_per_s_2workers, scaling, data_wait_fraction).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from pathlib import Path

from lsr1.config import load_config
from lsr1.tasks.prepare import MANIFEST
from lsr1.tasks.prepare import main as prepare_main
from pipeline.cluster import connect_ray
from pipeline.tracking import Run
from pipeline.train import fit_with_ray


def throughput(metrics_path: Path, batch_size: int, warmup: int) -> tuple[float, float, int]:
    """samples/s and data-wait fraction over the iterations after `warmup`, and how many were measured."""
    rows = [json.loads(line) for line in metrics_path.read_text().splitlines()]
    timed = [r for r in rows if r["iteration"] > warmup]
    compute = sum(r["seconds"] for r in timed)
    wait = sum(r["data_wait_s"] for r in timed)
    return batch_size * len(timed) / (compute + wait), wait / (compute + wait), len(timed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("configs/hmr_smoke.yaml"))
    parser.add_argument("--batch-size", type=int, default=None, help="global batch (default: the preset's)")
    parser.add_argument("--iterations", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--num-cpus", type=int, default=2)
    args = parser.parse_args()
    # validation only at the end: its iteration is not timed, and the run stays a pure training loop
    overrides = [f"meta.iterations={args.iterations}", f"meta.val_every={args.iterations}"]
    config = load_config(args.config, overrides + ([f"task.batch_size={args.batch_size}"] if args.batch_size else []))
    if not (Path(config.hmr.prepared_dir) / MANIFEST).exists():
        prepare_main(["--synthetic", "--config", str(args.config)])
    work = Path(tempfile.mkdtemp(prefix="train-scaling-"))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
    connect_ray(args.num_cpus)
    results = {}
    for workers in (1, 2):
        name = f"scaling-{workers}"
        run = Run.open(os.environ["MLFLOW_TRACKING_URI"], config.name, name, config)
        fit_with_ray(config, run, name, str(work / "ray"), workers, max_failures=0, dest=work / name)
        results[workers] = throughput(work / name / "metrics.jsonl", config.task.batch_size, args.warmup)
    (one, _, measured), (two, wait, _) = results[1], results[2]
    print(
        f"\nHMR meta-training throughput ({config.name}: batch {config.task.batch_size}, K = {config.meta.unroll_steps}, "
        f"{measured} timed iterations), {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Ray with {args.num_cpus} CPUs, 1 torch thread per worker"
    )
    print(f"{'workers':>8}{'samples/s':>12}{'data wait':>11}")
    for workers, (rate, waited, _) in results.items():
        print(f"{workers:>8}{rate:>12.1f}{waited:>11.1%}")
    print(f"scaling 2 vs 1 worker: {two / one:.2f}x")
    print(
        json.dumps(
            {
                "samples_per_s_1worker": round(one, 2),
                "samples_per_s_2workers": round(two, 2),
                "scaling": round(two / one, 3),
                "data_wait_fraction": round(wait, 4),
            }
        )
    )


if __name__ == "__main__":
    main()
