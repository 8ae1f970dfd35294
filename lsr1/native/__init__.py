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
    def supports(*tensors: Tensor | None) -> bool:
        """True when every tensor given is a CPU float32/float64 tensor of one dtype (None is skipped)."""
        given = [t for t in tensors if t is not None]
        return all(t.device.type == "cpu" and t.dtype == given[0].dtype for t in given) and given[0].dtype in SUFFIX

    def forward(
        self, z: Tensor, bias: Tensor, gamma: Tensor, beta: Tensor, slope: Tensor | None, residual: Tensor | None,
        share: Tensor | None, eps: float, running_mean: Tensor, running_var: Tensor, factor: float, unbias: float,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """z: contiguous (R, C) x W^T, centred in place; the running statistics are updated in place.
        Returns out, rstd, scale."""
        rows, cols = z.shape
        out = torch.empty_like(z)
        rstd, scale, *work = z.new_empty(4, cols).unbind(0)
        self._forward[z.dtype](
            z.data_ptr(), _address(residual), out.data_ptr(), bias.data_ptr(), gamma.data_ptr(), beta.data_ptr(),
            _address(slope), _address(share), eps, rows, cols, running_mean.data_ptr(), running_var.data_ptr(), factor,
            unbias, rstd.data_ptr(), scale.data_ptr(), work[0].data_ptr(),
        )  # fmt: skip
        return out, rstd, scale

    def backward(
        self, grad_out: Tensor, centered: Tensor, rstd: Tensor, scale: Tensor, beta: Tensor, slope: Tensor | None,
        share: Tensor | None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None]:
        """Returns grad_z (R, C) and the gradients of the bias, gamma, beta and slope."""
        rows, cols = centered.shape
        grad_out = grad_out.contiguous()
        grad_z = torch.empty_like(centered)
        grad_bias, grad_gamma, grad_beta, grad_slope, *work = centered.new_empty(8, cols).unbind(0)  # 4 C of scratch
        self._backward[centered.dtype](
            grad_out.data_ptr(), centered.data_ptr(), rstd.data_ptr(), scale.data_ptr(), beta.data_ptr(), _address(slope),
            _address(share), rows, cols, grad_z.data_ptr(), grad_bias.data_ptr(), grad_gamma.data_ptr(), grad_beta.data_ptr(),
            grad_slope.data_ptr(), work[0].data_ptr(),
        )  # fmt: skip
        return grad_z, grad_bias, grad_gamma, grad_beta, grad_slope[:1] if slope is not None else None


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
