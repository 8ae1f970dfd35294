"""`python -m pipeline.prepare`: the command-line name of `lsr1.tasks.prepare`, which says what it does."""

from lsr1.tasks.prepare import main

if __name__ == "__main__":
    raise SystemExit(main())
