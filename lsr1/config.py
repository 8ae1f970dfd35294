"""Experiment configuration: dataclasses, YAML presets and `a.b=c` overrides (docs/design.md §7).

One config system for the library and the pipeline. Presets in `configs/` are partial YAML files over the
defaults below (which run small); `load_config(path, overrides)` applies a preset then overrides, checks
types, and rejects unknown keys with the list of valid ones.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "BFGSStepsConfig",
    "ENCODER_INPUTS",
    "LEARNERS",
    "ConfigError",
    "ExperimentConfig",
    "FORMULATIONS",
    "HMRConfig",
    "LGDConfig",
    "LSR1Config",
    "MOVED_KEYS",
    "MetaConfig",
    "REMOVED_SWITCHES",
    "SWITCHES_TAG",
    "TaskConfig",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "flatten",
    "load_config",
]

ENCODER_INPUTS = ("x", "p", "d", "g", "q")  # x_{k-1}, p_{k-1}, d_{k-1}, g_{k-1}, q_{k-1} (Alg. 1, line 3)
TASK_NAMES = (
    "quadratic",
    "official_quadratic",
    "diagonal_quadratic",
    "rosenbrock",
    "rastrigin",
    "least_squares",
    "logistic",
    "logsumexp",
    "mlp",
    "hmr",
)
MIXABLE_TASKS = ("quadratic", "least_squares", "logistic", "logsumexp", "mlp")  # task.train_tasks: log-scale meta-losses
# the update module; "lgd" is LGD's MLP update (Song et al. 2020), HMR only; "bfgs_steps" the LSTM
# coordinate-wise step sizes for BFGS (arXiv 2412.00059), analytic tasks only
LEARNERS = ("lsr1", "lgd", "bfgs_steps")
ROTATIONS = ("axis_angle", "6d")
LINE_SEARCH_KINDS = ("none", "armijo")  # meta.line_search
NORMS = ("running", "problem")  # BatchNorm's statistics at evaluation (lsr1.nn)


# A formulation names a set of L-SR1 switches: `lsr1.formulation: paper` in a preset or an override sets them,
# and keys beside it in the same section, or later overrides, change them further. "project" is the dataclass
# defaults, the formulation of every shipped L-SR1 model but the authors' (`*_official`); "paper" is our reading
# of the paper's text (Eq. 7-9 and App. C as written: no identity in the step, the secant term on I + sum v v^T),
# which the authors' own code replaced in every shipped model and table; it is kept for the findings docs/log.md
# records with it (§1, §2, §4: what Eq. 8 as written trains) and for configs/smoke.yaml.
FORMULATIONS: dict[str, dict[str, Any]] = {
    "project": {"formulation": "project"},
    "paper": {
        "formulation": "paper",
        "gamma1": 0.4,
        "gamma2": 0.001,
        "bounded_step_size": False,
        "lambda_sec": 100.0,
        "identity_in_step": False,
        "input_scaling": "none",
        "global_features": False,
        "curvature_scale": "none",
        "vector_norm": "none",
        "eval_norm": "problem",
        "lbfgs_memory": 0,
    },
    # the authors' published code (`lsr1.learned.official.OfficialLSR1`): their own module, of which only these
    # fields apply (buffer_size, hidden_dim = their MLP width, gamma1/gamma2 = alpha1/alpha2, dropout,
    # lambda_sec = their secant weight); BatchNorm's momentum is theirs, 0.1
    "official": {
        "formulation": "official",
        "buffer_size": 4,
        "hidden_dim": 256,
        "gamma1": 0.4,
        "gamma2": 0.001,
        "dropout": 0.2,
        "lambda_sec": 10.0,
        "bn_momentum": 0.1,
    },
}

# Switches deleted because no shipped model or tune space used them, with the one value the code now has. A
# stored config (a checkpoint) that has one at that value loads; another value is refused. Their negative
# results are in docs/log.md; the tag still has the switches.
SWITCHES_TAG = "lsr1-switches-2026-12-07"
REMOVED_SWITCHES: dict[str, Any] = {
    "identity_weight": 1.0,
    "secant_target": "new_step",
    "secant_normalize": False,
    "first_scale": "pair",
    "vector_init_scale": 0.1,  # only the initialisation of P's last layer (lsr1.learned.sr1.VECTOR_INIT_SCALE)
}
# Keys that moved: the old lsr1 key -> where it lives now. A stored config (a checkpoint) is migrated when
# loaded (`lsr1.checkpoint.config_of`); a preset or an override that uses the old key gets an error naming the new.
MOVED_KEYS = {"line_search": "meta.line_search", "secant_penalty": "lsr1.formulation"}


class ConfigError(ValueError):
    """A preset or override that does not fit the config dataclasses."""


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


@dataclass
class LSR1Config:
    """L-SR1 architecture and its meta-loss weight (paper Sec. 4, App. C). The defaults are the project's
    formulation, which every shipped L-SR1 model but the authors' (`*_official`) uses."""

    # Which L-SR1. "project" and "paper" are `lsr1.learned.sr1.LSR1` with the secant term on the operator that made
    # the step, ||p - diag(alpha)(s I + sum v v^T) q||^2 / ||p||^2 (docs/design.md §3), or ||p - (I + sum v v^T) q||^2
    # as Eq. 8 is written; "official" is the authors' module (`lsr1.learned.official`). In a preset or an override
    # (`lsr1.formulation: paper`) it also sets the switches of FORMULATIONS[name]; keys beside it in the same
    # section, or later overrides, change them further.
    formulation: str = "project"
    buffer_size: int = 8  # L
    hidden_dim: int = 128  # d_hidden = M
    gamma1: float = 0.5  # alpha = gamma1 * exp(gamma2 * alpha~)
    gamma2: float = 1.0
    bounded_step_size: bool = True  # alpha = gamma1 * exp(gamma2 * tanh(G)): a gamma2 of real range stays finite
    lambda_sec: float = 0.01  # secant penalty weight; 0 = "without learned projection"
    identity_in_step: bool = True  # d = (s I + sum v v^T) g (Eq. 7, times s) instead of (sum v v^T) g (Alg. 1)
    input_scaling: str = "rms"  # "rms": each encoder input divided by its RMS over the problem's coordinates
    global_features: bool = True  # add cos(p, q), cos(d, g), log(||q||/||g||), log(1 + k) to every coordinate
    curvature_scale: str = "secant"  # "secant": B scaled by s = |p.q| / q.q of the last step (v by sqrt(s))
    # hold the step index of the global feature log(1 + k) at the last one meta-training reaches (meta.burn_in +
    # K - 1), so that longer runs see only step indices that training saw (never binds in training; no effect
    # without global_features; docs/log.md §4)
    cap_step_index: bool = False
    encoder_inputs: list[str] = field(default_factory=lambda: list(ENCODER_INPUTS))
    dropout: float = 0.0  # the paper gives no rate; LGD's blocks use 0.2
    bn_momentum: float | None = 0.01  # running statistics must average over all K steps (None: plain mean)
    # "sqrt_dim" divides v by sqrt(N): B's added eigenvalues ||v||^2 stop growing with N (docs/log.md §2)
    vector_norm: str = "sqrt_dim"
    # BatchNorm at evaluation, never coupling problems (docs/design.md §3): torch's "running" statistics (the inputs are
    # scale-free with input_scaling rms), or each "problem"'s own statistics over its coordinates; training uses
    # the batch's (frozen problems left out)
    eval_norm: str = "running"
    # m > 0: the identity part of B (s I with `identity_in_step`) becomes H, the L-BFGS inverse Hessian of the
    # last m measured pairs (p, q) with H0 = s I (s I until the first pair passes the curvature test): the
    # learned rank-one terms and step sizes then correct a quasi-Newton operator that carries the curvature
    # already measured (docs/log.md §9). 0: s I, Eq. 7
    lbfgs_memory: int = 0
    # "official" on HMR (two of their modules, pose and shape): "slip" is their code's meta-loss, whose shape
    # secant term reads the pose pairs (the pose term counted twice, none for shape: what their published
    # ablation measured); "own" gives each module its own secant term
    beta_secant: str = "own"

    def __post_init__(self) -> None:
        _check(self.formulation in FORMULATIONS, f"lsr1.formulation: unknown {self.formulation!r}; valid: {list(FORMULATIONS)}")
        _check(self.lbfgs_memory >= 0, f"lsr1.lbfgs_memory must be >= 0, got {self.lbfgs_memory}")
        _check(self.beta_secant in ("slip", "own"), f"lsr1.beta_secant must be 'slip' or 'own', got {self.beta_secant!r}")
        _check(
            self.lbfgs_memory == 0 or self.identity_in_step,
            "lsr1.lbfgs_memory replaces the identity of the step: it needs lsr1.identity_in_step: true",
        )
        _check(self.buffer_size >= 1, f"lsr1.buffer_size must be >= 1, got {self.buffer_size}")
        _check(self.hidden_dim >= 1, f"lsr1.hidden_dim must be >= 1, got {self.hidden_dim}")
        _check(self.gamma1 > 0, f"lsr1.gamma1 must be > 0, got {self.gamma1}")
        _check(self.lambda_sec >= 0, f"lsr1.lambda_sec must be >= 0, got {self.lambda_sec}")
        _check(0.0 <= self.dropout < 1.0, f"lsr1.dropout must be in [0, 1), got {self.dropout}")
        _check(
            self.bn_momentum is None or 0.0 < self.bn_momentum <= 1.0,
            f"lsr1.bn_momentum must be in (0, 1] or None, got {self.bn_momentum}",
        )
        _check(
            self.eval_norm != "batch",
            "lsr1.eval_norm 'batch' normalised over all problems of a batch, so a problem's steps depended on the "
            "others (docs/design.md §3); use 'problem' (each problem's own statistics) or 'running'",
        )
        _check(self.eval_norm in NORMS, f"lsr1.eval_norm must be one of {list(NORMS)}, got {self.eval_norm!r}")
        _check(self.input_scaling in ("none", "rms"), f"lsr1.input_scaling must be 'none' or 'rms', got {self.input_scaling!r}")
        _check(
            self.curvature_scale in ("none", "secant"),
            f"lsr1.curvature_scale must be 'none' or 'secant', got {self.curvature_scale!r}",
        )
        _check(self.vector_norm in ("none", "sqrt_dim"), f"lsr1.vector_norm must be 'none' or 'sqrt_dim', got {self.vector_norm!r}")
        unknown = [n for n in self.encoder_inputs if n not in ENCODER_INPUTS]
        _check(not unknown, f"lsr1.encoder_inputs: unknown {unknown}; valid: {list(ENCODER_INPUTS)}")
        _check(
            len(self.encoder_inputs) > 0 and len(set(self.encoder_inputs)) == len(self.encoder_inputs),
            f"lsr1.encoder_inputs must be a non-empty list without repeats, got {self.encoder_inputs}",
        )


