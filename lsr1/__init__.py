"""L-SR1: learned symmetric-rank-one preconditioning (the library; pure torch, no Ray, no MLflow).

lsr1.LearnedSR1  a trained L-SR1 as a drop-in torch.optim.Optimizer
lsr1.learned     L-SR1 itself (`LSR1`), an nn.Module with the batched init/step interface
lsr1.optim       hand-designed baselines with the same interface
lsr1.tasks       seeded batches of analytic problems
lsr1.meta        unrolled meta-training and `run`, which evaluates any optimizer
lsr1.pretrained  shipped trained models by name
lsr1.experiments the runners: performance profiles (`python -m lsr1.profiles`), the drop-in comparison
                 (`python -m lsr1.dropin`), the BFGS step-size study (`python -m lsr1.iterations`)
"""

from lsr1.optimizer import LearnedSR1

__all__ = ["LearnedSR1"]
__version__ = "0.1.0"
