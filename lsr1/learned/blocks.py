"""Independent learned optimizers on consecutive blocks of coordinates: the authors' HMR, which runs one L-SR1
on the 72 pose values and another on the 10 shape values, each with its own weights, buffer, BatchNorm
statistics and renormalisation (so B~ is block-diagonal between pose and shape).

x = [x_1, ..., x_m] with block i of sizes[i] coordinates; block i's learner sees only (x_i, g_i), and the
meta-loss penalty is the sum of the blocks' penalties. Diagnostics are prefixed with the block's name.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from lsr1.learned.base import LearnedOptimizer
from lsr1.optim.base import Info, check_pair

__all__ = ["Blocks"]


class Blocks(LearnedOptimizer):
    """parts: name -> (learner, number of coordinates), in the order of the blocks in x."""

    def __init__(self, parts: dict[str, tuple[LearnedOptimizer, int]]) -> None:
        super().__init__()
        if not parts or any(size < 1 for _, size in parts.values()):
            raise ValueError(f"Blocks: needs at least one block of >= 1 coordinates, got sizes {[s for _, s in parts.values()]}")
        self.parts = nn.ModuleDict({name: learner for name, (learner, _) in parts.items()})
        self.sizes = [size for _, size in parts.values()]

    def _split(self, t: Tensor) -> tuple[Tensor, ...]:
        return t.split(self.sizes, dim=-1)

    def _each(self) -> list[tuple[str, LearnedOptimizer]]:
        return list(self.parts.items())

    def init(self, x0: Tensor, g0: Tensor) -> tuple[Any, ...]:
        check_pair(x0, g0, "Blocks")
        if x0.shape[1] != sum(self.sizes):
            raise ValueError(f"Blocks.init: x0 has {x0.shape[1]} coordinates, the blocks {self.sizes} sum to {sum(self.sizes)}")
        return tuple(part.init(x, g) for (_, part), x, g in zip(self._each(), self._split(x0), self._split(g0)))

    def step(self, state: tuple[Any, ...], x: Tensor, g: Tensor) -> tuple[Tensor, tuple[Any, ...], Info]:
        steps, states, info = [], [], {}
        for (name, part), s, xi, gi in zip(self._each(), state, self._split(x), self._split(g)):
            x_next, s_next, part_info = part.step(s, xi, gi)
            steps.append(x_next)
            states.append(s_next)
            info.update({f"{name}_{key}": value for key, value in part_info.items()})
        return torch.cat(steps, dim=-1), tuple(states), info

    def meta_penalty(self, state: tuple[Any, ...], x: Tensor, g: Tensor) -> tuple[Tensor, Info]:
        total, info = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device), {}
        for (name, part), s, xi, gi in zip(self._each(), state, self._split(x), self._split(g)):
            penalty, part_info = part.meta_penalty(s, xi, gi)
            total = total + penalty
            info.update({f"{name}_{key}": value for key, value in part_info.items()})
        return total, info

    def with_step_length(self, state: tuple[Any, ...], t: Tensor) -> tuple[Any, ...]:
        return tuple(part.with_step_length(s, t) for (_, part), s in zip(self._each(), state))

    def with_active(self, state: tuple[Any, ...], active: Tensor) -> tuple[Any, ...]:
        return tuple(part.with_active(s, active) for (_, part), s in zip(self._each(), state))

    def with_parts(self, change: Any) -> Blocks:
        """A new Blocks of change(learner) for each block's learner (the weights shared where change shares
        them), e.g. `lsr1.learned.without_learned_terms`."""
        other = Blocks({name: (change(part), size) for (name, part), size in zip(self._each(), self.sizes)})
        return other.train(self.training)
