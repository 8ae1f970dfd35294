"""Meta-training by unrolling K inner steps (paper Sec. 3.1 and Eq. 9; docs/design.md §3).

    unroll     K steps of any optimizer on a batch of problems: objective values, penalties, diagnostics
    run        the same without a graph, learned modules in eval mode: how every optimizer is evaluated
    MetaLoss   Eq. 9 as a module, (1/K) sum_k mean_b f(x_k) + lambda_sec r_k, so DDP can wrap it
    meta_step  one AdamW step on it; a non-finite loss or meta-gradient skips the step and is counted
    train      the single-process loop: validation, best checkpoint, resume, progress bar

All detaching happens here: inner gradients are cut from the graph unless `second_order`. `train` is the
plain function the Ray Train layer calls on every worker; it knows nothing of Ray.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import math
import platform
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from lsr1.checkpoint import config_of, load_checkpoint, save_checkpoint
from lsr1.config import ExperimentConfig, MetaConfig, config_to_dict
from lsr1.learned.base import HandDesigned, LearnedOptimizer
from lsr1.learners import make_learner
from lsr1.optim.base import Optimizer
from lsr1.optim.safeguard import Backtracked, armijo_step, with_line_search
from lsr1.tasks import Problem, problem_set

__all__ = [
    "MetaLoss",
    "StepResult",
    "TrainHooks",
    "TrainSummary",
    "Unroll",
    "meta_step",
    "retain_freed_memory",
    "run",
    "step_metrics",
    "train",
    "unroll",
    "validate",
]

log = logging.getLogger(__name__)


def retain_freed_memory() -> bool:
    """Keep freed memory in the process instead of glibc's default of mapping every block of 128 KiB or
    more afresh and unmapping it when freed. A meta-iteration allocates thousands of such tensors (a
    (256, 128) float32 activation is exactly 128 KiB), and each fresh mapping costs page faults that made
    element-wise operators several times slower than their arithmetic (benchmarks/meta_step.py). Numerics
    are untouched. Returns False where the C library is not glibc (nothing changed)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(None).mallopt
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3  # <malloc.h>
    return all(
        mallopt(option, value) == 1
        for option, value in (
            (m_mmap_threshold, 32 << 20),  # glibc's upper limit: only blocks of 32 MiB and more are mapped
            (m_trim_threshold, 256 << 20),  # return free memory at the top of the heap beyond 256 MiB
            (m_top_pad, 64 << 20),  # grow the heap in 64 MiB steps
        )
    )


@dataclass
class Unroll:
    values: Tensor  # (K+1, B) f(x_0), ..., f(x_K)
    objectives: Tensor | None  # (K+1, B) the problem's meta-loss terms (`Problem.meta_objective`), when asked for
    penalties: Tensor  # (K, B) the optimizer's own meta-loss term per step (zero for hand-designed ones)
    info: dict[str, Tensor]  # (K, B) per-step diagnostics
    iterates: Tensor | None  # (K+1, B, N) x_0, ..., x_K when asked for
    x: Tensor  # (B, N) last iterate
    g: Tensor  # (B, N) its gradient
    state: Any  # the optimizer state after the last step


