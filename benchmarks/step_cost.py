"""Cost of one L-SR1 step against one L-BFGS step on the same problem (N = 1000, L = m = 64).

L-SR1 runs its three element-wise MLPs over all N coordinates (eval mode, no graph) and applies
B g = sum v (v . g) from the (1, L, N) buffer: memory O(L N), no N x N matrix. L-BFGS does its two-loop
recursion plus a strong-Wolfe line search (its function evaluations are included in its time).

    python benchmarks/step_cost.py [--dim 1000] [--buffer 64] [--steps 50]

Threads pinned to 1 (torch.set_num_threads). Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from lsr1 import pretrained
from lsr1.config import LSR1Config
from lsr1.learned import LSR1
from lsr1.optim import LBFGS
from lsr1.tasks import rosenbrock


def ms_per_step(optimizer, problem, steps: int) -> tuple[float, float]:
    """Median ms per step (after 5 warm-up steps) and peak buffer bytes of the optimizer state."""
    x = problem.x0
    g = problem.grad(x)
    state = optimizer.init(x, g)
    times = []
    with torch.no_grad():
        for i in range(steps + 5):
            tic = time.perf_counter()
            x, state, _ = optimizer.step(state, x, g)
            g = problem.grad(x)
            if i >= 5:
                times.append(time.perf_counter() - tic)
    state_bytes = sum(t.numel() * t.element_size() for t in _tensors(state))
    return 1e3 * statistics.median(times), state_bytes


def _tensors(value):
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    return []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=1000)
    parser.add_argument("--buffer", type=int, default=64)
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    torch.set_num_threads(1)
    problem = rosenbrock(1, args.dim, seed=0)
    model = pretrained.load("rosenbrock") if "rosenbrock" in pretrained.available() else LSR1(LSR1Config()).eval()
    lsr1 = model.eval().with_settings(buffer_size=args.buffer)
    lsr1_ms, lsr1_bytes = ms_per_step(lsr1, problem, args.steps)
    lbfgs_ms, lbfgs_bytes = ms_per_step(LBFGS(problem, memory=args.buffer), problem, args.steps)
    print(f"machine: {platform.machine()}, torch {torch.__version__}, 1 thread; Rosenbrock N = {args.dim}, L = m = {args.buffer}, float32")
    print(f"{'':10}{'ms / step':>12}{'state MiB':>12}")
    print(f"{'L-SR1':10}{lsr1_ms:12.2f}{lsr1_bytes / 2**20:12.2f}")
    print(f"{'L-BFGS':10}{lbfgs_ms:12.2f}{lbfgs_bytes / 2**20:12.2f}")
    print(f"an N x N matrix would be {args.dim**2 * 4 / 2**20:.1f} MiB")
    print(
        json.dumps(
            {
                "lsr1_ms": round(lsr1_ms, 3),
                "lbfgs_ms": round(lbfgs_ms, 3),
                "ratio": round(lsr1_ms / lbfgs_ms, 3),
                "lsr1_state_mib": round(lsr1_bytes / 2**20, 3),
                "lbfgs_state_mib": round(lbfgs_bytes / 2**20, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
