"""The one optimizer interface (docs/design.md §2), shared by hand-designed and learned optimizers.

Every optimizer is batched over B independent problems of dimension N and functional: the state is a value
(a NamedTuple of tensors) returned by `step`, never an attribute mutated in place, so meta-training can
backpropagate through a trajectory and `lsr1.meta.run` evaluates any optimizer the same way:

    state = opt.init(x0, g0)                  # x0, g0: (B, N)
    x, state, info = opt.step(state, x, g)    # info: dict of (B,) tensors

Optimizers that need more than gradients (line searches, Hessian-vector products) take an `Objective` in
their constructor: any batched f with its gradient and Hessian-vector products, such as every problem of
`lsr1.tasks`.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

__all__ = ["Info", "Objective", "Optimizer", "check_pair", "fifo_push"]

Info = dict[str, Tensor]


@runtime_checkable
class Optimizer(Protocol):
    """A batched functional optimizer: `init` builds the state, `step` takes one iteration."""

    def init(self, x0: Tensor, g0: Tensor) -> Any:
        """x0, g0: (B, N) starting point and its gradient -> state."""
        ...

    def step(self, state: Any, x: Tensor, g: Tensor) -> tuple[Tensor, Any, Info]:
        """x, g: (B, N) current iterate (the one the previous step returned) and its gradient.

        Returns the next iterate (B, N), the new state and per-problem diagnostics.
        """
        ...


class Objective(Protocol):
    """What a searching or curvature-using optimizer asks of its problem: B objectives at once."""

    def value(self, x: Tensor) -> Tensor:
        """x: (B, N) -> f(x): (B,)."""
        ...

    def grad(self, x: Tensor) -> Tensor:
        """x: (B, N) -> grad f(x): (B, N)."""
        ...

    def hvp(self, x: Tensor, v: Tensor) -> Tensor:
        """x, v: (B, N) -> the Hessian of f at x times v: (B, N)."""
        ...


def check_pair(x: Tensor, g: Tensor, who: str) -> None:
    """Raise a clear error unless x and g are finite floating (B, N) tensors of the same shape."""
    for name, t in (("x0", x), ("g0", g)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{who}.init: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 2:
            raise ValueError(f"{who}.init: {name} must have shape (B, N), got {tuple(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"{who}.init: {name} must be a floating tensor, got {t.dtype}")
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{who}.init: {name} contains NaN or Inf")
    if x.shape != g.shape:
        raise ValueError(f"{who}.init: x0 {tuple(x.shape)} and g0 {tuple(g.shape)} must have the same shape")


def fifo_push(buffer: Tensor, item: Tensor, accept: Tensor | None = None) -> Tensor:
    """Append item (B, ...) to a (B, L, ...) FIFO buffer held oldest-first, dropping the oldest entry.

    Where `accept` (B,) is False the problem's buffer is left unchanged.
    """
    pushed = torch.cat([buffer[:, 1:], item.unsqueeze(1)], dim=1)
    if accept is None:
        return pushed
    keep = accept.reshape(-1, *([1] * (buffer.dim() - 1)))
    return torch.where(keep, pushed, buffer)