@dataclass
class BFGSStepsConfig:
    """Learned coordinate-wise BFGS step sizes (`lsr1.learned.bfgs_steps`)."""

    hidden_dim: int = 20
    memory: int | None = None  # None: dense BFGS; m: L-BFGS with m pairs (large N)
    reg_weight: float = 0.1  # weight of the pull of P toward the identity near the optimum

    def __post_init__(self) -> None:
        _check(self.hidden_dim >= 1, f"bfgs_steps.hidden_dim must be >= 1, got {self.hidden_dim}")
        _check(self.memory is None or self.memory >= 1, f"bfgs_steps.memory must be >= 1 or None, got {self.memory}")
        _check(self.reg_weight >= 0, f"bfgs_steps.reg_weight must be >= 0, got {self.reg_weight}")


@dataclass
class LGDConfig:
    """LGD's update module (Song et al. 2020): Theta += step_scale * MLP([keypoints, theta, grad theta])."""

    hidden_dim: int = 1024
    dropout: float = 0.2
    step_scale: float = 0.1
    bn_momentum: float | None = 0.1  # torch's default, as LGD

    def __post_init__(self) -> None:
        _check(self.hidden_dim >= 1, f"lgd.hidden_dim must be >= 1, got {self.hidden_dim}")
        _check(0.0 <= self.dropout < 1.0, f"lgd.dropout must be in [0, 1), got {self.dropout}")
        _check(self.step_scale > 0, f"lgd.step_scale must be > 0, got {self.step_scale}")
        _check(
            self.bn_momentum is None or 0.0 < self.bn_momentum <= 1.0,
            f"lgd.bn_momentum must be in (0, 1] or None, got {self.bn_momentum}",
        )


