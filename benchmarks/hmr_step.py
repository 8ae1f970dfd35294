"""Runtime and peak memory per inner HMR iteration at batch 256: initializer + L-SR1 against initializer + LGD
(paper Table 3: 91 ms and 14.60 GiB against 166 ms and 17.81 GiB on an RTX 3090, ratio 0.55).

One inner iteration at inference is what `lsr1.meta.run` does per step: the update module's step, f at the
new iterate and its gradient through the joints-only body. Its time is (run(K) - run(0)) / K, best of
repeats, both learners on the same AMASS batch, eval mode, threads pinned. Peak memory is the most tensor
memory one steady-state iteration allocates on top of what was live before it (CUDA: max_memory_allocated;
CPU: the running sum of the profiler's allocation records). Also shown: the update step and the gradient
alone, a meta-training iteration (MetaLoss forward and backward, per unrolled step), and the matmul FLOPs of
one update step, which decide the CPU ratio.

    python benchmarks/hmr_step.py [--config configs/hmr.yaml] [--batch 256] [--steps 8] [--threads 1]

Architectures come from the preset (paper C.2.3: L-SR1 hidden 128, L = 4; LGD's 1024-wide MLPs); the data
are the synthetic stand-ins (written to a temporary folder unless --data holds them). Last line: JSON.
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from lsr1.config import load_config
from lsr1.hmr.synthetic import generate
from lsr1.learned import make_learner
from lsr1.meta import MetaLoss, run
from lsr1.tasks import problem_set


def best_ms(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        tic = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - tic)
    return 1e3 * min(times)  # the run least disturbed by other processes


def peak_mib(fn: Callable[[], object], device: torch.device) -> float:
    """Most tensor memory allocated during fn() above the level before it, MiB."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    running = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        running += event.self_cpu_memory_usage  # + allocations, - frees, each counted once
        peak = max(peak, running)
    return peak / 2**20


def matmul_gflop(learner: nn.Module, rows: int) -> float:
    """FLOPs of the Linear layers of one update step, rows = the batch the update module sees."""
    return sum(2 * rows * m.in_features * m.out_features for m in learner.update.modules() if isinstance(m, nn.Linear)) / 1e9


def measure(name: str, args: argparse.Namespace, data: Path, device: torch.device) -> dict[str, float]:
    paths = [f"hmr.body_dir={data / 'body'}", f"hmr.amass_dir={data / 'amass'}", f"hmr.pw3d_dir={data / '3dpw'}"]
    config = load_config(args.config, [f"learner={name}", f"task.batch_size={args.batch}", *paths])
    torch.manual_seed(0)
    learner = make_learner(config).to(device)
    problem = problem_set(config.task, "train", 0, hmr=config.hmr, device=device)
    learner.eval()
    full = best_ms(lambda: run(learner, problem, args.steps), args.repeats, device)
    start = best_ms(lambda: run(learner, problem, 0), args.repeats, device)
    with torch.no_grad():
        x = learner.initial_point(problem)
        g = problem.grad(x)
        state = learner.init_for(problem, x, g)
        for _ in range(2):  # a steady state: the buffer holds vectors
            x, state, _ = learner.step(state, x, g)
            g = problem.grad(x)

        def iteration() -> object:
            x_next, _, _ = learner.step(state, x, g)
            return problem.value(x_next), problem.grad(x_next)

        step_ms = best_ms(lambda: learner.step(state, x, g), args.repeats, device)
        grad_ms = best_ms(lambda: problem.grad(x), args.repeats, device)
        peak = peak_mib(iteration, device)
    learner.train()
    loss = MetaLoss(learner, config.meta.unroll_steps)
    train_ms = best_ms(lambda: loss(problem)[0].backward(), max(2, args.repeats // 2), device) / config.meta.unroll_steps
    rows = args.batch * (problem.dim if name == "lsr1" else 1)
    return {
        "ms": (full - start) / args.steps,
        "step_ms": step_ms,
        "grad_ms": grad_ms,
        "peak_mib": peak,
        "train_ms": train_ms,
        "gflop": matmul_gflop(learner, rows),
        "params_m": sum(p.numel() for p in learner.update.parameters()) / 1e6,
        "dim": problem.dim,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/hmr.yaml")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data", default=None, help="folder with body/, amass/, 3dpw/ (default: fresh synthetic data)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(args.data or tmp)
        if not args.data:
            generate(tmp, amass={"frames": 40})
        results = {name: measure(name, args, data, device) for name in ("lsr1", "lgd")}
    machine = torch.cuda.get_device_name() if device.type == "cuda" else f"{platform.machine()} CPU, {args.threads} thread(s)"
    a, b = results["lsr1"], results["lgd"]
    print(f"machine: {machine}, torch {torch.__version__}; batch {args.batch}, N = {a['dim']}, K = {args.steps}")
    print(f"{'per inner iteration':34}{'L-SR1':>10}{'LGD':>10}{'ratio':>8}")
    rows = [
        ("inference (ms)", "ms"),
        ("  update step alone (ms)", "step_ms"),
        ("  f gradient alone (ms)", "grad_ms"),
        ("peak memory (MiB)", "peak_mib"),
        ("meta-training, per step (ms)", "train_ms"),
        ("update step matmul GFLOP", "gflop"),
        ("update module params (M)", "params_m"),
    ]
    for label, key in rows:
        print(f"{label:34}{a[key]:10.2f}{b[key]:10.2f}{a[key] / b[key]:8.2f}")
    print(json.dumps({
        "lsr1_ms": round(a["ms"], 2),
        "lgd_ms": round(b["ms"], 2),
        "ratio": round(a["ms"] / b["ms"], 3),
        "lsr1_peak_mib": round(a["peak_mib"], 2),
        "lgd_peak_mib": round(b["peak_mib"], 2),
        "lsr1_train_ms": round(a["train_ms"], 2),
        "lgd_train_ms": round(b["train_ms"], 2),
        "lsr1_gflop": round(a["gflop"], 3),
        "lgd_gflop": round(b["gflop"], 3),
        "machine": machine,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
