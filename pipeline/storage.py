"""Where Ray Train and Tune keep a run (`--storage URI`, env LSR1_STORAGE): checkpoints, Tune's state.

One machine: a local folder (the default, --runs-dir: `runs/ray/<run>`, `runs/tune/<sweep>`). A cluster: storage
that every node reaches, because Ray Train workers upload checkpoints from their own node and a restarted worker,
a rerun or the sweep driver reads them back from there: `s3://bucket/prefix` (pyarrow's S3 filesystem, with the
standard AWS variables or an instance profile; AWS_ENDPOINT_URL for MinIO or another S3-compatible server) or a
folder on a shared mount (NFS, EFS) at the same path on every node. Before a run starts, `require_shared` stops
one whose local folder some node cannot see, instead of letting its workers fail at the first checkpoint.
Everything the pipeline reads back comes from here; `runs/<name>/` on the driver is a copy.
"""

from __future__ import annotations

import argparse
import os
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pyarrow
import pyarrow.fs

__all__ = ["ENV", "StorageError", "add_arguments", "exists", "is_local", "join", "require_shared", "resolve", "touch"]

ENV = "LSR1_STORAGE"
# what /proc/mounts calls a filesystem that other machines can mount too (a folder on one is shared storage)
NETWORK_FILESYSTEMS = ("nfs", "nfs4", "cifs", "smb3", "ceph", "glusterfs", "lustre", "beegfs", "gpfs", "9p", "fuse.")
CHECK_TIMEOUT_S = 300.0  # for each node to start a worker and look for the marker (a busy node takes a while)
WHAT_TO_PASS = (
    "pass --storage s3://<bucket>/<prefix> (credentials from the instance profile or AWS_ACCESS_KEY_ID / "
    "AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL for an S3-compatible server), or a folder on a shared mount "
    "(NFS, EFS) that every node mounts at the same path; or set LSR1_STORAGE"
)


class StorageError(ValueError):
    """Storage that a run cannot use: a bad URI, an unreachable bucket, a local folder on a cluster."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """--runs-dir (the driver's local copies) and --storage (Ray's), for pipeline.train and pipeline.sweep."""
    parser.add_argument(
        "--runs-dir",
        type=Path,
        default=Path(os.environ.get("LSR1_RUNS_DIR", "runs")),
        help="where the local copies go: runs/<name>/ (env LSR1_RUNS_DIR)",
    )
    parser.add_argument(
        "--storage",
        metavar="URI",
        default=None,
        help=f"where Ray keeps checkpoints and sweep state: a folder (default: --runs-dir), a shared mount, "
        f"or s3://bucket/prefix; on more than one node it must be reachable from every node (env {ENV})",
    )


def is_local(root: str) -> bool:
    """Whether `root` is a folder of this machine's filesystem (maybe a shared mount) rather than a bucket."""
    return urlsplit(root).scheme in ("", "file")


def resolve(storage: str | None, runs_dir: Path) -> str:
    """The storage root: `storage`, else LSR1_STORAGE, else `runs_dir`; a folder made absolute, a URI whose bucket
    is checked (created folders, a readable bucket), so that a typo fails here and not on a worker."""
    root = storage or os.environ.get(ENV) or str(runs_dir)
    if urlsplit(root).scheme == "file":
        root = urlsplit(root).path
    if is_local(root):
        path = Path(root).expanduser().resolve()
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StorageError(f"storage {root}: cannot create the folder ({err.strerror})") from None
        return str(path)
    root = root.rstrip("/")
    try:
        filesystem, path = pyarrow.fs.FileSystem.from_uri(root)
        bucket = path.split("/")[0]
        if filesystem.get_file_info(bucket).type == pyarrow.fs.FileType.NotFound:
            raise StorageError(
                f"storage {root}: bucket {bucket!r} does not exist (create it first"
                + (", or check AWS_ENDPOINT_URL" if os.environ.get("AWS_ENDPOINT_URL") else "")
                + ")"
            )
        filesystem.create_dir(path)
    except (pyarrow.ArrowException, OSError) as err:
        raise StorageError(
            f"storage {root}: {str(err).strip()} (expected a folder, a shared mount or s3://bucket/prefix with AWS credentials)"
        ) from None
    return root


def join(root: str, *parts: str) -> str:
    """`root`/part/... for a folder or a URI (a URI's query, e.g. ?endpoint_override=..., stays at the end)."""
    if is_local(root):
        return str(Path(root, *parts))
    split = urlsplit(root)
    return urlunsplit(split._replace(path="/".join([split.path.rstrip("/"), *parts])))


def exists(uri: str) -> bool:
    """Whether there is a file or folder at `uri` (an absolute folder or a URI)."""
    filesystem, path = pyarrow.fs.FileSystem.from_uri(uri)
    return filesystem.get_file_info(path).type != pyarrow.fs.FileType.NotFound


def touch(uri: str) -> None:
    """An empty file at `uri` (its folder made first)."""
    filesystem, path = pyarrow.fs.FileSystem.from_uri(uri)
    filesystem.create_dir(path.rsplit("/", 1)[0])
    with filesystem.open_output_stream(path):
        pass


def _network_mount(path: str) -> bool:
    """Whether `path` lies on a network filesystem of this machine (the longest mount point above it)."""
    try:
        mounts = [line.split()[1:3] for line in Path("/proc/mounts").read_text().splitlines() if len(line.split()) > 2]
    except OSError:  # not Linux: nothing to go by
        return False
    above = [(point, kind) for point, kind in mounts if path == point or path.startswith(point.rstrip("/") + "/")]
    return bool(above) and max(above, key=lambda m: len(m[0]))[1].startswith(NETWORK_FILESYSTEMS)


def require_shared(root: str, autoscaling: bool) -> None:
    """A StorageError, saying what to pass, when `root` is a local folder that not every node of the Ray cluster
    can reach. Each other alive node looks for a marker this driver writes there (the check Ray Train makes at a
    worker's first checkpoint); nodes an autoscaling cluster may still add can only be vouched for by a network
    mount. Buckets pass: every node reaches them with the same credentials."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if not is_local(root):
        return
    here = ray.get_runtime_context().get_node_id()
    others = [node for node in ray.nodes() if node.get("Alive") and node["NodeID"] != here]
    if not others:
        if autoscaling and not _network_mount(root):
            raise StorageError(
                f"storage {root} is a local folder of this node, but the Ray cluster adds nodes (autoscaling) "
                f"that will not see it, and Ray Train's workers there would fail at their first checkpoint: "
                f"{WHAT_TO_PASS}"
            )
        return
    marker = Path(root, f".lsr1-storage-check-{uuid.uuid4().hex}")
    marker.touch()
    try:
        sees = ray.remote(num_cpus=0)(os.path.exists)
        refs = [
            sees.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)).remote(str(marker))
            for node in others
        ]
        try:
            seen = ray.get(refs, timeout=CHECK_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            raise StorageError(
                f"storage {root}: not every node of the Ray cluster answered within {CHECK_TIMEOUT_S:.0f} s whether it sees this folder"
            ) from None
    finally:
        marker.unlink()
    blind = [f"{node['NodeManagerAddress']} (node {node['NodeID'][:8]})" for node, ok in zip(others, seen) if not ok]
    if blind:
        raise StorageError(
            f"storage {root} is a local folder that {len(blind)} of the Ray cluster's {len(others) + 1} nodes "
            f"cannot see ({', '.join(blind)}), and Ray Train's workers there would fail at their first "
            f"checkpoint: {WHAT_TO_PASS}"
        )
