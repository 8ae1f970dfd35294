"""One call of the authors' L-SR1 step, ours (lsr1.learned.official) against theirs, with the same weights, at
B = 256 problems of D = 72 (HMR's pose), L = 4, eval mode, no graph, float32, one thread.

Theirs loops over the batch in Python for every buffer product; ours is batched. Their module is not part of
this repository: pass the folder that holds their package (the public GitHub repository gallif/lsr1, whose
`lsr1/optimizer/lsr1.py` defines `LSR1Optimizer`) to time it beside ours; without it only ours is timed.

    python benchmarks/official_step.py [--theirs /path/to/their/checkout] [--batch 256] [--dim 72] [--calls 20]

The floor: the matrix products of the three networks alone (every nn.Linear once, on the B*D coordinates),
which any float32 implementation of their module must do; `floor_fraction` is how much of our step they are.
Ours again with the networks in bfloat16 (`with_settings(network_dtype=torch.bfloat16)`, an opt-in
approximation): its time, and `bf16_step_error`, the largest relative distance of its steps from float32's
over the timed calls (both from the same iterates).

Threads pinned to 1 (torch.set_num_threads). Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import torch

from lsr1.learned.official import OfficialLSR1
from lsr1.pretrained import from_official


def median_ms(call: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor, g: torch.Tensor, calls: int) -> float:
    """Median ms of `calls` calls after 5 warm-up ones (which fill the buffer and drop the identity)."""
    times = []
    with torch.no_grad():
        for i in range(calls + 5):
            tic = time.perf_counter()
            x = x + call(x, g)
            if i >= 5:
                times.append((time.perf_counter() - tic) * 1e3)
            g = torch.tanh(x)  # any gradient-like input that changes from call to call
    return statistics.median(times)


def matmul_floor_ms(model: torch.nn.Module, rows: int, calls: int) -> float:
    """Median ms of the products of every nn.Linear of `model` on `rows` random rows, nothing else."""
    layers = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    inputs = [torch.randn(rows, layer.in_features) for layer in layers]
    times = []
    with torch.no_grad():
        for i in range(calls + 5):
            tic = time.perf_counter()
            for layer, h in zip(layers, inputs):
                torch.addmm(layer.bias, h, layer.weight.t())
            if i >= 5:
                times.append((time.perf_counter() - tic) * 1e3)
    return statistics.median(times)


def their_module(checkout: Path, buffer_size: int) -> torch.nn.Module:
    """LSR1Optimizer from their checkout, built as their HMR config builds it (L, alpha1 0.1, alpha2 0.001)."""
    spec = importlib.util.spec_from_file_location("their_lsr1", checkout / "lsr1" / "optimizer" / "lsr1.py")
    if spec is None or spec.loader is None or not (checkout / "lsr1" / "optimizer" / "lsr1.py").is_file():
        sys.exit(f"error: {checkout} has no lsr1/optimizer/lsr1.py (their repository's layout)")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    args = SimpleNamespace(
        inner_ang_t=0.01,
        inner_dir_vec_eps=1e-10,
        inner_buffer_size=buffer_size,
        inner_l_arch="mlp",
        inner_dim=128,
        alpha1=0.1,
        alpha2=0.001,
    )
    return module.LSR1Optimizer(args).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--theirs", type=Path, default=None, help="a checkout of their repository (gallif/lsr1)")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--dim", type=int, default=72)
    parser.add_argument("--buffer", type=int, default=4)
    parser.add_argument("--calls", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x, g = torch.randn(args.batch, args.dim), torch.randn(args.batch, args.dim)
    result: dict[str, float | int | str | None] = {"batch": args.batch, "dim": args.dim, "buffer": args.buffer, "threads": 1}
    if args.theirs is not None:
        theirs = their_module(args.theirs, args.buffer)
        ours = from_official(theirs.state_dict(), alpha1=0.1, alpha2=0.001, buffer_size=args.buffer)
        theirs.reset()
        result["theirs_ms"] = median_ms(lambda x, g: theirs(x, g)[0], x, g, args.calls)
    else:
        ours = OfficialLSR1(buffer_size=args.buffer, alpha1=0.1).eval()
    state = ours.init(x, g)

    def our_call(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        nonlocal state
        x_next, state, _ = ours.step(state, x, g)
        return x_next - x

    result["ours_ms"] = median_ms(our_call, x, g, args.calls)
    lowered, errors, lowered_times = ours.with_settings(network_dtype=torch.bfloat16), [], []
    state = ours.init(x, g)

    def lowered_call(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """bfloat16 networks from the float32 run's states and iterates, so that the errors do not compound."""
        nonlocal state
        tic = time.perf_counter()
        x_low, _, _ = lowered.step(state, x, g)
        elapsed = time.perf_counter() - tic
        x_next, state, _ = ours.step(state, x, g)
        errors.append(float((x_low - x_next).norm() / (x_next - x).norm()))
        lowered_times.append(elapsed * 1e3)
        return x_next - x

    median_ms(lowered_call, x, g, args.calls)
    result["ours_bf16_ms"] = statistics.median(lowered_times[5:])
    result["bf16_step_error"] = max(errors[5:])
    result["matmul_floor_ms"] = matmul_floor_ms(ours, args.batch * args.dim, args.calls)
    result["floor_fraction"] = result["matmul_floor_ms"] / result["ours_ms"]
    result["speedup"] = result["theirs_ms"] / result["ours_ms"] if "theirs_ms" in result else None  # type: ignore[operator]
    result["speedup_bf16"] = result["theirs_ms"] / result["ours_bf16_ms"] if "theirs_ms" in result else None  # type: ignore[operator]
    print(
        f"machine: {platform.machine()}, torch {torch.__version__}, 1 thread; B = {args.batch}, D = {args.dim}, L = {args.buffer}, float32"
    )
    if "theirs_ms" in result:
        print(f"theirs: {result['theirs_ms']:.1f} ms per call")
    print(f"ours:   {result['ours_ms']:.1f} ms per call" + (f"  ({result['speedup']:.1f}x faster)" if result["speedup"] else ""))
    print(f"floor:  {result['matmul_floor_ms']:.1f} ms of matrix products alone ({100 * result['floor_fraction']:.0f} % of ours)")
    print(
        f"ours, bfloat16 networks: {result['ours_bf16_ms']:.1f} ms per call"
        + (f"  ({result['speedup_bf16']:.1f}x faster than theirs)" if result["speedup_bf16"] else "")
        + f"; steps within {100 * result['bf16_step_error']:.2f} % of float32's"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
