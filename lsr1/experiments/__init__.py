"""The experiment runners, apart from the library they exercise: performance profiles (`profiles`), the BFGS
step-size study (`iterations`), the drop-in comparison on held-out problems (`dropin`) and the curves and
tables they share with the pipeline's evaluation (`analysis`). Their command lines keep their short names:
`python -m lsr1.profiles`, `python -m lsr1.iterations`, `python -m lsr1.dropin`."""
