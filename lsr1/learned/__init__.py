"""Learned optimizers: nn.Modules with the batched init/step interface and the hooks of `base.LearnedOptimizer`
(the HMR initializer network among them, `initializer`). `lsr1.learners.make_learner` builds one from a config."""

from lsr1.learned.base import HandDesigned, LearnedOptimizer
from lsr1.learned.bfgs_steps import BFGSSteps, BFGSStepsState
from lsr1.learned.lgd import LGD, LGDState
from lsr1.learned.sr1 import LSR1, LSR1State, applied_secant_residual, precondition, secant_residual, without_learned_terms

__all__ = [
    "BFGSSteps",
    "BFGSStepsState",
    "LGD",
    "LGDState",
    "LSR1",
    "HandDesigned",
    "LSR1State",
    "LearnedOptimizer",
    "applied_secant_residual",
    "precondition",
    "secant_residual",
    "without_learned_terms",
]
