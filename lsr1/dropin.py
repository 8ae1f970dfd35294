"""`python -m lsr1.dropin`: the command-line name of `lsr1.experiments.dropin`, which says what it runs."""

from lsr1.experiments.dropin import main

if __name__ == "__main__":
    raise SystemExit(main())
