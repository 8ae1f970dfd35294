"""Runtime and peak memory per inner HMR iteration: L-SR1 against LGD and Adam, at the paper's batch sizes
(App. A: inference at batch 32, Fig. 6, and 256, Table 3: 91 ms / 14.60 GiB for L-SR1 against 166 ms /
17.81 GiB for LGD on an RTX 3090; meta-training at batch 4, Fig. 7).

One inner iteration at inference is what `lsr1.meta.run` does per step: the update module's step, f at the
new iterate and its gradient through the joints-only body. Its time is (run(K) - run(0)) / K, best of
repeats, every method on the same AMASS batch, eval mode, threads pinned. Adam (lr 0.01, from the rest
pose) is the first-order reference: it has no network, so no meta-training figure. Peak memory is the
most tensor memory one steady-state iteration allocates on top of what was live before it (CUDA:
max_memory_allocated; CPU: the running sum of the profiler's allocation records); for meta-training, one
MetaLoss forward and backward over K steps, divided by nothing (it is the peak of the whole unroll).
Also at the largest inference batch: the update step and the gradient alone, and the matmul FLOPs of one
update step, which decide the CPU ratio.

    python benchmarks/hmr_step.py [--config configs/hmr.yaml] [--batches 32 256] [--train-batch 4] [--threads 1]

Architectures come from the preset (paper C.2.3: L-SR1 hidden 128, L = 4; LGD's 1024-wide MLPs); the data
are the synthetic stand-ins (written to a temporary folder unless --data holds them). Last line: JSON, with
`inference` and `training` keyed by batch size, then method.
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

from lsr1.config import ExperimentConfig, load_config
from lsr1.hmr.synthetic import generate
from lsr1.learners import make_learner
from lsr1.meta import MetaLoss, run
from lsr1.optim import Adam, with_line_search
from lsr1.tasks import Problem, problem_set

ADAM_LR = 0.01
LEARNERS = {"lsr1": "L-SR1", "lgd": "LGD"}


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


def setting(args: argparse.Namespace, data: Path, learner: str, batch: int, device: torch.device) -> tuple[ExperimentConfig, Problem]:
    """The preset with this learner and batch, and the same AMASS batch of problems for every method."""
    paths = [f"hmr.body_dir={data / 'body'}", f"hmr.amass_dir={data / 'amass'}", f"hmr.pw3d_dir={data / '3dpw'}"]
    config = load_config(args.config, [f"learner={learner}", f"task.batch_size={batch}", *paths])
    torch.manual_seed(0)
    return config, problem_set(config.task, "train", 0, hmr=config.hmr, device=device)


def inference(method: str, args: argparse.Namespace, data: Path, batch: int, device: torch.device, details: bool) -> dict[str, float]:
    """ms and peak MiB per inner iteration of `method` (lsr1, lgd or adam) at this batch size."""
    config, problem = setting(args, data, "lsr1" if method == "adam" else method, batch, device)
    optimizer = Adam(lr=ADAM_LR) if method == "adam" else make_learner(config).to(device).eval()
    driven = with_line_search(optimizer, "none" if method == "adam" else config.meta.line_search)
    full = best_ms(lambda: run(driven, problem, args.steps), args.repeats, device)
    start = best_ms(lambda: run(driven, problem, 0), args.repeats, device)
    with torch.no_grad():
        initial_point = getattr(optimizer, "initial_point", None)
        x = problem.x0 if initial_point is None else initial_point(problem)
        g = problem.grad(x)
        state = optimizer.init(x, g) if method == "adam" else optimizer.init_for(problem, x, g)
        for _ in range(2):  # a steady state: the buffer holds vectors
            x, state, _ = optimizer.step(state, x, g)
            g = problem.grad(x)

        def iteration() -> object:
            x_next, _, _ = optimizer.step(state, x, g)
            return problem.value(x_next), problem.grad(x_next)

        figures = {"ms": (full - start) / args.steps, "peak_mib": peak_mib(iteration, device)}
        if details:
            figures["step_ms"] = best_ms(lambda: optimizer.step(state, x, g), args.repeats, device)
            figures["grad_ms"] = best_ms(lambda: problem.grad(x), args.repeats, device)
            if method != "adam":
                rows = batch * (problem.dim if method == "lsr1" else 1)
                figures["gflop"] = matmul_gflop(optimizer, rows)
                figures["params_m"] = sum(p.numel() for p in optimizer.update.parameters()) / 1e6
    return figures


def training(learner_name: str, args: argparse.Namespace, data: Path, batch: int, device: torch.device) -> dict[str, float]:
    """ms per unrolled step and the peak MiB of one meta-training iteration (MetaLoss forward and backward)."""
    config, problem = setting(args, data, learner_name, batch, device)
    learner = make_learner(config).to(device).train()
    loss = MetaLoss(learner, config.meta.unroll_steps, line_search=config.meta.line_search)
    iteration = lambda: loss(problem)[0].backward()  # noqa: E731
    ms = best_ms(iteration, args.repeats, device) / config.meta.unroll_steps
    return {"ms": ms, "peak_mib": peak_mib(iteration, device), "unroll_steps": config.meta.unroll_steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/hmr.yaml")
    parser.add_argument("--batches", type=int, nargs="+", default=[32, 256], help="inference batch sizes (the last one gets the details)")
    parser.add_argument("--train-batch", type=int, default=4)
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
            generate(tmp, amass={"frames": 64})
        infer = {b: {m: inference(m, args, data, b, device, b == args.batches[-1]) for m in ("lsr1", "lgd", "adam")} for b in args.batches}
        train = {name: training(name, args, data, args.train_batch, device) for name in LEARNERS}
    machine = torch.cuda.get_device_name() if device.type == "cuda" else f"{platform.machine()} CPU, {args.threads} thread(s)"
    print(f"machine: {machine}, torch {torch.__version__}; K = {args.steps} inference steps")
    print(f"{'per inner iteration':36}{'L-SR1':>10}{'LGD':>10}{'Adam':>10}{'L-SR1/LGD':>11}")
    line = lambda label, a, b, c: print(f"{label:36}{a:10.2f}{b:10.2f}{c:>10}{a / b:11.2f}")  # noqa: E731
    for batch, r in infer.items():
        line(f"inference, batch {batch} (ms)", r["lsr1"]["ms"], r["lgd"]["ms"], f"{r['adam']['ms']:.2f}")
        line("  peak memory (MiB)", r["lsr1"]["peak_mib"], r["lgd"]["peak_mib"], f"{r['adam']['peak_mib']:.2f}")
    last = infer[args.batches[-1]]
    for label, key in (("  update step alone (ms)", "step_ms"), ("  f gradient alone (ms)", "grad_ms")):
        line(label, last["lsr1"][key], last["lgd"][key], f"{last['adam'][key]:.2f}")
    for label, key in (("  update step matmul GFLOP", "gflop"), ("  update module params (M)", "params_m")):
        line(label, last["lsr1"][key], last["lgd"][key], "-")
    line(f"meta-training, batch {args.train_batch} (ms/step)", train["lsr1"]["ms"], train["lgd"]["ms"], "-")
    line("  peak memory (MiB)", train["lsr1"]["peak_mib"], train["lgd"]["peak_mib"], "-")
    rounded = lambda d: {k: round(v, 3) if isinstance(v, float) else v for k, v in d.items()}  # noqa: E731
    big = infer[args.batches[-1]]
    print(
        json.dumps(
            {
                "lsr1_ms": round(big["lsr1"]["ms"], 2),
                "lgd_ms": round(big["lgd"]["ms"], 2),
                "adam_ms": round(big["adam"]["ms"], 2),
                "ratio": round(big["lsr1"]["ms"] / big["lgd"]["ms"], 3),
                "batch": args.batches[-1],
                "machine": machine,
                "inference": {str(b): {m: rounded(f) for m, f in r.items()} for b, r in infer.items()},
                "training": {str(args.train_batch): {m: rounded(f) for m, f in train.items()}},
            }
        )
    )


if __name__ == "__main__":
    main()
