"""No service of cluster.yaml's head opens without a key. Its Ray head and its MLflow server are started here the way
cluster.yaml starts them (the same Makefile targets, with free ports and private folders), as real processes:
the Ray job API refuses a submission without the token and takes one with it, and only on 127.0.0.1; the MLflow
server refuses a request without the password, while `pipeline.train` with it logs its run and names the run's
page. HOME is a fresh folder: a machine where no Ray token exists yet. Runs before any in-process Ray instance
(tests/e2e sorts first)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from pipeline.cluster import free_ports
from tests.e2e.servers import BIN, REPO, healthy, node_ports, private_ray_tmpdir, start_group, stop_groups, wait_until
from tests.helpers import logged_steps

CLUSTER = yaml.safe_load((REPO / "cluster.yaml").read_text())


def _make(*args: str) -> list[str]:
    """`make` on this venv (installed already: -o keeps make from reinstalling it)."""
    venv = os.path.relpath(sys.prefix, REPO)  # the Makefile's VENV is relative to the repository
    return ["make", "--no-print-directory", "-C", str(REPO), f"VENV={venv}", "-o", f"{venv}/.installed", *args]


def _status(url: str, headers: dict[str, str] | None = None, body: dict | None = None) -> int:
    """The HTTP status of a GET (or, with a body, a JSON POST) to `url`; 0 while nothing answers there."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        return urllib.request.urlopen(request, timeout=60).status
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:
        return 0