@dataclass
class HMRConfig:
    """Human mesh recovery (paper Sec. 5.2, App. C.2.3), following LGD's protocol (notes/lgd-protocol.md).

    Paths are smplx's model folder and the AMASS / 3DPW roots (datasets/README.md); the defaults are the
    synthetic stand-ins that `python -m lsr1.hmr.synthetic` writes.
    """

    body_dir: str = "datasets/synthetic/body"  # holds smpl/SMPL_<GENDER>.{npz,pkl}
    gender: str = "neutral"
    amass_dir: str = "datasets/synthetic/amass"
    pw3d_dir: str = "datasets/synthetic/3dpw"  # holds sequenceFiles/{train,validation,test}/*.pkl
    cache_dir: str = "datasets/cache"  # .npz copies of .pkl body models
    prepared_dir: str = "datasets/synthetic/prepared"  # `python -m pipeline.prepare` output: Parquet + manifest.json
    data_fraction: float = 1.0  # meta-train on this fraction of the AMASS frames (paper Table 2), chosen by a
    # fixed hash of (sequence, frame): the same frames anywhere, smaller fractions subsets of larger ones
    h36m_regressor: str | None = None  # J_regressor_h36m.npy (17, 6890) for the 14 evaluation joints
    rotation: str = "axis_angle"  # Theta's pose part: "axis_angle" (72) or "6d" (144)
    focal_length: float = 256.0  # LGD's camera: f = 256 px at distance 6 m
    camera_distance: float = 6.0
    max_tilt_deg: float = 20.0  # random global rotation: heading 0-360 deg, x/z tilt within this
    keep_probability: float = 0.8  # synthetic confidences: each joint kept with this probability
    keypoint_noise: float = 0.0  # std of noise on kept synthetic keypoints (normalised units; LGD: none)
    confidence_threshold: float = 0.01
    # f = inner_loss_weight x the confidence-weighted L1 reprojection error. The authors' HMR multiplies a batch
    # mean by 1000, so each problem's gradient is 1000 / B times its own: 7.8125 at their training batch of 128
    inner_loss_weight: float = 1.0
    # Eq. 13's terms on each iterate. "lgd": all four on every iterate, the 2D one being f. "official": the
    # authors' loss as their truncated unroll differentiates it: the joint-weighted 2D and 3D L1 terms on x_0
    # alone (the initializer's; at later iterates theirs read detached points, constants), the L1 on pose and
    # shape on every iterate
    meta_loss: str = "lgd"
    loss_2d: float = 0.3  # Eq. 13 weights, LGD's values: 2D keypoints, 3D joints, pose, shape
    loss_3d: float = 0.3
    loss_pose: float = 1.0
    loss_shape: float = 1.0
    init_hidden_dim: int = 1024  # the initializer network (keypoints -> Theta_0), LGD's MLP blocks
    init_dropout: float = 0.2
    val_skip: int = 10  # validation uses every val_skip-th 3DPW validation frame (LGD)

    def __post_init__(self) -> None:
        _check(self.gender in ("neutral", "male", "female"), f"hmr.gender must be neutral, male or female, got {self.gender!r}")
        _check(self.meta_loss in ("lgd", "official"), f"hmr.meta_loss must be 'lgd' or 'official', got {self.meta_loss!r}")
        _check(self.inner_loss_weight > 0, f"hmr.inner_loss_weight must be > 0, got {self.inner_loss_weight}")
        _check(self.rotation in ROTATIONS, f"hmr.rotation must be one of {list(ROTATIONS)}, got {self.rotation!r}")
        for key in ("focal_length", "camera_distance", "confidence_threshold"):
            _check(getattr(self, key) > 0, f"hmr.{key} must be > 0, got {getattr(self, key)}")
        _check(0.0 <= self.max_tilt_deg <= 90.0, f"hmr.max_tilt_deg must be in [0, 90], got {self.max_tilt_deg}")
        _check(0.0 < self.keep_probability <= 1.0, f"hmr.keep_probability must be in (0, 1], got {self.keep_probability}")
        for key in ("keypoint_noise", "loss_2d", "loss_3d", "loss_pose", "loss_shape"):
            _check(getattr(self, key) >= 0, f"hmr.{key} must be >= 0, got {getattr(self, key)}")
        _check(self.init_hidden_dim >= 1, f"hmr.init_hidden_dim must be >= 1, got {self.init_hidden_dim}")
        _check(0.0 <= self.init_dropout < 1.0, f"hmr.init_dropout must be in [0, 1), got {self.init_dropout}")
        _check(self.val_skip >= 1, f"hmr.val_skip must be >= 1, got {self.val_skip}")
        _check(0.0 < self.data_fraction <= 1.0, f"hmr.data_fraction must be in (0, 1], got {self.data_fraction}")