def unroll(
    optimizer: Optimizer | Backtracked,
    problem: Problem,
    steps: int,
    *,
    second_order: bool = False,
    keep_iterates: bool = False,
    divergence_guard: float | None = None,
    meta_objective: bool = False,
    burn_in: int = 0,
    truncate: bool = False,
) -> Unroll:
    """Run `steps` iterations from problem.x0, keeping the graph through the optimizer for meta-gradients.

    The optimizer (or the learner) is driven through `LearnedOptimizer`'s hooks (a hand-designed one through `HandDesigned`,
    whose hooks are the defaults): `initial_point(problem)` (x0 from an initializer network),
    `init_for(problem, x0, g0)` (an init that conditions on the problem, e.g. its keypoints), `meta_penalty`,
    `with_active` and `with_step_length`. meta_objective: also record `problem.meta_objective` at every
    iterate (for MetaLoss).

    divergence_guard: freeze a problem at its last iterate once f would rise above
    f(x_0) + guard * (|f(x_0)| + 1) (or is not finite), or once its step is not finite. Its later loss terms
    repeat its last value and its penalties are zero, so one diverging problem does not make the whole
    meta-loss infinite, and the learner's `with_active(state, alive)` leaves it out of BatchNorm's batch
    statistics, so that it does not drag the other problems along either. info["diverged"] marks frozen
    problems.

    burn_in: first take this many steps without a graph (the guard applies to them too); the result then
    holds x_0 and the `steps` iterates after them, and x_0 keeps its graph for an initializer's loss.

    truncate: each step starts from its iterate detached (the authors' HMR), so the graph of x_{k+1} holds the
    step that made it (and what the learner's state carries, such as L-SR1's vectors) but no earlier movement
    of x; x_0 keeps its graph for an initializer's loss.

    An optimizer behind `Backtracked` (`meta.line_search` "armijo") has each step shortened by Armijo
    backtracking on f here, where f is known (`lsr1.optim.armijo_step`); info["evaluations"] counts its
    evaluations, and `with_step_length` tells the learner's state what fraction of its step was taken. The
    search ends with f and its gradient at the accepted point, which the next step then uses (outside a
    second-order graph) instead of evaluating them again.
    """
    searched = isinstance(optimizer, Backtracked)
    inner = optimizer.optimizer if searched else optimizer
    learner = inner if isinstance(inner, LearnedOptimizer) else HandDesigned(inner)
    x = learner.initial_point(problem)
    g = problem.grad(x if second_order else x.detach())
    state = learner.init_for(problem, x, g)
    values, penalties, infos, iterates = [problem.value(x)], [], [], [x]
    objectives = [problem.meta_objective(x, values[0], initial=True)] if meta_objective else []
    alive = torch.ones_like(values[0], dtype=torch.bool)
    f = values[0].detach()  # f(x) without a graph: the line search's start
    if divergence_guard is not None:
        limit = f + divergence_guard * (f.abs() + 1.0)
    for step in range(burn_in + steps):
        recorded = step >= burn_in
        if truncate:  # the step, its search and the guard's fallback all start from x without its graph
            x = x.detach()
        with contextlib.nullcontext() if recorded else torch.no_grad():
            x_next, state, info = learner.step(state, x, g)
            if searched:
                finite = torch.isfinite(x_next.detach()).all(-1)  # the search keeps a non-finite step at x
                x_next, search = armijo_step(problem, x, f, g, x_next, optimizer.max_evals)
                state = learner.with_step_length(state, search.t)
                info = {**info, "step_length": search.t, "evaluations": search.evaluations.to(x.dtype)}
        if divergence_guard is not None:
            # decided before f(x_next) enters the graph: an Inf there would turn the meta-gradient into NaN
            with torch.no_grad():  # a search has f at its point already; a non-finite step counts as f = Inf
                trial = search.f.masked_fill(~finite, math.inf) if searched else problem.value(x_next.detach())
            alive = alive & torch.isfinite(trial) & (trial <= limit)
            x_next = torch.where(alive.unsqueeze(-1), x_next, x)
            info = {**info, "diverged": (~alive).to(trial.dtype)}
            state = learner.with_active(state, alive)
        if searched:  # f and g at the accepted point came with the search; a frozen problem keeps its own
            f = torch.where(alive, search.f, f)
            g_searched = torch.where(alive.unsqueeze(-1), search.g, g.detach())
        if not recorded:
            x = x_next.detach()
            g = g_searched if searched else problem.grad(x)
            continue
        value = problem.value(x_next)
        objective = problem.meta_objective(x_next, value) if meta_objective else None
        x = x_next
        g = g_searched if searched and not second_order else problem.grad(x if second_order else x.detach())
        values.append(value)
        if objective is not None:
            objectives.append(objective)
        penalty, extra = learner.meta_penalty(state, x, g)
        penalty = torch.where(alive, penalty, torch.zeros_like(penalty))
        info = {**info, **extra}
        penalties.append(penalty)
        infos.append(info)
        if keep_iterates:
            iterates.append(x)
    info = {key: torch.stack([i[key] for i in infos]) for key in (infos[0] if infos else {})}
    return Unroll(
        values=torch.stack(values),
        objectives=torch.stack(objectives) if meta_objective else None,
        penalties=torch.stack(penalties) if penalties else values[0].new_zeros(0, problem.batch_size),
        info=info,
        iterates=torch.stack(iterates) if keep_iterates else None,
        x=x,
        g=g,
        state=state,
    )


