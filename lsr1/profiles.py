"""`python -m lsr1.profiles`: the command-line name of `lsr1.experiments.profiles`, which says what it runs."""

from lsr1.experiments.profiles import main

if __name__ == "__main__":
    raise SystemExit(main())
