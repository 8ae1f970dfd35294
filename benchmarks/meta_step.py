"""Milliseconds per meta-iteration of the `quadratic` preset against its matmul-only compute bound.

The bound: the matmul FLOPs of one meta-iteration (forward and backward of every Linear layer of E, P and G
over K unrolled steps) divided by this machine's single-thread matmul rate, measured in this run on the
same matrix shapes. efficiency = bound / measured time on 1 thread; everything else (BatchNorm, PReLU,
autograd bookkeeping, the optimizer) is what keeps it below 1.

    python benchmarks/meta_step.py [--iterations 20] [--config configs/quadratic.yaml]

Threads are pinned with torch.set_num_threads (1, then 2). Last line: one JSON object.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
from torch import nn

from lsr1.config import load_config
from lsr1.learned import make_learner
from lsr1.meta import MetaLoss, meta_step
from lsr1.tasks import problem_set


def time_meta_iterations(config, iterations: int, threads: int) -> float:
    """Median ms per meta-iteration over `iterations` (after 3 warm-up iterations)."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    learner = make_learner(config)
    loss = MetaLoss(learner, config.meta.unroll_steps)
    opt = torch.optim.AdamW(learner.parameters(), lr=config.meta.lr, weight_decay=config.meta.weight_decay)
    problems = [problem_set(config.task, "train", i) for i in range(iterations + 3)]
    times = []
    for i, problem in enumerate(problems):
        tic = time.perf_counter()
        meta_step(loss, opt, problem)
        if i >= 3:
            times.append(time.perf_counter() - tic)
    return 1e3 * statistics.median(times)


def profile_table(config, iterations: int = 5, rows: int = 12) -> str:
    """Where one meta-iteration's time goes (1 thread): torch.profiler's top operators by self time."""
    from torch.profiler import profile

    torch.set_num_threads(1)
    torch.manual_seed(0)
    learner = make_learner(config)
    loss = MetaLoss(learner, config.meta.unroll_steps)
    opt = torch.optim.AdamW(learner.parameters(), lr=config.meta.lr)
    problems = [problem_set(config.task, "train", i) for i in range(iterations + 2)]
    for problem in problems[:2]:
        meta_step(loss, opt, problem)
    with profile() as prof:
        for problem in problems[2:]:
            meta_step(loss, opt, problem)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    lines = [f"{'operator':44}{'ms / iteration':>15}{'share':>8}{'calls / iteration':>19}"]
    for e in events[:rows]:
        lines.append(f"{e.key[:43]:44}{e.self_cpu_time_total / 1e3 / iterations:15.1f}{e.self_cpu_time_total / total:8.1%}{e.count / iterations:19.0f}")
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/quadratic.yaml")
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--profile", action="store_true", help="also print where the time goes (torch.profiler)")
    args = parser.parse_args()
    config = load_config(args.config)

    shapes = gemm_shapes(config)
    per_shape = {shape: matmul_ms(*shape) for shape in set(shapes)}
    flops = sum(2 * m * k * n for m, k, n in shapes)
    bound_ms = sum(per_shape[s] for s in shapes)
    ms_1 = time_meta_iterations(config, args.iterations, threads=1)
    ms_2 = time_meta_iterations(config, args.iterations, threads=2)
    rows = config.task.batch_size * config.task.dim
    fused_ms, modules_ms = fused_vs_modules_ms(rows, config.lsr1.hidden_dim)

    t, k, big = config.task, config.meta, max(per_shape, key=lambda s: s[0] * s[1] * s[2])
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, threads pinned 1 / 2")
    print(f"preset {config.name}: batch {t.batch_size}, N {t.dim}, K {k.unroll_steps}, L {config.lsr1.buffer_size}")
    print(f"matmul FLOPs per meta-iteration: {flops / 1e9:.2f} GFLOP in {len(shapes)} matmuls")
    print(f"single-thread rate on {big}: {2 * big[0] * big[1] * big[2] / per_shape[big] / 1e6:.1f} GFLOP/s")
    print(f"{'':28}{'ms / meta-iteration':>20}")
    print(f"{'matmul-only bound':28}{bound_ms:20.1f}")
    print(f"{'measured, 1 thread':28}{ms_1:20.1f}")
    print(f"{'measured, 2 threads':28}{ms_2:20.1f}")
    print(f"efficiency (bound / 1 thread): {bound_ms / ms_1:.2f}")
    print(f"one MLP forward + backward on ({rows}, {config.lsr1.hidden_dim}): fused {fused_ms:.2f} ms, torch modules {modules_ms:.2f} ms")
    if args.profile:
        print("\n" + profile_table(config) + "\n")
    print(json.dumps({
        "ms_per_meta_iter": round(ms_1, 2),
        "ms_per_meta_iter_2threads": round(ms_2, 2),
        "flop_bound_ms": round(bound_ms, 2),
        "efficiency": round(bound_ms / ms_1, 3),
        "gflop_per_meta_iter": round(flops / 1e9, 3),
        "mlp_fused_ms": round(fused_ms, 3),
        "mlp_torch_modules_ms": round(modules_ms, 3),
    }))


if __name__ == "__main__":
    main()
