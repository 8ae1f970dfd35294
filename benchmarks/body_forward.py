"""Joints-only SMPL forward (lsr1.hmr.body.forward_joints) against smplx's full forward, at batch 256.

Both give the same 45 joints (24 SMPL joints + smplx's 21 extra-joint vertices); smplx poses all 6890
vertices to get them. Timed without a graph (the forward alone) and with a gradient w.r.t. the pose (what
the inner loop of HMR needs). Best of repeated runs (the least disturbed by other processes), threads
pinned; the synthetic body is used unless --body names a model folder.

    python benchmarks/body_forward.py [--batch 256] [--repeats 20] [--threads 1] [--body datasets/body]

Last line: one JSON object (smplx_ms, joints_only_ms, speedup, ...).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from collections.abc import Callable

import torch

from lsr1.hmr.body import BodyModel, forward_joints
from lsr1.hmr.rotations import axis_angle_to_matrix
from lsr1.hmr.synthetic_body import write_synthetic_body


def best_ms(fn: Callable[[], object], repeats: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        fn()
        times.append(time.perf_counter() - tic)
    return 1e3 * min(times)  # the run least disturbed by other processes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--body", default=None, help="smplx model folder or SMPL file (default: the synthetic body)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        body = BodyModel(args.body if args.body else write_synthetic_body(tmp).parent)
    model = body.joint_model()
    torch.manual_seed(0)
    pose, betas = 0.5 * torch.randn(args.batch, 72), torch.randn(args.batch, 10)

    def full(p: torch.Tensor) -> torch.Tensor:
        return body.smpl(betas=betas, body_pose=p[:, 3:], global_orient=p[:, :3]).joints

    def fast(p: torch.Tensor) -> torch.Tensor:
        return forward_joints(model, axis_angle_to_matrix(p.reshape(-1, 24, 3)), betas)[:, :45]

    def with_grad(forward: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], object]:
        def go() -> object:
            p = pose.clone().requires_grad_(True)
            return torch.autograd.grad(forward(p).square().sum(), p)

        return go

    with torch.no_grad():
        error = float((full(pose) - fast(pose)).abs().max())
        smplx_ms = best_ms(lambda: full(pose), args.repeats)
        fast_ms = best_ms(lambda: fast(pose), args.repeats)
    smplx_grad_ms = best_ms(with_grad(full), args.repeats)
    fast_grad_ms = best_ms(with_grad(fast), args.repeats)

    print(f"machine: {platform.machine()} {platform.processor() or ''}, torch {torch.__version__}, {args.threads} thread(s)")
    print(f"body: {args.body or 'synthetic'}, batch {args.batch}, max |joints-only - smplx| = {error:.2e} m")
    print(f"{'':26}{'smplx full':>12}{'joints-only':>13}{'speed-up':>10}")
    print(f"{'forward (ms)':26}{smplx_ms:12.2f}{fast_ms:13.2f}{smplx_ms / fast_ms:10.1f}")
    print(f"{'forward + grad (ms)':26}{smplx_grad_ms:12.2f}{fast_grad_ms:13.2f}{smplx_grad_ms / fast_grad_ms:10.1f}")
    print(
        json.dumps(
            {
                "smplx_ms": round(smplx_ms, 3),
                "joints_only_ms": round(fast_ms, 3),
                "speedup": round(smplx_ms / fast_ms, 2),
                "smplx_grad_ms": round(smplx_grad_ms, 3),
                "joints_only_grad_ms": round(fast_grad_ms, 3),
                "grad_speedup": round(smplx_grad_ms / fast_grad_ms, 2),
                "max_abs_error_m": error,
                "batch": args.batch,
                "threads": args.threads,
            }
        )
    )


if __name__ == "__main__":
    main()
