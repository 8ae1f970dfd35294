"""What the end-to-end tests start and call: servers in process groups of their own (stopped by signalling that
group: `ray stop` would stop every Ray instance on the machine, another test run's too), the `ray` client and
`ray job submit` as README.md gives it."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def start_group(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """`command` in a new session (its own process group), its output in `log`."""
    with log.open("w") as out:
        return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop_groups(*processes: subprocess.Popen, grace: float = 15.0) -> None:
    """SIGTERM to the process group of each of `processes` at once, then SIGKILL to whatever of each group is
    left once its leader exited or `grace` seconds passed (`ray start --block` can take half a minute to stop
    its node on a busy machine)."""
    for process in processes:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for process in processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        with contextlib.suppress(ProcessLookupError):  # the leader, or what it left of its group
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def wait_until(ready: Callable[[], bool], process: subprocess.Popen, what: str, log: Path, timeout: float = 180) -> None:
    """Poll `ready` until it holds; an AssertionError naming `what` and its log if `process` dies or time runs out."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None and time.monotonic() < deadline, f"{what} did not come up; see {log}:\n{log.read_text()[-2000:]}"
        time.sleep(1)


def healthy(url: str) -> bool:
    """Whether `url` answers 200 now."""
    try:
        return urllib.request.urlopen(url, timeout=5).status == 200
    except OSError:
        return False


def ray(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    """The `ray` command of this venv as a client (token auth, as `ray start` set it up)."""
    return subprocess.run([str(BIN / "ray"), *args], env={**env, "RAY_AUTH_MODE": "token"}, capture_output=True, text=True, timeout=timeout)


@contextlib.contextmanager
def private_ray_tmpdir(prefix: str) -> Iterator[str]:
    """A short folder under /tmp (Ray's socket paths must stay under 107 characters) for RAY_TMPDIR, removed after.
    `ray start` writes the cluster's address to <RAY_TMPDIR>/ray/ray_current_cluster and only `ray stop` removes
    it: in the shared /tmp/ray that stale address would send later Ray processes on this machine (Ray Train's
    PlacementGroupCleaner of the in-process tests, another user's) to a dead GCS."""
    folder = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def node_ports() -> list[str]:
    """`ray start` flags giving a node free ports of its own: the defaults (e.g. the dashboard agent's 52365) may
    be taken by another Ray node of this machine, and then that node's job agent or metrics do not start."""
    from pipeline.cluster import free_ports

    names = (
        "node-manager-port",
        "object-manager-port",
        "metrics-export-port",
        "dashboard-agent-listen-port",
        "dashboard-agent-grpc-port",
        "runtime-env-agent-port",
    )
    return [f"--{name}={port}" for name, port in zip(names, free_ports(len(names)))] + ["--min-worker-port=0", "--max-worker-port=0"]


def alive_nodes(address: str, env: dict[str, str]) -> list[dict]:
    """The cluster's ALIVE nodes as `ray list nodes` gives them; none while the head has not registered itself yet
    (the state API then prints "No resource in the cluster", not JSON, and still exits 0)."""
    listed = ray("list", "nodes", "--address", address, "--format", "json", "--filter", "state=ALIVE", env=env)
    if listed.returncode != 0:
        return []
    try:
        return json.loads(listed.stdout)
    except json.JSONDecodeError:
        return []


def start_head(env: dict[str, str], log: Path, *options: str) -> tuple[subprocess.Popen, str, int]:
    """`ray start --head --block` on free ports of its own; returns it, the dashboard address and the GCS port
    (for `ray start --address`)."""
    from pipeline.cluster import free_ports

    # `ray start` turns token auth on only where a token exists (a fresh machine has none until some ray.init
    # made one), and the clients here ask for it: make the token first, as `make cluster-up` does
    ensured = ray("get-auth-token", "--generate", env=env)
    assert ensured.returncode == 0, f"ray get-auth-token --generate failed: {ensured.stderr[-2000:]}"
    gcs, dashboard, client = free_ports(3)
    head = start_group(
        [
            str(BIN / "ray"),
            "start",
            "--head",
            "--block",
            f"--port={gcs}",
            f"--dashboard-port={dashboard}",
            f"--ray-client-server-port={client}",
            *node_ports(),
            "--disable-usage-stats",
            "--include-dashboard=true",
            *options,
        ],
        {**env, "RAY_AUTH_MODE": "token"},
        log,
    )
    address = f"http://127.0.0.1:{dashboard}"
    try:
        # the job API can answer before the head node has registered itself with the state API
        wait_until(
            lambda: ray("job", "list", "--address", address, env=env).returncode == 0 and bool(alive_nodes(address, env)),
            head,
            "the Ray head",
            log,
        )
    except BaseException:
        stop_groups(head)
        raise
    return head, address, gcs


def submit(address: str, env: dict[str, str], env_vars: dict[str, str], *command: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """README's line: `ray job submit --working-dir . --runtime-env-json '{"env_vars": {...}}' -- python -m ...`;
    submitted again while a freshly started head has no job agent yet (it says "please try again later")."""
    line = [
        "job",
        "submit",
        "--address",
        address,
        "--working-dir",
        ".",
        "--runtime-env-json",
        json.dumps({"env_vars": env_vars}),
        "--",
        "python",
        "-m",
        *command,
    ]
    deadline = time.monotonic() + 120
    while True:
        done = subprocess.run(
            [str(BIN / "ray"), *line], cwd=REPO, env={**env, "RAY_AUTH_MODE": "token"}, capture_output=True, text=True, timeout=timeout
        )
        if "No available agent to submit job" not in done.stderr + done.stdout or time.monotonic() > deadline:
            return done
        time.sleep(3)