def _listening(port: int) -> set[str]:
    """The addresses that something listens on at TCP `port` (IPv4, from /proc/net/tcp: little-endian hex)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
            found.add(".".join(str(b) for b in reversed(bytes.fromhex(address))))
    return found


def _head_commands(target: str) -> list[str]:
    return [c for c in CLUSTER["head_start_ray_commands"] if f"make {target}" in c]


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """A HOME with no Ray token and no MLflow password, then `make cluster-secrets` (as before `ray up`)."""
    home = tmp_path_factory.mktemp("home")
    done = subprocess.run(_make("cluster-secrets"), env={**os.environ, "HOME": str(home)}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (home / ".ray" / "auth_token").stat().st_size > 0 and (home / ".lsr1" / "mlflow-password").stat().st_mode & 0o077 == 0
    return home


def test_cluster_yaml_starts_every_node_through_these_targets_and_mounts_the_keys():
    assert len(_head_commands("cluster-up")) == 1 and len(_head_commands("mlflow-server")) == 1
    assert any("make cluster-join" in c for c in CLUSTER["worker_start_ray_commands"])
    assert not any("0.0.0.0" in c for c in CLUSTER["head_start_ray_commands"] if "mlflow" not in c)
    assert {"~/.ray/auth_token", "~/.lsr1/mlflow-password"} <= set(CLUSTER["file_mounts"])


def test_the_ray_head_refuses_a_job_without_the_token_and_takes_one_with_it(home, tmp_path):
    (extra,) = [c.split('RAY_HEAD_ARGS="')[1].split('"')[0] for c in _head_commands("cluster-up")]
    assert "--port=6379" in extra  # cluster.yaml's own flags; here the ports are free ones and the node blocks
    gcs, dashboard, client = free_ports(3)
    args = f"--block --port={gcs} --ray-client-server-port={client} --num-cpus=1 " + " ".join(node_ports())
    with private_ray_tmpdir("rau") as ray_tmp:
        env = {**os.environ, "HOME": str(home), "RAY_TMPDIR": ray_tmp}
        env.pop("RAY_AUTH_MODE", None)
        log = tmp_path / "head.log"
        head = start_group(_make("cluster-up", f"RAY_DASHBOARD_PORT={dashboard}", f"RAY_HEAD_ARGS={args}"), env, log)
        address = f"http://127.0.0.1:{dashboard}"
        try:
            wait_until(lambda: _status(f"{address}/api/version") in (200, 401), head, "the Ray head", log)
            token = (home / ".ray" / "auth_token").read_text().strip()
            assert _status(f"{address}/api/jobs/") == 401
            assert _status(f"{address}/api/jobs/", {"Authorization": "Bearer not-the-token"}) in (401, 403)
            assert _status(f"{address}/api/jobs/", {"Authorization": f"Bearer {token}"}) == 200
            assert _listening(dashboard) == {"127.0.0.1"}, _listening(dashboard)

            job = [str(BIN / "ray"), "job", "submit", "--address", address, "--", "python", "-c", "print('job ran')"]
            stranger = {**env, "HOME": str(tmp_path)}  # a client without the token
            refused = subprocess.run(job, env=stranger, capture_output=True, text=True, timeout=120)
            assert refused.returncode != 0 and "job ran" not in refused.stdout
            assert "auth" in (refused.stdout + refused.stderr).lower()
            taken = subprocess.run(job, env={**env, "RAY_AUTH_MODE": "token"}, capture_output=True, text=True, timeout=300)
            assert taken.returncode == 0 and "job ran" in taken.stdout, taken.stdout[-2000:] + taken.stderr[-2000:]
        finally:
            stop_groups(head)


def test_the_mlflow_server_refuses_a_request_without_the_password_and_a_run_with_it_logs(home, tmp_path):
    (port,) = free_ports(1)
    uri = f"http://127.0.0.1:{port}"
    env = {**os.environ, "HOME": str(home)}
    log = tmp_path / "mlflow.log"
    server = start_group(
        _make(
            "mlflow-server",
            f"MLFLOW_PORT={port}",
            f"MLFLOW_BACKEND=sqlite:///{tmp_path / 'mlflow.db'}",
            f"MLFLOW_ARTIFACTS={tmp_path / 'artifacts'}",
            f"MLFLOW_STATE={tmp_path / 'state'}",
            "MLFLOW_SERVER_ARGS=--workers 1",
        ),
        env,
        log,
    )
    try:
        wait_until(lambda: healthy(f"{uri}/health"), server, "the MLflow server", log)
        password = (home / ".lsr1" / "mlflow-password").read_text().strip()
        search = f"{uri}/api/2.0/mlflow/experiments/search"

        def basic(user: str, secret: str) -> dict[str, str]:
            return {"Authorization": "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()}

        assert _status(search, body={"max_results": 5}) == 401
        assert _status(search, basic("admin", "guess"), body={"max_results": 5}) == 401
        assert _status(search, basic("admin", password), body={"max_results": 5}) == 200

        train = [
            sys.executable,
            "-m",
            "pipeline.train",
            "--config",
            "configs/smoke.yaml",
            "--smoke-test",
            "--local",
            "--name",
            "keyed",
            "--runs-dir",
            str(tmp_path / "runs"),
        ]
        run_env = {**env, "MLFLOW_TRACKING_URI": uri}
        anonymous = subprocess.run(train, cwd=REPO, env=run_env, capture_output=True, text=True, timeout=300)
        assert anonymous.returncode == 2 and "MLFLOW_TRACKING_USERNAME" in anonymous.stderr and "Traceback" not in anonymous.stderr
        keyed = {**run_env, "MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": password}
        done = subprocess.run(train, cwd=REPO, env=keyed, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        os.environ.update(MLFLOW_TRACKING_USERNAME="admin", MLFLOW_TRACKING_PASSWORD=password)
        try:
            client = MlflowClient(uri)
            experiment = client.get_experiment_by_name("smoke")
            (run,) = client.search_runs([experiment.experiment_id], "tags.`lsr1.run_name` = 'keyed'")
            assert logged_steps(client, run.info.run_id) == [1, 2, 3, 4, 5, 6]
        finally:
            del os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]
        # the server is the UI: the last line is the run's page, and MLflow's own "View run at" lines are in the log
        lines = done.stdout.strip().splitlines()
        assert lines[-1] == f"MLflow UI: {uri}/#/experiments/{experiment.experiment_id}/runs/{run.info.run_id}"
        assert "View run" not in done.stdout + done.stderr and "mlflow ui --backend-store-uri" not in done.stdout
    finally:
        stop_groups(server)
