"""Inner problems: a batch of B objectives R^N -> R with gradients and Hessian-vector products (docs/design.md §2).

A problem is `value(x) -> (B,)`, `grad(x) -> (B, N)`, `hvp(x, v) -> (B, N)`, `x0 (B, N)` and `x_star (B, N)`
where the optimum is known; optional hooks give a meta-loss term other than f (`meta_objective`), task
metrics (`evaluation_metrics`) and observations a learner may condition on (`context`). Analytic tasks give closed forms; `hvp` falls back to double backward.
Problem sets are seeded: the same seed gives the same problems on any machine or worker count.
"""

from __future__ import annotations

import abc
import typing

import torch
from torch import Tensor

from lsr1.seeds import derive_seed, make_generator

__all__ = ["Problem", "derive_seed", "make_generator"]


class Problem(abc.ABC):
    """A batch of B independent objectives of dimension N, with starting points x0 (B, N)."""

    def __init__(self, x0: Tensor) -> None:
        if x0.dim() != 2:
            raise ValueError(f"{type(self).__name__}: x0 must have shape (B, N), got {tuple(x0.shape)}")
        if not bool(torch.isfinite(x0).all()):
            raise ValueError(f"{type(self).__name__}: x0 contains NaN or Inf")
        self.x0 = x0

    @property
    def batch_size(self) -> int:
        return self.x0.shape[0]

    @property
    def dim(self) -> int:
        return self.x0.shape[1]

    @abc.abstractmethod
    def value(self, x: Tensor) -> Tensor:
        """x: (B, N) -> f(x): (B,)."""

    @abc.abstractmethod
    def grad(self, x: Tensor) -> Tensor:
        """x: (B, N) -> grad f(x): (B, N)."""

    def hvp(self, x: Tensor, v: Tensor) -> Tensor:
        """Hessian-vector product H(x) v: (B, N), by double backward where no closed form is given."""
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self.value(x).sum(), x, create_graph=True)
            (hv,) = torch.autograd.grad((g * v.detach()).sum(), x)
        return hv

    @property
    def x_star(self) -> Tensor | None:
        """The global minimiser (B, N), or None where it is not known."""
        return None

    @property
    def context(self) -> Tensor | None:
        """Observations (B, C) a learned optimizer may condition on (HMR: the keypoints); None by default."""
        return None

    def meta_objective(self, x: Tensor, value: Tensor, initial: bool = False) -> Tensor:
        """This problem's term of the meta-loss at iterate x (B, N), given value = self.value(x): (B,); initial:
        x is x_0 (HMR's official meta-loss scores its joint terms there alone).

        Default: the value itself (Eq. 9). Tasks with supervision add theirs (HMR, Eq. 13).
        """
        return value

    def evaluation_metrics(self, x: Tensor) -> dict[str, Tensor]:
        """Task-specific errors of iterates x (B, N), name -> (B,), lower is better (HMR: PA-MPJPE in mm).

        `lsr1.meta.validate` reports their means at the last iterate. Default: none.
        """
        return {}

    def finite(self) -> bool:
        """Whether every floating tensor of the problem (its data, x0) is finite: a NaN in a batch shows here."""
        return all(bool(torch.isfinite(t).all()) for t in vars(self).values() if isinstance(t, Tensor) and t.is_floating_point())

    # Every tensor attribute of a problem is batch-first, so these work for any task.

    def _map(self, fn: typing.Callable[[Tensor], Tensor]) -> Problem:
        clone = object.__new__(type(self))
        for key, value in vars(self).items():
            setattr(clone, key, fn(value) if isinstance(value, Tensor) else value)
        return clone

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Problem:
        """A copy with every tensor moved (and floating tensors cast to dtype)."""
        return self._map(lambda t: t.to(device=device, dtype=dtype if dtype and t.is_floating_point() else None))

    def select(self, index: slice | Tensor) -> Problem:
        """The sub-batch `index` of the problems (e.g. one worker's share: slice(rank, None, world_size))."""
        return self._map(lambda t: t[index])
