"""The thin Ray + MLflow layer over the `lsr1` library: the command-line tools users run."""
