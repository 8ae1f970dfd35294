"""Small smoke-test helpers reused by the per-module tests (one call checks a whole contract)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from lsr1.meta import MetaLoss, meta_step
from lsr1.optim.base import Optimizer
from lsr1.tasks import Problem

BUCKET = "lsr1-test"  # the bucket that the s3 fixture (tests/conftest.py) creates on its S3 server


def logged_steps(client: Any, run_id: str) -> list[int]:
    """The iterations an MLflow run has logged, sorted: the steps of its meta learning rate, which every iteration
    logs once and which is always finite. (`loss` is not stored on a skipped step, where it is NaN or Inf, and
    whether a step overflows is decided by float rounding, which differs between CPUs.)"""
    return sorted(m.step for m in client.get_metric_history(run_id, "lr"))


def assert_close(a: Tensor, b: Tensor, atol: float = 1e-10, rtol: float = 1e-10, what: str = "") -> None:
    torch.testing.assert_close(a, b, atol=atol, rtol=rtol, msg=lambda m: f"{what}: {m}")


def _tensors(state: Any) -> list[Tensor]:
    if isinstance(state, Tensor):
        return [state]
    if isinstance(state, (tuple, list)):
        return [t for item in state for t in _tensors(item)]
    return []


def smoketest_optimizer(opt: Optimizer, problem: Problem, steps: int = 3) -> None:
    """Two or more steps: the state keeps its structure, shapes and dtypes, iterates stay finite and move."""
    x = problem.x0
    g = problem.grad(x)
    state = opt.init(x, g)
    shapes = [(t.shape, t.dtype) for t in _tensors(state)]
    for _ in range(steps):
        x_next, state, info = opt.step(state, x, g)
        assert x_next.shape == x.shape and x_next.dtype == x.dtype
        assert torch.isfinite(x_next).all(), f"{type(opt).__name__}: non-finite iterate"
        assert [(t.shape, t.dtype) for t in _tensors(state)] == shapes, f"{type(opt).__name__}: state changed structure"
        for key, value in info.items():
            assert value.shape == (problem.batch_size,), f"{type(opt).__name__}: info[{key!r}] has shape {tuple(value.shape)}"
        x, g = x_next, problem.grad(x_next)
    assert not torch.equal(x, problem.x0), f"{type(opt).__name__}: never moved"


def smoketest_task(problem: Problem) -> None:
    """Analytic gradient and Hessian-vector product agree with autograd; x_star (if known) is stationary."""
    x = (problem.x0 + 0.1 * torch.randn_like(problem.x0)).requires_grad_(True)
    (auto_grad,) = torch.autograd.grad(problem.value(x).sum(), x, create_graph=True)
    assert_close(problem.grad(x.detach()), auto_grad.detach(), atol=1e-8, rtol=1e-8, what="grad")
    v = torch.randn_like(x)
    (auto_hvp,) = torch.autograd.grad((auto_grad * v).sum(), x)
    assert_close(problem.hvp(x.detach(), v), auto_hvp, atol=1e-7, rtol=1e-7, what="hvp")
    assert problem.value(problem.x0).shape == (problem.batch_size,)
    if problem.x_star is not None:
        assert problem.grad(problem.x_star).abs().max() < 1e-8


def smoketest_meta_step(learner: nn.Module, problem_fn: Callable[[int], Problem], steps: int = 4) -> None:
    """Two meta-steps: finite loss, a gradient reaches every parameter, the weights change."""
    loss_module = MetaLoss(learner, steps)
    opt = torch.optim.AdamW(learner.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in learner.parameters()]
    for i in range(2):
        result = meta_step(loss_module, opt, problem_fn(i))
        assert not result.skipped and torch.isfinite(torch.tensor(result.loss))
        missing = [n for n, p in learner.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
        assert not missing, f"no finite meta-gradient for {missing}"
    assert any(not torch.equal(a, b) for a, b in zip(before, learner.parameters()))


def assert_readable_console(text: str, max_lines: int = 60) -> list[str]:
    """What a command printed, as a person reads it: no traceback, no ERROR line (Ray's C++ `E` lines
    included), no Ray or tqdm progress noise, at most max_lines lines; returns the lines."""
    lines = text.strip().splitlines()
    assert len(lines) < max_lines, f"{len(lines)} lines:\n" + text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    errors = [line for line in lines if re.search(r"\bERROR\b|\] E |core_worker\.cc| E \d{4}", line)]
    assert not errors, errors
    noise = [line for line in lines if re.search(r"TrainingReport\(|Execution plan of Dataset|it/s\]|\(RayTrainWorker pid=", line)]
    assert not noise, noise
    return lines