def run(optimizer: Optimizer | Backtracked, problem: Problem, steps: int) -> Unroll:
    """Evaluate any optimizer: no graph, learned modules in eval mode, iterates kept."""
    module = optimizer.optimizer if isinstance(optimizer, Backtracked) else optimizer
    was_training = isinstance(module, nn.Module) and module.training
    if isinstance(module, nn.Module):
        module.eval()
    try:
        with torch.no_grad():
            return unroll(optimizer, problem, steps, keep_iterates=True)
    finally:
        if was_training:
            module.train()


class MetaLoss(nn.Module):
    """Eq. 9 for a learner on a batch of problems; a module so that DistributedDataParallel can wrap it.

    The objective is the mean of `problem.meta_objective` (f itself for analytic tasks; Eq. 13's terms for
    HMR) over the iterates x_1..x_K, and also over x_0 when the learner predicts it (`initial_point`, as
    LGD supervises its initial estimate), plus the learner's penalties (the secant term). With burn_in = m
    the K iterates are x_{m+1}..x_{m+K}, after m steps without a graph (`unroll`). line_search: the driver's
    (`meta.line_search`), "armijo" to unroll the learner behind `Backtracked`.

    scored "before" and discount gamma < 1 give the authors' example (`meta.scored`, `meta.discount`): the
    n = K iterates x_0..x_{K-1} and the penalties of the steps that produced x_1..x_{K-1}, each term of x_k
    weighted gamma^(n-1-k), both sums divided by n. last_penalty False (`meta.last_penalty`, the authors' HMR)
    drops the penalty of the step that produced x_K in the same way, both sums again divided by the n scored
    iterates (x_0..x_K with an initializer). Otherwise the penalties are averaged over the K steps.
    truncate: `unroll`'s one-step truncation (`meta.truncate`).
    """

    def __init__(
        self,
        learner: LearnedOptimizer,
        steps: int,
        second_order: bool = False,
        divergence_guard: float | None = None,
        line_search: str = "none",
        scored: str = "after",
        discount: float = 1.0,
        last_penalty: bool = True,
        truncate: bool = False,
    ) -> None:
        super().__init__()
        self.learner, self.steps, self.second_order, self.divergence_guard = learner, steps, second_order, divergence_guard
        self.line_search, self.scored, self.discount = line_search, scored, discount
        self.last_penalty, self.truncate = last_penalty, truncate

    def forward(self, problem: Problem, burn_in: int = 0) -> tuple[Tensor, dict[str, Tensor]]:
        result = unroll(
            with_line_search(self.learner, self.line_search),
            problem,
            self.steps,
            second_order=self.second_order,
            divergence_guard=self.divergence_guard,
            meta_objective=True,
            burn_in=burn_in,
            truncate=self.truncate,
        )
        first = 0 if self.learner.predicts_initial_point else 1
        if self.scored == "after" and self.discount == 1.0 and self.last_penalty:
            objective, penalty = result.objectives[first:].mean(), result.penalties.mean()
        else:
            objectives = result.objectives[:-1] if self.scored == "before" else result.objectives[first:]
            penalties = result.penalties[:-1] if self.scored == "before" or not self.last_penalty else result.penalties
            n = objectives.shape[0]
            weights = self.discount ** torch.arange(n - 1, -1, -1, dtype=objectives.dtype, device=objectives.device)
            objective = (weights * objectives.mean(1)).sum() / n
            penalty = (weights[n - penalties.shape[0] :] * penalties.mean(1)).sum() / n  # a penalty per scored x_k, k >= 1
        parts = {"objective": objective.detach(), "penalty": penalty.detach()}
        parts.update({key: value.detach().mean() for key, value in result.info.items()})
        return objective + penalty, parts


