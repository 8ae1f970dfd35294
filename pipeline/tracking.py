"""MLflow tracking for training runs: one MLflow run per training run, written by rank 0 only.

The store defaults to a SQLite database `mlflow.db` in the working directory (git-ignored) with artifacts
under `mlruns/`; `MLFLOW_TRACKING_URI` overrides it (e.g. a tracking server for a cluster). Metrics are
buffered and written when a checkpoint is written, and a resumed run skips steps already logged, so a
restarted worker neither loses nor repeats an iteration in the metric history.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import logging
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient

from lsr1.config import ExperimentConfig, config_to_dict, flatten

__all__ = ["RUN_NAME_TAG", "MetricsBuffer", "Run", "TrackingError", "tracking_uri"]

log = logging.getLogger(__name__)

RUN_NAME_TAG = "lsr1.run_name"
_BATCH = 900  # MLflow's log_batch accepts at most 1000 metrics per call


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, else an absolute SQLite path in the working directory (so workers agree)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"


class TrackingError(RuntimeError):
    """The tracking server refused us: what to set, in words."""


@contextlib.contextmanager
def _refusal_explained(uri: str) -> Iterator[None]:
    """A tracking server that asks for a password (cluster.yaml's) and did not get the right one: a TrackingError
    that says which variables to set, not MLflow's traceback."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as err:
        if err.get_http_status_code() not in (401, 403):
            raise
        given = "MLFLOW_TRACKING_USERNAME" in os.environ
        raise TrackingError(
            f"the MLflow server at {uri} refused the request ({err.get_http_status_code()}): "
            + (
                "check MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
                if given
                else "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (docs/cluster.md)"
            )
        ) from None


@contextlib.contextmanager
def _into_log() -> Iterator[None]:
    """What MLflow prints while this runs goes to the log, not the terminal: "Successfully registered model ...",
    and on a tracking server, at every run's end, "View run ... at ..." (the summary names the run's page)."""
    said = io.StringIO()
    try:
        with contextlib.redirect_stdout(said), contextlib.redirect_stderr(said):
            yield
    finally:
        for line in said.getvalue().splitlines():
            log.info("MLflow: %s", line)


@contextlib.contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """One process at a time through a SQLite store's first use. A new store creates its schema then, and
    two processes doing it at once (parallel runs, a sweep's trials) fail on each other's half-made
    tables, or both create the same experiment; the lock is `<database>.lock` beside it."""
    if not uri.startswith("sqlite:"):
        yield
        return
    database = Path(uri.removeprefix("sqlite:///"))
    with open(database.with_name(database.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


class Run:
    """The MLflow run of one training run; `Run.open` finds it again by name when a run resumes."""

    def __init__(self, uri: str, run_id: str) -> None:
        self.uri, self.run_id = uri, run_id
        self.client = MlflowClient(uri)

    @classmethod
    def open(cls, uri: str, experiment: str, name: str, config: ExperimentConfig, tags: dict[str, str] | None = None) -> Run:
        """The run named `name` in `experiment` (created with its params if new, reopened if it exists)."""
        with _refusal_explained(uri), _store_lock(uri):  # the schema of a new store (made by the client) and the experiment, by one process
            client = MlflowClient(uri)
            found = client.get_experiment_by_name(experiment)
            if found is None:
                artifacts = None
                if uri.startswith("sqlite:"):  # keep artifacts next to the database, not under whatever the cwd is
                    artifacts = (Path(uri.removeprefix("sqlite:///")).parent / "mlruns" / experiment).resolve().as_uri()
                experiment_id = client.create_experiment(experiment, artifact_location=artifacts)
            else:
                experiment_id = found.experiment_id
        existing = cls.find(uri, experiment, name)
        if existing is not None:
            client.update_run(existing.run_id, status="RUNNING")
            log.info("MLflow: resuming run %s (%s)", name, existing.run_id)
            return existing
        run = client.create_run(experiment_id, run_name=name, tags={RUN_NAME_TAG: name, **(tags or {})})
        params = [Param(k, str(v)) for k, v in flatten(config_to_dict(config)).items()]
        client.log_batch(run.info.run_id, params=params)
        return cls(uri, run.info.run_id)

    @classmethod
    def find(cls, uri: str, experiment: str, name: str) -> Run | None:
        """The run named `name` in `experiment`, if there is one."""
        client = MlflowClient(uri)
        found = client.get_experiment_by_name(experiment)
        runs = client.search_runs([found.experiment_id], f"tags.`{RUN_NAME_TAG}` = '{name}'", max_results=1) if found else []
        return cls(uri, runs[0].info.run_id) if runs else None

    def last_step(self) -> int:
        """The highest iteration logged (0 if none): where a resumed run's history continues. Read off the meta
        learning rate, which every iteration logs finite (a skipped step's NaN loss is not stored)."""
        history = self.client.get_metric_history(self.run_id, "lr")
        return max((m.step for m in history), default=0)

    def log_metrics(self, rows: list[tuple[int, dict[str, float]]]) -> None:
        """Log (step, metrics) rows in batches; non-finite values are not storable and are left out."""
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, step) for step, values in rows for k, v in values.items() if math.isfinite(v)]
        for start in range(0, len(metrics), _BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[start : start + _BATCH])

    def set_tags(self, tags: dict[str, Any]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_model(self, payload: dict[str, Any], registered_name: str, alias: str | None = None) -> str:
        """Log the learner of a checkpoint payload with mlflow.pytorch and register it; returns 'name vN'.

        (The pickled MLflow model is for MLflow's tools; our own commands load the best.pt artifact, which
        is read without trusting pickles.)"""
        import mlflow
        import torch

        from lsr1.checkpoint import config_of
        from lsr1.learners import make_learner

        model = make_learner(config_of(payload))
        model.load_state_dict(payload["model"])
        mlflow.set_tracking_uri(self.uri)
        with _into_log(), mlflow.start_run(run_id=self.run_id):
            info = mlflow.pytorch.log_model(
                model.eval(), name="model", serialization_format="pickle", pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"]
            )
            version = mlflow.register_model(info.model_uri, registered_name)
        if alias is not None:
            self.client.set_registered_model_alias(registered_name, alias, version.version)
        return f"{registered_name} v{version.version}"

    def where_to_look(self) -> str:
        """The terminal's last line: the run's page where the store is a tracking server (which serves the UI
        itself), else the command that opens the UI on the store."""
        if not self.uri.startswith(("http://", "https://")):
            return f"mlflow ui --backend-store-uri {self.uri}"
        experiment_id = self.client.get_run(self.run_id).info.experiment_id
        return f"MLflow UI: {self.uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{self.run_id}"

    def latest_metrics(self) -> dict[str, float]:
        """The last logged value of every metric."""
        return dict(self.client.get_run(self.run_id).data.metrics)

    @property
    def status(self) -> str:
        """RUNNING, FINISHED, FAILED or KILLED, as the tracking store has it now."""
        return self.client.get_run(self.run_id).info.status

    def finish(self, ok: bool) -> None:
        with _into_log():
            self.client.set_terminated(self.run_id, RunStatus.to_string(RunStatus.FINISHED if ok else RunStatus.FAILED))


class MetricsBuffer:
    """Per-iteration metrics held until the next checkpoint, then written once (see the module doc)."""

    def __init__(self, run: Run) -> None:
        self.run, self.rows = run, []
        self.logged_up_to = run.last_step()

    def add(self, iteration: int, metrics: dict[str, float]) -> None:
        if iteration > self.logged_up_to:
            self.rows.append((iteration, metrics))

    def flush(self) -> None:
        if self.rows:
            self.run.log_metrics(self.rows)
            self.logged_up_to = self.rows[-1][0]
            self.rows = []