@dataclass
class TaskConfig:
    """Inner problems: what meta-training samples, the fixed validation set and the test set."""

    name: str = "quadratic"
    dim: int = 2  # N of training and validation problems
    train_dims: list[int] | None = None  # meta-train at mixed N: batch i has N = train_dims[i % len] (None: dim)
    # meta-train on a mix of families: batch i is of task train_tasks[i % len] (None: name); validation and
    # test stay on `name`. Quadratics (with log_gap) and the convex families, whose meta-loss terms are all
    # log10 relative gaps and so weigh alike
    train_tasks: list[str] | None = None
    val_dim: int | None = None  # N of the validation problems (None: dim)
    batch_size: int = 128  # problems (or initial points) per meta-iteration
    val_size: int = 32  # fixed validation problems
    test_dim: int = 10
    test_size: int = 32
    max_cond: float | None = 1000.0  # quadratics: validation/test reject cond(H) above this
    cond: float = 100.0  # diagonal_quadratic, least_squares, logistic, logsumexp: condition number of the data
    # quadratic: the meta-loss term, "value" f(x_k) (Eq. 9) or "log_gap" log10 (f(x_k) - f*) / (f(x_0) - f*).
    # official_quadratic is the family of the authors' example: the same H and b, x0 uniform in [-5.12, 5.12],
    # no condition filter in any split, and a draw that is singular in float32 redrawn (their script crashes)
    meta_objective: str = "value"
    seed: int = 0

    def __post_init__(self) -> None:
        _check(self.name in TASK_NAMES, f"task.name: unknown task {self.name!r}; valid: {list(TASK_NAMES)}")
        for key in ("dim", "batch_size", "val_size", "test_dim", "test_size"):
            _check(getattr(self, key) >= 1, f"task.{key} must be >= 1, got {getattr(self, key)}")
        _check(self.val_dim is None or self.val_dim >= 1, f"task.val_dim must be >= 1, got {self.val_dim}")
        _check(
            self.train_dims is None or (len(self.train_dims) > 0 and min(self.train_dims) >= 1),
            f"task.train_dims must be a non-empty list of dimensions >= 1, got {self.train_dims}",
        )
        if self.train_tasks is not None:
            _check(
                len(self.train_tasks) > 0 and all(t in MIXABLE_TASKS for t in self.train_tasks),
                f"task.train_tasks must be a non-empty list of {list(MIXABLE_TASKS)}, got {self.train_tasks}",
            )
            _check(
                "quadratic" not in self.train_tasks or self.meta_objective == "log_gap",
                "task.train_tasks with 'quadratic' needs task.meta_objective 'log_gap' (the convex families' meta-loss scale)",
            )
        _check(self.max_cond is None or self.max_cond >= 1, f"task.max_cond must be >= 1, got {self.max_cond}")
        _check(self.cond >= 1, f"task.cond must be >= 1, got {self.cond}")
        _check(
            self.meta_objective in ("value", "log_gap"),
            f"task.meta_objective must be 'value' or 'log_gap', got {self.meta_objective!r}",
        )
        _check(
            self.meta_objective == "value" or self.name == "quadratic",
            f"task.meta_objective 'log_gap' is for task 'quadratic' (the convex tasks always use it), not {self.name!r}",
        )


