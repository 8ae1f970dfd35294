"""C kernels for the CPU, compiled with the system's C compiler on first use and loaded with ctypes.

`linear_bn()` returns the fused training-mode BatchNorm kernels of `linear_bn.c` (lsr1/nn.py calls them
between torch's matmuls), or None where they cannot be had: no C compiler, a failed build, or
LSR1_NATIVE=0. Then lsr1/nn.py computes the same with torch's operators, only slower, and says so once.
The library is built into a cache folder (LSR1_CACHE_DIR, else $XDG_CACHE_HOME/lsr1, else ~/.cache/lsr1)
under a name that hashes the source, the flags and the platform, so an edited source or another machine
gets its own build; concurrent first uses (Ray workers) each write a private file and rename it into place.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["LinearBatchNormKernels", "cache_dir", "linear_bn"]

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
SOURCES = (HERE / "linear_bn_kernels.c", HERE / "linear_bn.c")
# no FMA contraction (float64 agrees with torch to rounding); no errno or trapping semantics, so that the
# compiler may vectorise the sqrt and the PReLU select; no -march: the build must run on any CPU of the arch
FLAGS = ("-O3", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math", "-shared", "-fPIC")
SUFFIX = {torch.float32: "f32", torch.float64: "f64"}
_ptr, _long, _double = ctypes.c_void_p, ctypes.c_long, ctypes.c_double
FORWARD_ARGS = [_ptr] * 8 + [_double, _long, _long, _ptr, _ptr, _double, _double, _ptr, _ptr, _ptr]
BACKWARD_ARGS = [_ptr] * 7 + [_long, _long] + [_ptr] * 6


def cache_dir() -> Path:
    if os.environ.get("LSR1_CACHE_DIR"):
        return Path(os.environ["LSR1_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lsr1"


def _address(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


class LinearBatchNormKernels:
    """The two entry points of linear_bn.c for float32 and float64 contiguous CPU tensors."""

    def __init__(self, library: ctypes.CDLL) -> None:
        self._forward, self._backward = {}, {}
        for dtype, suffix in SUFFIX.items():
            forward, backward = getattr(library, f"linear_bn_forward_{suffix}"), getattr(library, f"linear_bn_backward_{suffix}")
            forward.argtypes, forward.restype = FORWARD_ARGS, None
            backward.argtypes, backward.restype = BACKWARD_ARGS, None
            self._forward[dtype], self._backward[dtype] = forward, backward

    @staticmethod
    def supports(x: Tensor, weight: Tensor, residual: Tensor | None, share: Tensor | None) -> bool:
        """True for float32/float64 CPU tensors of one dtype (the BatchNorm's own parameters have the
        Linear's dtype and device: one module, one .to())."""
        dtype = x.dtype
        return (
            dtype in SUFFIX
            and x.device.type == "cpu"
            and weight.dtype == dtype
            and weight.device.type == "cpu"
            and (residual is None or (residual.dtype == dtype and residual.device.type == "cpu"))
            and (share is None or (share.dtype == dtype and share.device.type == "cpu"))
        )

    def forward(
        self,
        z: Tensor,
        bias: Tensor,
        gamma: Tensor,
        beta: Tensor,
        slope: Tensor | None,
        residual: Tensor | None,
        share: Tensor | None,
        eps: float,
        running_mean: Tensor,
        running_var: Tensor,
        factor: float,
        unbias: float,
    ) -> tuple[Tensor, Tensor]:
        """z: contiguous (R, C) x W^T, centred in place; the running statistics are updated in place.
        Returns out and (4, C) statistics for the backward (rstd, scale, then scratch)."""
        rows, cols = z.shape
        out = torch.empty_like(z)
        stats = z.new_empty(4, cols)
        base, row = stats.data_ptr(), cols * stats.element_size()
        self._forward[z.dtype](
            z.data_ptr(),
            _address(residual),
            out.data_ptr(),
            bias.data_ptr(),
            gamma.data_ptr(),
            beta.data_ptr(),
            _address(slope),
            _address(share),
            eps,
            rows,
            cols,
            running_mean.data_ptr(),
            running_var.data_ptr(),
            factor,
            unbias,
            base,
            base + row,
            base + 2 * row,
        )
        return out, stats

    def backward(
        self, grad_out: Tensor, centered: Tensor, stats: Tensor, beta: Tensor, slope: Tensor | None, share: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None]:
        """Returns grad_z (R, C) and the gradients of the bias, gamma, beta and slope."""
        rows, cols = centered.shape
        grad_out = grad_out.contiguous()
        grad_z = torch.empty_like(centered)
        grads = centered.new_empty(8, cols)  # bias, gamma, beta, the slope's (first entry), 4 C of scratch
        base, row, rstd = grads.data_ptr(), cols * grads.element_size(), stats.data_ptr()
        self._backward[centered.dtype](
            grad_out.data_ptr(),
            centered.data_ptr(),
            rstd,
            rstd + row,
            beta.data_ptr(),
            _address(slope),
            _address(share),
            rows,
            cols,
            grad_z.data_ptr(),
            base,
            base + row,
            base + 2 * row,
            base + 3 * row,
            base + 4 * row,
        )
        return grad_z, grads[0], grads[1], grads[2], grads[3, :1] if slope is not None else None


def _build(compiler: str) -> Path:
    """Compile the kernels into the cache (once per source, flags and platform); the path of the library."""
    digest = hashlib.sha256()
    for part in (*(s.read_bytes() for s in SOURCES), " ".join(FLAGS).encode(), compiler.encode(), platform.platform().encode()):
        digest.update(part)
    target = cache_dir() / f"linear_bn-{platform.machine()}-{digest.hexdigest()[:16]}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, private = tempfile.mkstemp(dir=target.parent, prefix=target.stem + ".", suffix=".so.tmp")
    os.close(fd)
    try:
        done = subprocess.run([compiler, *FLAGS, str(SOURCES[0]), "-o", private, "-lm"], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{compiler} failed on {SOURCES[0]}: {done.stderr.strip()[-2000:]}")
        os.replace(private, target)
    finally:
        if os.path.exists(private):
            os.unlink(private)
    return target


@functools.cache
def linear_bn() -> LinearBatchNormKernels | None:
    """The kernels, built on first use; None (with one warning) where they cannot be built or loaded."""
    if os.environ.get("LSR1_NATIVE", "1") == "0":
        return None
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    fallback = "BatchNorm layers run on torch's operators instead (slower on the CPU, the same results)"
    if compiler is None:
        log.warning("lsr1.native: no C compiler (set CC or install gcc); %s", fallback)
        return None
    try:
        return LinearBatchNormKernels(ctypes.CDLL(str(_build(compiler))))
    except (OSError, RuntimeError, subprocess.SubprocessError) as error:
        log.warning("lsr1.native: cannot build %s: %s; %s", SOURCES[0].name, error, fallback)
        return None
