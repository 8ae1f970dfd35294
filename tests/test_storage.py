"""pipeline.storage: what --storage accepts and what it refuses, against a real S3 server (moto) and the shared
local Ray instance; on two nodes: tests/e2e/test_two_nodes.py."""

from __future__ import annotations

import pytest

from pipeline.cluster import Request
from pipeline.storage import StorageError, exists, join, require_shared, resolve, touch
from tests.helpers import BUCKET


def test_the_default_is_the_runs_folder_and_the_environment_overrides_it(tmp_path, monkeypatch):
    monkeypatch.delenv("LSR1_STORAGE", raising=False)
    assert resolve(None, tmp_path / "runs") == str(tmp_path / "runs")
    monkeypatch.setenv("LSR1_STORAGE", f"file://{tmp_path / 'shared'}")
    assert resolve(None, tmp_path / "runs") == str(tmp_path / "shared") and (tmp_path / "shared").is_dir()
    assert resolve(str(tmp_path / "flag"), tmp_path / "runs") == str(tmp_path / "flag")  # --storage wins


def test_a_bucket_is_checked_and_used_through_the_aws_variables(s3, monkeypatch, tmp_path):
    for key, value in s3.items():
        monkeypatch.setenv(key, value)
    root = resolve(f"s3://{BUCKET}/runs/", tmp_path)
    assert root == f"s3://{BUCKET}/runs"
    marker = join(root, "ray", "x", ".marker")
    assert marker == f"s3://{BUCKET}/runs/ray/x/.marker" and not exists(marker)
    touch(marker)
    assert exists(marker)
    with pytest.raises(StorageError, match="bucket 'no-such-bucket' does not exist .*AWS_ENDPOINT_URL"):
        resolve("s3://no-such-bucket/runs", tmp_path)
    with pytest.raises(StorageError, match="Unrecognized filesystem type in URI: s4://x"):
        resolve("s4://x", tmp_path)


def test_a_uri_keeps_its_query_at_the_end():
    assert join("s3://b/p?endpoint_override=localhost:9000", "ray", "run") == "s3://b/p/ray/run?endpoint_override=localhost:9000"


def test_a_local_folder_on_one_node_is_fine_and_on_an_autoscaling_one_it_is_not(ray_local, tmp_path):
    require_shared(str(tmp_path), autoscaling=False)
    with pytest.raises(StorageError, match="the Ray cluster adds nodes .* pass --storage s3://<bucket>/<prefix>"):
        require_shared(str(tmp_path), autoscaling=True)  # tmp_path is no network mount
    require_shared(f"s3://{BUCKET}/runs", autoscaling=True)


def test_a_custom_resource_per_worker_is_counted_and_lowered():
    request = Request(2, 0.5, custom={"lsr1_node": 1.0})
    one_node = {"CPU": 4.0, "lsr1_node": 1.0}
    assert request.shortfall(one_node, one_node) == "the Ray cluster has 1 of the resource lsr1_node"
    assert request.lower(one_node) == "--workers 1 (--worker-resource lsr1_node=1 each)"
    assert request.copies({"CPU": 4.0, "lsr1_node": 4.0}) == 2 and "+ 1 lsr1_node" in request.describe()
