"""The one place that knows every learner and every task: `make_learner` builds the learned optimizer an
experiment config describes. It sits above `lsr1.learned` and `lsr1.tasks`, so neither imports the other
for it."""

from __future__ import annotations

from lsr1.config import ExperimentConfig
from lsr1.learned import LGD, LSR1, BFGSSteps, LearnedOptimizer
from lsr1.learned.blocks import Blocks
from lsr1.learned.initializer import Initializer, WithInitializer
from lsr1.learned.official import OfficialLSR1
from lsr1.tasks.hmr import CONTEXT_DIM, NUM_BETAS, pose_size, rest_theta

__all__ = ["make_learner"]


def make_learner(config: ExperimentConfig) -> LearnedOptimizer:
    """The learned optimizer an experiment config describes (freshly initialised): the update module
    (`config.learner`), and for HMR an initializer network in front of it (one module, one state_dict)."""
    if config.learner == "bfgs_steps":
        return BFGSSteps(config.bfgs_steps)
    horizon = config.meta.burn_in + config.meta.unroll_steps  # the last step meta-training reaches
    c = config.lsr1

    def official(secant_weight: float) -> OfficialLSR1:
        return OfficialLSR1(c.buffer_size, c.gamma1, c.gamma2, width=c.hidden_dim, dropout=c.dropout, secant_weight=secant_weight)

    if config.task.name != "hmr":  # the config only allows "lgd" with HMR
        return official(c.lambda_sec) if c.formulation == "official" else LSR1(config.lsr1, horizon)
    pose_dim = pose_size(config.hmr.rotation)
    update: LearnedOptimizer
    if config.learner == "lgd":
        update = LGD(config.lgd, CONTEXT_DIM, pose_dim, NUM_BETAS)
    elif c.formulation == "official":  # theirs: one module for the pose, one for the shape
        pose_weight, shape_weight = (2 * c.lambda_sec, 0.0) if c.beta_secant == "slip" else (c.lambda_sec, c.lambda_sec)
        update = Blocks({"pose": (official(pose_weight), pose_dim), "shape": (official(shape_weight), NUM_BETAS)})
    else:
        update = LSR1(config.lsr1, horizon)
    h = config.hmr
    initializer = Initializer(CONTEXT_DIM, rest_theta(h.rotation), pose_dim, h.init_hidden_dim, h.init_dropout)
    return WithInitializer(initializer, update)
