"""Learned optimizers: nn.Modules with the batched init/step interface and a meta-loss penalty."""
from lsr1.config import ExperimentConfig
from lsr1.learned.base import LearnedOptimizer
from lsr1.learned.bfgs_steps import BFGSSteps, BFGSStepsState
from lsr1.learned.lgd import LGD, LGDState
from lsr1.learned.sr1 import LSR1, LSR1State, applied_secant_residual, precondition, secant_residual, with_buffer_size, with_lbfgs_memory

__all__ = [
    "BFGSSteps",
    "BFGSStepsState",
    "LGD",
    "LGDState",
    "LSR1",
    "LSR1State",
    "LearnedOptimizer",
    "applied_secant_residual",
    "make_learner",
    "precondition",
    "secant_residual",
    "with_buffer_size",
    "with_lbfgs_memory",
]


def make_learner(config: ExperimentConfig) -> LearnedOptimizer:
    """The learned optimizer an experiment config describes (freshly initialised): the update module
    (`config.learner`), and for HMR an initializer network in front of it (one module, one state_dict)."""
    if config.learner == "bfgs_steps":
        return BFGSSteps(config.bfgs_steps)
    horizon = config.meta.burn_in + config.meta.unroll_steps  # the last step meta-training reaches
    if config.task.name != "hmr":
        return LSR1(config.lsr1, horizon)  # the config only allows "lgd" with HMR
    # imported here: lsr1.hmr.initializer builds on lsr1.learned.base
    from lsr1.hmr.initializer import Initializer, WithInitializer
    from lsr1.tasks.hmr import CONTEXT_DIM, NUM_BETAS, pose_size, rest_theta

    pose_dim = pose_size(config.hmr.rotation)
    update: LearnedOptimizer
    if config.learner == "lgd":
        update = LGD(config.lgd, CONTEXT_DIM, pose_dim, NUM_BETAS)
    else:
        update = LSR1(config.lsr1, horizon)
    h = config.hmr
    initializer = Initializer(CONTEXT_DIM, rest_theta(h.rotation), pose_dim, h.init_hidden_dim, h.init_dropout)
    return WithInitializer(initializer, update)
