"""Hand-designed optimizers behind the batched init/step interface of `lsr1.optim.base`."""

from lsr1.optim.adahessian import AdaHessian
from lsr1.optim.base import Info, Optimizer
from lsr1.optim.bfgs import BFGS
from lsr1.optim.first_order import Adam, GradientDescent
from lsr1.optim.hypergradient import BFGSDirection, HypergradientBFGS
from lsr1.optim.lbfgs import LBFGS
from lsr1.optim.linesearch import armijo, backtracking, line_search, strong_wolfe
from lsr1.optim.safeguard import Backtracked, armijo_step, with_line_search
from lsr1.optim.sr1 import SR1

__all__ = [
    "BFGS",
    "Backtracked",
    "armijo",
    "armijo_step",
    "BFGSDirection",
    "HypergradientBFGS",
    "LBFGS",
    "SR1",
    "AdaHessian",
    "Adam",
    "GradientDescent",
    "Info",
    "Optimizer",
    "backtracking",
    "line_search",
    "strong_wolfe",
    "with_line_search",
]