@dataclass
class StepResult:
    loss: float
    grad_norm: float
    skipped: bool
    parts: dict[str, float]


def meta_step(
    loss_module: nn.Module,
    meta_optimizer: torch.optim.Optimizer,
    problem: Problem,
    grad_clip: float | None = None,
    agree: Callable[[bool], bool] = lambda ok: ok,
    burn_in: int = 0,
) -> StepResult:
    """One meta-iteration (after burn_in steps without a graph, see `unroll`). Skips the update (and
    restores BatchNorm statistics) when the loss or the meta-gradient is not finite; `agree` lets
    distributed workers take that decision together."""
    buffers = [b.detach().clone() for b in loss_module.buffers()]
    meta_optimizer.zero_grad(set_to_none=True)
    loss, parts = loss_module(problem, burn_in)
    loss.backward()  # always, so that every worker joins the gradient all-reduce
    params = [p for p in loss_module.parameters() if p.grad is not None]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip is not None else math.inf)
    ok = agree(bool(torch.isfinite(loss)) and bool(torch.isfinite(grad_norm)))
    if ok:
        meta_optimizer.step()
    else:
        meta_optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            for buffer, saved in zip(loss_module.buffers(), buffers):
                buffer.copy_(saved)
    return StepResult(float(loss.detach()), float(grad_norm), not ok, {k: float(v) for k, v in parts.items()})


def validate(learner: LearnedOptimizer | Backtracked, problem: Problem, steps: int) -> dict[str, float]:
    """Mean over the trajectory of f(x_k) per problem, then mean and std over problems (eval mode), and the
    means of the problem's `evaluation_metrics` at the last iterate (as val_<name>)."""
    result = run(learner, problem, steps)
    per_problem = result.values[1:].mean(0)
    metrics = {"val_loss": float(per_problem.mean()), "val_loss_std": float(per_problem.std(unbiased=False))}
    if problem.x_star is not None:
        gap = result.values[-1] - problem.value(problem.x_star)
        metrics["val_final_gap"] = float(gap.mean())
    if "secant_residual" in result.info:
        metrics["val_secant_residual"] = float(result.info["secant_residual"].mean())
    metrics.update({f"val_{name}": float(value.mean()) for name, value in problem.evaluation_metrics(result.x).items()})
    return metrics


def step_metrics(problem: Problem, iterates: Tensor) -> dict[str, Tensor]:
    """The problem's `evaluation_metrics` along a trajectory, averaged over problems: name -> (K+1,).

    iterates: (K+1, B, N), e.g. `run(...).iterates`. Gives per-step error curves (paper Fig. 4).
    """
    per_step = [problem.evaluation_metrics(x) for x in iterates]
    return {name: torch.stack([m[name].mean() for m in per_step]) for name in (per_step[0] if per_step else {})}


@dataclass
class TrainHooks:
    """How a caller (the Ray layer, a test) plugs into `train` without `train` knowing about it."""

    on_iteration: Callable[[int, dict[str, float]], None] | None = None  # after every meta-iteration
    on_checkpoint: Callable[[int, Path, dict[str, float]], None] | None = None  # run_dir, after last.pt is written
    wrap: Callable[[nn.Module], nn.Module] | None = None  # e.g. DistributedDataParallel around MetaLoss
    agree: Callable[[bool], bool] = lambda ok: ok  # True only if it is True on every worker
    rank: int = 0  # this worker's share of each global batch is problems[rank::world_size]
    world_size: int = 1


@dataclass
class TrainSummary:
    run_dir: Path
    iterations: int
    best_val_loss: float  # the best value of config.meta.select_metric (val_loss unless set otherwise)
    best_iteration: int
    skipped: int
    last: dict[str, float] = field(default_factory=dict)


def _payload(config: ExperimentConfig, learner: nn.Module, opt: torch.optim.Optimizer, sched: Any, progress: dict) -> dict:
    return {
        "config": config_to_dict(config),
        "model": learner.state_dict(),
        "meta_optimizer": opt.state_dict(),
        "scheduler": sched.state_dict() if sched is not None else {},
        "rng": torch.get_rng_state(),
        **progress,
    }


