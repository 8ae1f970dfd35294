"""Milliseconds per meta-iteration of a preset (default `quadratic`): today's code against the reference
path, side by side, and (analytic tasks) against the matmul-only compute bound.

The reference is the library as it was at commit REFERENCE (before the training loop kept freed memory and
before L-SR1 used the unweighted BatchNorm kernels while no problem is frozen; `git archive` extracts it to
a temporary folder). Each side runs in its own process (malloc settings are per process), in alternating
rounds so that both see the same load; the time per iteration is the process's CPU time (robust on a
shared machine), and wall time is reported beside it. Both sides also compute the first meta-iteration in
float64 from the same seed: its loss and meta-gradient norm must agree to float rounding.

The bound: the matmul FLOPs of one meta-iteration (forward and backward of every Linear layer of E, P and G
over K unrolled steps) divided by this machine's single-thread matmul rate, measured in this run on the
same matrix shapes. efficiency = bound / measured time on 1 thread. An HMR preset gets the side-by-side
timing only (its meta-iteration also runs the body model and the initializer), on the synthetic stand-ins
written to a temporary folder; one Ray Train worker's share of the demo's batch is its half:

    python benchmarks/meta_step.py [--iterations 20] [--rounds 3] [--config configs/quadratic.yaml] [--profile]
    python benchmarks/meta_step.py --config configs/hmr_demo.yaml --set task.batch_size=32 [--set learner=lgd --set meta.line_search=none]

Threads are pinned: torch.set_num_threads(1) and OMP_NUM_THREADS=1 in both sides' processes (and 2 for
the extra 2-thread figure of today's code). Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

import torch
from torch import nn

from lsr1.config import load_config
from lsr1.learners import make_learner
from lsr1.meta import MetaLoss, meta_step
from lsr1.tasks import Problem, problem_set

REFERENCE = "7c11f07"  # the last commit of lsr1/ before the speed-up (issue 15)
ROOT = Path(__file__).resolve().parent.parent


def training(config, count: int) -> tuple[Callable[[Problem], object], list[Problem]]:
    """A freshly seeded learner's meta-step (AdamW and grad clip as the preset trains) and `count` training
    batches."""
    torch.manual_seed(0)
    learner = make_learner(config)
    loss = MetaLoss(learner, config.meta.unroll_steps, line_search=config.meta.line_search)
    opt = torch.optim.AdamW(learner.parameters(), lr=config.meta.lr, weight_decay=config.meta.weight_decay)
    problems = [problem_set(config.task, "train", i, hmr=config.hmr) for i in range(count)]
    return (lambda problem: meta_step(loss, opt, problem, grad_clip=config.meta.grad_clip)), problems


def time_meta_iterations(config, iterations: int, threads: int) -> dict[str, list[float]]:
    """ms per meta-iteration (CPU time and wall time) over `iterations`, after 3 warm-up iterations."""
    torch.set_num_threads(threads)
    step, problems = training(config, iterations + 3)
    times: dict[str, list[float]] = {"cpu": [], "wall": []}
    for i, problem in enumerate(problems):
        cpu, wall = time.process_time(), time.perf_counter()
        step(problem)
        if i >= 3:
            times["cpu"].append(1e3 * (time.process_time() - cpu))
            times["wall"].append(1e3 * (time.perf_counter() - wall))
    return times


def first_iteration_float64(config) -> dict[str, float]:
    """Loss and meta-gradient norm of the first meta-iteration in float64 (seed 0, training problem 0)."""
    torch.manual_seed(0)
    learner = make_learner(config).double()
    loss, _ = MetaLoss(learner, config.meta.unroll_steps, line_search=config.meta.line_search)(
        problem_set(config.task, "train", 0, dtype=torch.float64, hmr=config.hmr)
    )
    loss.backward()
    grads = [p.grad.flatten() for p in learner.parameters() if p.grad is not None]
    return {"loss": float(loss), "grad_norm": float(torch.cat(grads).norm())}


def side(config_path: str, overrides: list[str], iterations: int, threads: int, retain_memory: bool) -> None:
    """One side of the comparison, in its own process: prints one JSON line."""
    config = load_config(config_path, overrides)
    if retain_memory:
        from lsr1.meta import retain_freed_memory

        retain_freed_memory()
    print(json.dumps({**time_meta_iterations(config, iterations, threads), **first_iteration_float64(config)}))


def extract_reference(commit: str, into: Path) -> Path:
    """lsr1/ as it was at `commit`, written under `into` (importable with PYTHONPATH=into)."""
    try:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "lsr1"], check=True, capture_output=True).stdout
    except (OSError, subprocess.CalledProcessError) as error:
        raise SystemExit(
            f"cannot extract the reference path (lsr1/ at commit {commit}) with git archive: {error}; "
            "run from a git clone with its history, or pass --reference COMMIT"
        ) from error
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def run_side(tree: Path, config_path: str, overrides: list[str], iterations: int, threads: int, retain_memory: bool) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    command = [sys.executable, __file__, "--side", "--config", config_path, "--iterations", str(iterations), "--threads", str(threads)]
    command += [arg for override in overrides for arg in ("--set", override)]
    out = subprocess.run(
        command + (["--retain-memory"] if retain_memory else []), env=env, cwd=ROOT, check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def side_by_side(config_path: str, overrides: list[str], iterations: int, rounds: int, reference: str) -> dict[str, dict]:
    """Alternating rounds of the reference and today's code at 1 thread, then today's at 2 threads."""
    with tempfile.TemporaryDirectory() as tmp:
        old = extract_reference(reference, Path(tmp))
        runs: dict[str, list[dict]] = {"reference": [], "today": []}
        for r in range(rounds):
            print(f"round {r + 1}/{rounds} ...", file=sys.stderr, flush=True)
            runs["reference"].append(run_side(old, config_path, overrides, iterations, 1, retain_memory=False))
            runs["today"].append(run_side(ROOT, config_path, overrides, iterations, 1, retain_memory=True))
    two = run_side(ROOT, config_path, overrides, iterations, 2, retain_memory=True)
    out = {
        name: {
            "cpu_ms": statistics.median([t for run in rs for t in run["cpu"]]),
            "wall_ms": statistics.median([t for run in rs for t in run["wall"]]),
            "loss": rs[0]["loss"],
            "grad_norm": rs[0]["grad_norm"],
        }
        for name, rs in runs.items()
    }
    out["today_2threads"] = {"cpu_ms": statistics.median(two["cpu"]), "wall_ms": statistics.median(two["wall"])}
    return out


def profile_table(config, iterations: int = 5, rows: int = 12) -> str:
    """Where one meta-iteration's time goes (1 thread): torch.profiler's top operators by self time."""
    from torch.profiler import profile

    from lsr1.meta import retain_freed_memory

    retain_freed_memory()
    torch.set_num_threads(1)
    step, problems = training(config, iterations + 2)
    for problem in problems[:2]:
        step(problem)
    with profile() as prof:
        for problem in problems[2:]:
            step(problem)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    lines = [f"{'operator':44}{'ms / iteration':>15}{'share':>8}{'calls / iteration':>19}"]
    for e in events[:rows]:
        lines.append(
            f"{e.key[:43]:44}{e.self_cpu_time_total / 1e3 / iterations:15.1f}{e.self_cpu_time_total / total:8.1%}{e.count / iterations:19.0f}"
        )
    return "\n".join(lines)


def fused_vs_modules_ms(rows: int, hidden: int, repeats: int = 50) -> tuple[float, float]:
    """Forward + backward of one ElementwiseMLP: our fused Linear-BatchNorm-PReLU nodes against torch's
    nn.Linear / nn.BatchNorm1d / nn.PReLU applied one after the other (the same modules, same weights)."""
    from lsr1.nn import ElementwiseMLP

    torch.set_num_threads(1)
    mlp = ElementwiseMLP(hidden, 1, hidden)
    x = torch.randn(rows, hidden, requires_grad=True)

    def modules(h):
        h = mlp.prelu(mlp.bn1(mlp.fc1(h)))
        for block in (mlp.mlp1, mlp.mlp2):
            h = block.bn2(block.fc2(block.prelu(block.bn1(block.fc1(h))))) + h
        return mlp.fc2(h)

    def median_ms(forward) -> float:
        times = []
        for i in range(repeats + 5):
            tic = time.perf_counter()
            forward(x).sum().backward()
            if i >= 5:
                times.append(time.perf_counter() - tic)
        return 1e3 * statistics.median(times)

    return median_ms(mlp), median_ms(modules)


def gemm_shapes(config) -> list[tuple[int, int, int]]:
    """(m, k, n) of every matmul of one meta-iteration: forward, grad-input and grad-weight per Linear."""
    learner = make_learner(config)
    rows = config.task.batch_size * config.task.dim
    shapes = []
    for step in range(config.meta.unroll_steps):
        for module in (learner.encoder, learner.vector_generator, learner.lr_generator):
            for layer in module.modules():
                if isinstance(layer, nn.Linear):
                    i, o = layer.in_features, layer.out_features
                    shapes.append((rows, i, o))  # forward: (R, i) @ (i, o)
                    shapes.append((o, rows, i))  # grad weight: (o, R) @ (R, i)
                    if not (step == 0 and layer is learner.encoder.fc1):  # the first input has no graph
                        shapes.append((rows, o, i))  # grad input: (R, o) @ (o, i)
    return shapes


def matmul_ms(m: int, k: int, n: int, repeats: int = 50) -> float:
    """Best-of single-thread time of one (m, k) @ (k, n) float32 matmul."""
    torch.set_num_threads(1)
    a, b = torch.randn(m, k), torch.randn(k, n)
    for _ in range(5):
        a @ b
    best = float("inf")
    for _ in range(repeats):
        tic = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - tic)
    return 1e3 * best


def hmr_data(into: Path) -> list[str]:
    """The synthetic SMPL body, AMASS and 3DPW stand-ins under `into`, as the overrides that point at them."""
    from lsr1.hmr.synthetic import generate

    paths = generate(into, amass={"frames": 64})
    return [f"hmr.body_dir={paths['body']}", f"hmr.amass_dir={paths['amass']}", f"hmr.pw3d_dir={paths['3dpw']}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/quadratic.yaml")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config overrides for both sides, e.g. task.batch_size=32 (one HMR worker's share)",
    )
    parser.add_argument("--iterations", type=int, default=20, help="timed meta-iterations per round and side")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of the two sides")
    parser.add_argument("--reference", default=REFERENCE, help="the commit whose lsr1/ is the reference path")
    parser.add_argument("--profile", action="store_true", help="also print where today's time goes (torch.profiler)")
    parser.add_argument("--side", action="store_true", help=argparse.SUPPRESS)  # one side, in its own process
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--retain-memory", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        return side(args.config, args.overrides, args.iterations, args.threads, args.retain_memory)
    with tempfile.TemporaryDirectory() as data:
        overrides = args.overrides
        if load_config(args.config, overrides).task.name == "hmr":  # the synthetic stand-ins, for both sides
            overrides = hmr_data(Path(data)) + overrides
        report(args, load_config(args.config, overrides), overrides)


def report(args: argparse.Namespace, config, overrides: list[str]) -> None:
    """Both sides timed, the results printed; the matmul bound and the MLP comparison for analytic tasks
    (an HMR meta-iteration also runs the body model and the initializer)."""
    sides = side_by_side(args.config, overrides, args.iterations, args.rounds, args.reference)
    ref, today = sides["reference"], sides["today"]
    loss_diff = abs(today["loss"] - ref["loss"]) / abs(ref["loss"])
    grad_diff = abs(today["grad_norm"] - ref["grad_norm"]) / ref["grad_norm"]
    t, k = config.task, config.meta
    analytic = t.name != "hmr"  # the matmul bound and the MLP comparison: L-SR1's networks are all the work
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, threads pinned 1 (and 2 where said)")
    size = f", N {t.dim}" if analytic else ""
    memory = f", L {config.lsr1.buffer_size}" if config.learner == "lsr1" else ""
    print(
        f"preset {config.name}{' with ' + ' '.join(args.overrides) if args.overrides else ''}: learner {config.learner}, "
        f"batch {t.batch_size}{size}, K {k.unroll_steps}{memory}"
    )
    result = {}
    if analytic:
        shapes = gemm_shapes(config)
        per_shape = {shape: matmul_ms(*shape) for shape in set(shapes)}
        flops = sum(2 * m * kk * n for m, kk, n in shapes)
        bound_ms = sum(per_shape[s] for s in shapes)
        big = max(per_shape, key=lambda s: s[0] * s[1] * s[2])
        rows = t.batch_size * t.dim
        fused_ms, modules_ms = fused_vs_modules_ms(rows, config.lsr1.hidden_dim)
        print(f"matmul FLOPs per meta-iteration: {flops / 1e9:.2f} GFLOP in {len(shapes)} matmuls")
        print(f"single-thread rate on {big}: {2 * big[0] * big[1] * big[2] / per_shape[big] / 1e6:.1f} GFLOP/s")
        result = {
            "flop_bound_ms": round(bound_ms, 2),
            "efficiency": round(bound_ms / today["cpu_ms"], 3),
            "gflop_per_meta_iter": round(flops / 1e9, 3),
            "mlp_fused_ms": round(fused_ms, 3),
            "mlp_torch_modules_ms": round(modules_ms, 3),
        }
    print(f"{'ms / meta-iteration':36}{'CPU time':>10}{'wall':>10}")
    if analytic:
        print(f"{'matmul-only bound':36}{bound_ms:10.1f}")
    print(f"{f'reference ({args.reference}), 1 thread':36}{ref['cpu_ms']:10.1f}{ref['wall_ms']:10.1f}")
    print(f"{'today, 1 thread':36}{today['cpu_ms']:10.1f}{today['wall_ms']:10.1f}")
    print(f"{'today, 2 threads':36}{sides['today_2threads']['cpu_ms']:10.1f}{sides['today_2threads']['wall_ms']:10.1f}")
    efficiency = f"; efficiency (bound / today): {bound_ms / today['cpu_ms']:.2f}" if analytic else ""
    print(f"speed-up (reference / today, CPU time): {ref['cpu_ms'] / today['cpu_ms']:.2f}x{efficiency}")
    print(
        f"first meta-iteration in float64: loss {today['loss']:.12g} vs {ref['loss']:.12g} (rel {loss_diff:.1e}), "
        f"meta-gradient norm rel {grad_diff:.1e}"
    )
    if analytic:
        print(
            f"one MLP forward + backward on ({rows}, {config.lsr1.hidden_dim}): fused {fused_ms:.2f} ms, torch modules {modules_ms:.2f} ms"
        )
    if args.profile:
        print("\n" + profile_table(config) + "\n")
    print(
        json.dumps(
            {
                "preset": config.name,
                "overrides": args.overrides,
                "ms_per_meta_iter": round(today["cpu_ms"], 2),
                "ms_per_meta_iter_reference": round(ref["cpu_ms"], 2),
                "speedup": round(ref["cpu_ms"] / today["cpu_ms"], 3),
                "wall_ms_per_meta_iter": round(today["wall_ms"], 2),
                "wall_ms_per_meta_iter_reference": round(ref["wall_ms"], 2),
                "ms_per_meta_iter_2threads": round(sides["today_2threads"]["cpu_ms"], 2),
                "first_iteration_rel_diff": max(loss_diff, grad_diff),
                **result,
            }
        )
    )


if __name__ == "__main__":
    main()