@dataclass
class MetaConfig:
    """Meta-training: unroll length, meta-optimizer (AdamW), schedule, validation and checkpoints."""

    iterations: int = 200
    unroll_steps: int = 16  # K
    # each meta-iteration first takes m inner steps without a graph, m drawn uniformly from 0..burn_in, then
    # unrolls K: meta-training sees the states of steps up to burn_in + K, not only the first K that a short
    # unroll trains for (short-horizon bias; docs/log.md §9). 0: the paper's unroll from x_0
    burn_in: int = 0
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.01
    grad_clip: float | None = None  # max global norm of the meta-gradient; None = no clipping
    lr_decay_every: int | None = None  # multiply lr by lr_decay_factor every this many iterations
    lr_decay_factor: float = 1.0
    second_order: bool = False  # keep inner gradients in the graph (default: first-order, detached)
    # "armijo": the driver (`lsr1.meta.unroll`) shortens every inner step, in meta-training and evaluation, by
    # Armijo backtracking along the learner's direction (`lsr1.optim.Backtracked`; the step length is a statistic
    # without a meta-gradient), as L-BFGS's steps come from a line search: an operator that overshoots then
    # cannot diverge. "none": the steps as learned
    line_search: str = "none"
    divergence_guard: float | None = 1000.0  # freeze problems whose f rises this far (None: Eq. 9 as is)
    # the iterates the meta-loss scores: "after" x_1..x_K, or "before" x_0..x_{K-1} and the secant terms of the
    # steps that produced x_1..x_{K-1}, as the authors' example does (their last step then gets no gradient
    # from the trajectory)
    scored: str = "after"
    discount: float = 1.0  # gamma: the k-th of K scored terms weighs gamma^(K-1-k) (the authors' example)
    # False: the step that produced x_K gets no penalty (secant) term, as in the authors' code, whose loop ends
    # before it forms that step's pair (with scored "before" it never has one)
    last_penalty: bool = True
    # one-step truncated meta-gradient (the authors' HMR): every iterate is detached before the next step, so
    # the meta-loss at x_{k+1} reaches the step that made it and, through an L-SR1 buffer's vectors, the
    # network evaluations of earlier steps, but not the earlier steps' movement of x
    truncate: bool = False
    val_every: int = 50
    val_steps: int | None = None  # inner steps of validation (None: the horizon trained for, burn_in + K)
    select_metric: str = "val_loss"  # validation metric (lower is better) that picks best.pt, e.g. val_pa_mpjpe
    checkpoint_every_s: float = 120.0
    seed: int = 0
    # "float64": the learner, its training batches and validation in double precision. A log10-gap
    # meta-objective reaches float32's resolution as problems converge (docs/log.md §9)
    dtype: str = "float32"

    def __post_init__(self) -> None:
        _check(self.dtype in ("float32", "float64"), f"meta.dtype must be 'float32' or 'float64', got {self.dtype!r}")
        for key in ("iterations", "unroll_steps", "val_every"):
            _check(getattr(self, key) >= 1, f"meta.{key} must be >= 1, got {getattr(self, key)}")
        _check(self.burn_in >= 0, f"meta.burn_in must be >= 0, got {self.burn_in}")
        _check(self.line_search in LINE_SEARCH_KINDS, f"meta.line_search must be one of {LINE_SEARCH_KINDS}, got {self.line_search!r}")
        _check(self.scored in ("after", "before"), f"meta.scored must be 'after' or 'before', got {self.scored!r}")
        _check(0 < self.discount <= 1, f"meta.discount must be in (0, 1], got {self.discount}")
        _check(self.val_steps is None or self.val_steps >= 1, f"meta.val_steps must be >= 1, got {self.val_steps}")
        _check(self.lr > 0, f"meta.lr must be > 0, got {self.lr}")
        _check(
            self.divergence_guard is None or self.divergence_guard > 0,
            f"meta.divergence_guard must be > 0 or None, got {self.divergence_guard}",
        )
        _check(self.grad_clip is None or self.grad_clip > 0, f"meta.grad_clip must be > 0, got {self.grad_clip}")
        _check(
            self.lr_decay_every is None or self.lr_decay_every >= 1,
            f"meta.lr_decay_every must be >= 1, got {self.lr_decay_every}",
        )
        _check(0 < self.lr_decay_factor <= 1, f"meta.lr_decay_factor must be in (0, 1], got {self.lr_decay_factor}")
        _check(
            self.select_metric.startswith("val_"), f"meta.select_metric must name a validation metric (val_...), got {self.select_metric!r}"
        )


