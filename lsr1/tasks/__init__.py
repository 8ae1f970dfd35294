"""Inner problems for meta-training and evaluation, batched and seeded."""

from __future__ import annotations

import torch

from lsr1.config import HMRConfig, TaskConfig
from lsr1.tasks.base import Problem, derive_seed, make_generator
from lsr1.tasks.convex import FAMILIES, ConvexProblem, convex_problems
from lsr1.tasks.hmr import HMRProblem, hmr_problem_set
from lsr1.tasks.mlp import MLPRegression, mlp_problems
from lsr1.tasks.quadratic import Quadratic, diagonal_quadratics, official_quadratics, random_quadratics
from lsr1.tasks.rastrigin import Rastrigin, rastrigin
from lsr1.tasks.rosenbrock import Rosenbrock, rosenbrock

__all__ = [
    "ConvexProblem",
    "HMRProblem",
    "MLPRegression",
    "Problem",
    "Quadratic",
    "Rastrigin",
    "Rosenbrock",
    "convex_problems",
    "derive_seed",
    "diagonal_quadratics",
    "make_generator",
    "mlp_problems",
    "official_quadratics",
    "problem_set",
    "random_quadratics",
    "rastrigin",
    "rosenbrock",
]


def problem_set(
    task: TaskConfig,
    split: str,
    index: int = 0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    hmr: HMRConfig | None = None,
) -> Problem:
    """The problems of one split of a task: "train" (batch `index`, a fresh draw per meta-iteration, at
    task.dim or the index's entry of task.train_dims, of task.name or the index's entry of
    task.train_tasks), "val" (fixed, at task.val_dim or task.dim) or "test" (fixed, at task.test_dim). The
    same config gives the same problems anywhere.

    hmr: the experiment's HMR section, needed by task "hmr" (AMASS batches, 3DPW validation and test).
    """
    if task.name == "hmr":
        if hmr is None:
            raise ValueError("task 'hmr' needs the experiment's hmr config: problem_set(..., hmr=config.hmr)")
        return hmr_problem_set(task, hmr, split, index, dtype, device)
    name = task.name if split != "train" or task.train_tasks is None else task.train_tasks[index % len(task.train_tasks)]
    train_dim = task.dim if task.train_dims is None else task.train_dims[index % len(task.train_dims)]
    val_dim = task.dim if task.val_dim is None else task.val_dim
    sizes = {"train": (task.batch_size, train_dim), "val": (task.val_size, val_dim), "test": (task.test_size, task.test_dim)}
    if split not in sizes:
        raise ValueError(f"split must be one of {list(sizes)}, got {split!r}")
    batch, n = sizes[split]
    seed = derive_seed(task.seed, split, index)
    if name == "quadratic":
        max_cond = None if split == "train" else task.max_cond  # training batches accept every draw (C.2.1)
        return random_quadratics(batch, n, seed, max_cond, dtype, device, log_gap=task.meta_objective == "log_gap")
    if name == "official_quadratic":
        return official_quadratics(batch, n, seed, dtype, device)
    if name == "diagonal_quadratic":
        return diagonal_quadratics(batch, n, seed, task.cond, dtype, device)
    if name == "rosenbrock":
        return rosenbrock(batch, n, seed, dtype, device)
    if name == "rastrigin":
        return rastrigin(batch, n, seed, dtype, device)
    if name in FAMILIES:
        return convex_problems(name, batch, n, seed, task.cond, dtype, device)
    if name == "mlp":
        return mlp_problems(batch, n, seed, dtype, device)
    raise ValueError(f"unknown task {name!r}")