def train(
    config: ExperimentConfig,
    run_dir: str | Path,
    *,
    device: str | torch.device = "cpu",
    hooks: TrainHooks | None = None,
    train_problems: Iterable[Problem] | None = None,
    worker_batches: bool = False,
    val_problems: Problem | None = None,
    resume: bool = True,
    progress: bool = True,
) -> TrainSummary:
    """Meta-train the learner of `config`, keeping run_dir/last.pt (resumable) and run_dir/best.pt.

    train_problems: global batches, one per iteration (default: fresh draws of config.task, seeded by
    the iteration, so the same config gives the same batches on any worker count). Rank 0 writes files.
    worker_batches: train_problems already are this worker's share of each global batch (e.g. a Ray Data
    shard), so they are used as they come instead of sliced by rank. The time spent waiting for the next
    batch is reported per iteration (data_wait_s, and data_wait_fraction of the iteration).
    """
    hooks = hooks or TrainHooks()
    run_dir = Path(run_dir)
    meta = config.meta
    retain_freed_memory()
    chief = hooks.rank == 0
    torch.manual_seed(meta.seed)
    dtype = getattr(torch, meta.dtype)
    learner = make_learner(config).to(device=device, dtype=dtype)
    meta_optimizer = torch.optim.AdamW(learner.parameters(), lr=meta.lr, betas=meta.betas, weight_decay=meta.weight_decay)
    scheduler = None
    if meta.lr_decay_every is not None:
        scheduler = torch.optim.lr_scheduler.StepLR(meta_optimizer, meta.lr_decay_every, meta.lr_decay_factor)
    progress_state = {"iteration": 0, "best_val_loss": math.inf, "best_iteration": 0, "skipped": 0}

    last_path, best_path, metrics_path = run_dir / "last.pt", run_dir / "best.pt", run_dir / "metrics.jsonl"
    if resume and last_path.exists():
        payload = load_checkpoint(last_path, map_location=device)
        stored = config_of(payload, last_path)
        if _architecture(stored) != _architecture(config):
            raise ValueError(f"{last_path} was trained with {_architecture(stored)}, not {_architecture(config)}; use another run name")
        learner.load_state_dict(payload["model"])
        meta_optimizer.load_state_dict(payload["meta_optimizer"])
        if scheduler is not None and payload["scheduler"]:
            scheduler.load_state_dict(payload["scheduler"])
        torch.set_rng_state(payload["rng"])
        progress_state = {key: payload[key] for key in progress_state}
        log.info("resuming %s at iteration %d", run_dir, progress_state["iteration"])
    start = progress_state["iteration"]
    if chief:
        run_dir.mkdir(parents=True, exist_ok=True)
        _truncate_metrics(metrics_path, start)

    loss_module: nn.Module = MetaLoss(
        learner,
        meta.unroll_steps,
        meta.second_order,
        meta.divergence_guard,
        meta.line_search,
        meta.scored,
        meta.discount,
        meta.last_penalty,
        meta.truncate,
    )
    if hooks.wrap is not None:
        loss_module = hooks.wrap(loss_module)
    if val_problems is None:
        val_problems = problem_set(config.task, "val", device=device, dtype=dtype, hmr=config.hmr)
    val_problems = val_problems.to(device, dtype)
    if train_problems is None:
        train_problems = (
            problem_set(config.task, "train", i, device=device, dtype=dtype, hmr=config.hmr) for i in range(start, meta.iterations)
        )
    share = slice(hooks.rank, None, hooks.world_size)

    bar = tqdm(total=meta.iterations, initial=start, desc=config.name, disable=not (progress and chief), mininterval=1.0)
    last_save, metrics = time.monotonic(), {}
    learner.train()
    batches = iter(train_problems)
    for iteration in range(start + 1, meta.iterations + 1):
        waited = time.perf_counter()
        problem = next(batches, None)
        if problem is None:
            break
        tic = time.perf_counter()
        problem = (problem if worker_batches else problem.select(share)).to(device, dtype)
        burn_in = _burn_in(meta, iteration)
        if hooks.agree(problem.finite()):
            result = meta_step(loss_module, meta_optimizer, problem, meta.grad_clip, hooks.agree, burn_in)
        else:  # a NaN or Inf in the batch itself: nothing to learn from, and no worker steps
            log.warning("iteration %d: the batch contains NaN or Inf; step skipped", iteration)
            result = StepResult(math.nan, math.nan, True, {})
        if scheduler is not None:
            scheduler.step()
        progress_state["iteration"] = iteration
        progress_state["skipped"] += int(result.skipped)
        seconds = time.perf_counter() - tic
        wait = tic - waited
        metrics = {
            "loss": result.loss,
            "grad_norm": result.grad_norm,
            "skipped": progress_state["skipped"],
            "lr": meta_optimizer.param_groups[0]["lr"],
            "seconds": seconds,
            "problems_per_s": problem.batch_size / seconds,
            "data_wait_s": wait,
            "data_wait_fraction": wait / (wait + seconds),
            "burn_in": burn_in,
            **result.parts,
        }
        validating = iteration % meta.val_every == 0 or iteration == meta.iterations
        if validating:
            horizon = meta.val_steps or meta.burn_in + meta.unroll_steps  # by default the horizon trained for
            metrics.update(validate(with_line_search(learner, meta.line_search), val_problems, horizon))
            if meta.select_metric not in metrics:
                valid = sorted(key for key in metrics if key.startswith("val_"))
                raise ValueError(f"meta.select_metric {meta.select_metric!r} is not reported by validation; valid: {valid}")
            score = metrics[meta.select_metric]
            if score < progress_state["best_val_loss"]:
                progress_state.update(best_val_loss=score, best_iteration=iteration)
                if chief:
                    save_checkpoint(best_path, _payload(config, learner, meta_optimizer, scheduler, progress_state))
            learner.train()
            bar.set_postfix(loss=f"{result.loss:.4g}", val=f"{score:.4g}", best=f"{progress_state['best_val_loss']:.4g}")
        if chief:
            with metrics_path.open("a") as out:
                out.write(json.dumps({"iteration": iteration, **metrics}) + "\n")
        if hooks.on_iteration is not None:
            hooks.on_iteration(iteration, metrics)
        # after every validation, and every checkpoint_every_s; workers decide together (their clocks differ)
        if hooks.agree(validating or time.monotonic() - last_save >= meta.checkpoint_every_s):
            if chief:
                save_checkpoint(last_path, _payload(config, learner, meta_optimizer, scheduler, progress_state))
            if hooks.on_checkpoint is not None:
                hooks.on_checkpoint(iteration, run_dir, metrics)
            last_save = time.monotonic()
        bar.update(1)
    bar.close()
    return TrainSummary(
        run_dir=run_dir,
        iterations=progress_state["iteration"],
        best_val_loss=progress_state["best_val_loss"],
        best_iteration=progress_state["best_iteration"],
        skipped=progress_state["skipped"],
        last=metrics,
    )


def _burn_in(meta: MetaConfig, iteration: int) -> int:
    """The detached steps of this meta-iteration, uniform in 0..meta.burn_in: drawn from the seed and the
    iteration alone, so that every worker draws the same and a resumed run the same as an unbroken one."""
    if meta.burn_in == 0:
        return 0
    generator = torch.Generator().manual_seed(meta.seed * 1_000_003 + iteration)
    return int(torch.randint(meta.burn_in + 1, (), generator=generator))


def _architecture(config: ExperimentConfig) -> dict[str, Any]:
    """The parts of a config that fix the learner's parameters: a checkpoint resumes only if they agree."""
    arch: dict[str, Any] = {"learner": config.learner, config.learner: config.lsr1 if config.learner == "lsr1" else config.lgd}
    if config.task.name == "hmr":  # the initializer network
        h = config.hmr
        arch["initializer"] = {"rotation": h.rotation, "hidden_dim": h.init_hidden_dim, "dropout": h.init_dropout}
    return arch


def _truncate_metrics(path: Path, iteration: int) -> None:
    """Drop metric lines written after the checkpoint we resume from, so a resumed log has no repeats."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["iteration"] <= iteration]
    path.write_text("".join(line + "\n" for line in kept))
