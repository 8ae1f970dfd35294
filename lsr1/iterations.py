"""`python -m lsr1.iterations`: the command-line name of `lsr1.experiments.iterations`, which says what it runs."""

from lsr1.experiments.iterations import main

if __name__ == "__main__":
    raise SystemExit(main())