@dataclass
class ExperimentConfig:
    """Everything one meta-training run needs; saved with every checkpoint."""

    name: str = "smoke"
    learner: str = "lsr1"  # the update module: "lsr1" or "lgd" (HMR); HMR adds an initializer network
    lsr1: LSR1Config = field(default_factory=LSR1Config)
    lgd: LGDConfig = field(default_factory=LGDConfig)
    bfgs_steps: BFGSStepsConfig = field(default_factory=BFGSStepsConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    meta: MetaConfig = field(default_factory=MetaConfig)
    hmr: HMRConfig = field(default_factory=HMRConfig)

    def __post_init__(self) -> None:
        _check(self.learner in LEARNERS, f"learner: unknown {self.learner!r}; valid: {list(LEARNERS)}")
        _check(
            self.learner != "lgd" or self.task.name == "hmr",
            f"learner 'lgd' conditions on keypoints and needs task.name 'hmr', got {self.task.name!r}",
        )
        _check(
            self.learner != "lgd" or self.meta.line_search == "none",
            "learner 'lgd' follows LGD's protocol, whose steps are not searched: add meta.line_search=none "
            "(the HMR presets search L-SR1's steps)",
        )
        _check(
            self.learner != "bfgs_steps" or self.task.name != "hmr",
            "learner 'bfgs_steps' is for analytic tasks; HMR's learners are 'lsr1' and 'lgd'",
        )
        _check(
            self.meta.dtype == "float32" or self.task.name != "hmr",
            "meta.dtype 'float64' is for analytic tasks; HMR's body model and data are float32",
        )


# ---------------------------------------------------------------------------------------------------------
# dict <-> dataclass with type checks


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Convert a YAML/override value to the field's type, or raise ConfigError naming the key."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            _check(type(None) in options, f"{where}: None is not allowed")
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError("; ".join(errors))
    if dataclasses.is_dataclass(hint):
        _check(isinstance(value, dict), f"{where}: expected a mapping, got {value!r}")
        return config_from_dict(hint, value, where)
    if origin in (list, tuple):
        if isinstance(value, str):
            value = yaml.safe_load(value)
        _check(isinstance(value, (list, tuple)), f"{where}: expected a list, got {value!r}")
        args = typing.get_args(hint)
        if origin is tuple and args and args[-1] is not Ellipsis:
            _check(len(value) == len(args), f"{where}: expected {len(args)} items, got {len(value)}")
            return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        items = [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if hint is bool:
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        _check(isinstance(value, bool), f"{where}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, str):
            try:
                value = int(value)
            except ValueError:
                raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
        _check(isinstance(value, int) and not isinstance(value, bool), f"{where}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{where}: expected a number, got {value!r}") from None
        _check(isinstance(value, (int, float)) and not isinstance(value, bool), f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        _check(isinstance(value, str), f"{where}: expected a string, got {value!r}")
        return value
    return value


def _lsr1_section(data: dict[str, Any], where: str) -> dict[str, Any]:
    """The lsr1 section with its `formulation` expanded (keys beside it win), and moved and deleted switches
    checked."""
    data = dict(data)
    for key, now in MOVED_KEYS.items():
        _check(key not in data, f"{where}.{key} moved to {now}")
    name = data.get("formulation")
    if name is not None:
        _check(name in FORMULATIONS, f"{where}.formulation: unknown {name!r}; valid: {list(FORMULATIONS)}")
        data = {**FORMULATIONS[name], **data}
    for key, kept in REMOVED_SWITCHES.items():
        if key in data:
            _check(
                data[key] == kept,
                f"{where}.{key}={data[key]!r}: this switch was deleted (only {kept!r} remains); git tag {SWITCHES_TAG} has it",
            )
            del data[key]
    _check("r" not in data.get("encoder_inputs", []), f"{where}.encoder_inputs: the input 'r' was deleted; git tag {SWITCHES_TAG} has it")
    return data


def config_from_dict(cls: type, data: dict[str, Any], where: str = "") -> Any:
    """Build dataclass `cls` from a (partial) dict; unknown keys raise ConfigError listing the valid ones."""
    if cls is LSR1Config:
        data = _lsr1_section(data, where or "lsr1")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    prefix = f"{where}." if where else ""
    _check(not unknown, f"unknown config key(s) {[prefix + k for k in unknown]}; valid keys here: {names}")
    kwargs = {key: _coerce(value, hints[key], prefix + key) for key, value in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where or cls.__name__}: {err}") from None


def config_to_dict(config: Any) -> dict[str, Any]:
    """Plain dict (lists, not tuples) that round-trips through YAML and `torch.load(weights_only=True)`."""

    def plain(value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(config))


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; used for `--set` keys and tracking params."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b=c` strings to a nested dict; values are parsed as YAML and type-checked later."""
    result = dict(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        _check(bool(sep) and bool(key), f"override {item!r} must look like section.key=value")
        *parents, leaf = key.strip().split(".")
        node = result
        for part in parents:
            child = node.get(part, {})
            _check(isinstance(child, dict), f"override {item!r}: {part!r} is not a section")
            node[part] = child = dict(child)
            node = child
        value = yaml.safe_load(raw) if raw.strip() else ""
        if parents == ["lsr1"] and leaf == "formulation":  # its switches replace the preset's, later overrides win
            _check(value in FORMULATIONS, f"override {item!r}: unknown formulation; valid: {list(FORMULATIONS)}")
            node.update(FORMULATIONS[value])
        else:
            node[leaf] = value
    return result


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Defaults, then the YAML preset at `path` (if any), then `a.b=c` overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level, got {type(loaded).__name__}")
        data = loaded or {}
    data = apply_overrides(data, overrides or [])
    try:
        return config_from_dict(ExperimentConfig, data)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}" if path else str(err)) from None
