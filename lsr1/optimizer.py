"""`lsr1.LearnedSR1`: a trained L-SR1 as a drop-in `torch.optim.Optimizer` for any model's parameters.

Like `torch.optim.LBFGS`, `step` takes a closure that recomputes the loss (and its gradients). All
parameters are flattened into one vector x (B = 1, N = number of elements) and the learned modules run in
eval mode under no_grad; the L-SR1 state (buffer of v, previous x, g, d) is kept between steps and goes
through `state_dict` / `load_state_dict`. The math lives in `lsr1.learned.sr1`; this is only the facade.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from lsr1.learned.sr1 import LSR1, LSR1State
from lsr1.optim.linesearch import armijo

__all__ = ["LearnedSR1"]


class LearnedSR1(torch.optim.Optimizer):
    """L-SR1 over all parameters at once.

    pretrained: a shipped model name (`lsr1.pretrained.available()`) or an `LSR1` module. The default,
        "mix_lbfgs_long", was meta-trained on quadratics, least squares and logistic regression at N = 5 to
        50 (configs/mix.yaml) with its learned terms on top of an L-BFGS inverse Hessian of the last 8
        steps (`lsr1.lbfgs_memory`), and on long trajectories: each 16-step unroll starts after 0 to 48
        detached steps (`meta.burn_in`). It has the best validation loss of the shipped general-purpose
        models at 16 and at 64 steps (docs/log.md §9). "mix_lbfgs" is the same without the burn-in,
        "mix" without the L-BFGS part either. A name is loaded with the step index of its global features
        held at the last step meta-training reached (`lsr1.pretrained.load(name, cap_step_index=True)`):
        past it, the model would see an index it never saw. A module is used as it is.
    buffer_size: L at use time (default: as trained).
    line_search: "armijo" halves the learned step until the loss decreases enough (at most
        `max_backtracks` closure calls, else no move; the project's one Armijo search, `lsr1.optim.armijo`,
        on the closure), which keeps a model trained on other problems from diverging on yours; None takes
        the learned step as it is, as in the paper.
    max_iter: L-SR1 iterations per `step` call, as in torch.optim.LBFGS. Within a call, the line search's
        accepted evaluation (loss and gradients at the new point) starts the next iteration, so an
        iteration costs one closure call where the first step is accepted, against two for max_iter = 1
        (each call evaluates its starting point). Use more than 1 for a full-batch loss; keep 1 where
        each closure draws a new minibatch.
    max_eval: closure calls per `step` call at most (default: no limit but max_iter's); where the line
        search would need more, the parameters stay at the last accepted iterate.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        pretrained: str | LSR1 = "mix_lbfgs_long",
        buffer_size: int | None = None,
        line_search: str | None = "armijo",
        max_backtracks: int = 10,
        max_iter: int = 1,
        max_eval: int | None = None,
    ) -> None:
        super().__init__(params, defaults={})
        if line_search not in (None, "armijo"):
            raise ValueError(f"line_search must be 'armijo' or None, got {line_search!r}")
        if max_iter < 1 or (max_eval is not None and max_eval < 1):
            raise ValueError(f"max_iter and max_eval must be >= 1, got {max_iter} and {max_eval}")
        self.line_search, self.max_backtracks, self.max_iter, self.max_eval = line_search, max_backtracks, max_iter, max_eval
        if isinstance(pretrained, str):
            from lsr1 import pretrained as shipped

            model = shipped.load(pretrained, cap_step_index=True)
        elif isinstance(pretrained, LSR1):
            model = pretrained
        else:
            raise TypeError(f"pretrained must be a model name or an LSR1 module, got {type(pretrained).__name__}")
        model = model.with_settings(buffer_size=buffer_size) if buffer_size is not None else model
        first = self._params()[0]
        dtype = first.dtype if first.is_floating_point() else torch.float32
        self.model = model.to(device=first.device, dtype=dtype).eval()

    def _params(self) -> list[Tensor]:
        params = [p for group in self.param_groups for p in group["params"]]
        if not params:
            raise ValueError("LearnedSR1 got no parameters")
        return params

    def _flat(self, params: list[Tensor], grads: bool) -> Tensor:
        parts = []
        for p in params:
            if not grads:
                parts.append(p.detach().reshape(-1))
            elif p.grad is None:
                parts.append(torch.zeros(p.numel(), dtype=p.dtype, device=p.device))
            elif p.grad.is_sparse:
                raise RuntimeError("LearnedSR1 does not support sparse gradients")
            else:
                parts.append(p.grad.detach().reshape(-1))
        return torch.cat([t.to(device=self._device, dtype=self._dtype) for t in parts]).unsqueeze(0)  # (1, N)

    @property
    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def _dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor:  # type: ignore[override]
        """Up to `max_iter` L-SR1 iterations; returns the loss at the starting point. closure: zeroes the
        gradients, computes the loss, calls backward, returns the loss."""
        if closure is None:
            raise RuntimeError("LearnedSR1.step needs a closure that re-evaluates the loss, as torch.optim.LBFGS does")
        with torch.enable_grad():
            loss = closure()
        params, f, evaluations = self._params(), float(loss.detach()), 1
        budget = math.inf if self.max_eval is None else self.max_eval
        for iteration in range(self.max_iter):
            if self.line_search == "armijo" and evaluations == budget:  # no call left to test a step
                break
            x, g = self._flat(params, grads=False), self._flat(params, grads=True)
            if not bool(torch.isfinite(g).all()):
                raise RuntimeError("LearnedSR1: the gradient contains NaN or Inf; the parameters were left unchanged")
            slot = self.state[params[0]]
            state = LSR1State(**{k: slot[k] for k in LSR1State._fields}) if slot else self.model.init(x, g)
            x_next, state, _ = self.model.step(state, x, g)
            self.state[params[0]] = state._asdict()
            if self.line_search == "armijo":
                accepted, calls = self._backtrack(params, closure, f, x, g, x_next, int(min(self.max_backtracks, budget - evaluations)))
                evaluations += calls
                if accepted is not None:
                    f = accepted
                    continue
            else:
                self._write(params, x_next)
            if iteration + 1 == self.max_iter or evaluations == budget:
                break
            with torch.enable_grad():  # the gradients at the new point (at x again after no acceptable step)
                f = float(closure().detach())
            evaluations += 1
        return loss

    def _write(self, params: list[Tensor], x: Tensor) -> None:
        offset = 0
        for p in params:
            p.copy_(x[0, offset : offset + p.numel()].view_as(p))
            offset += p.numel()

    def _backtrack(
        self, params: list[Tensor], closure: Callable[[], Tensor], f0: float, x: Tensor, g: Tensor, x_next: Tensor, tries: int
    ) -> tuple[float | None, int]:
        """Armijo from the learned step x_next, halving (`lsr1.optim.armijo` on the closure), in at most `tries`
        closure calls: the accepted f (the closure's gradients are then those of the parameters), or None
        after staying at x; and the calls made. Trial t writes x + t (x_next - x), x_next itself at t = 1."""
        step = x_next - x

        def phi(t: Tensor) -> Tensor:
            scale = float(t)
            self._write(params, x_next if scale == 1.0 else x + scale * step)
            with torch.enable_grad():
                return torch.tensor([float(closure().detach())], dtype=torch.float64)

        as_line = lambda value: torch.tensor([value], dtype=torch.float64)  # noqa: E731
        t, f, calls = armijo(phi, as_line(f0), as_line(float((g * step).sum())), as_line(1.0), max_evals=tries, shrink="halve")
        if float(t) == 0.0:
            self._write(params, x)  # no acceptable step: stay
            return None, int(calls)
        return float(f), int(calls)
