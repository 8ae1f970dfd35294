"""Learned optimizers: nn.Modules with the batched init/step interface and a meta-loss penalty."""
from lsr1.config import ExperimentConfig
from lsr1.learned.base import LearnedOptimizer
from lsr1.learned.sr1 import LSR1, LSR1State, precondition, secant_residual, with_buffer_size

__all__ = [
    "LSR1",
    "LSR1State",
    "LearnedOptimizer",
    "make_learner",
    "precondition",
    "secant_residual",
    "with_buffer_size",
]


def make_learner(config: ExperimentConfig) -> LearnedOptimizer:
    """The learned optimizer an experiment config describes (freshly initialised)."""
    return LSR1(config.lsr1)
