import os

import pytest
import torch

from tests.helpers import BUCKET


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    """Every test starts from the same torch seed and one thread (results do not depend on the machine)."""
    torch.manual_seed(0)
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def ray_local():
    """One private local Ray instance for every test that needs Ray (docs/design.md §8)."""
    import ray

    # the same settings as pipeline.train.connect_ray (the dashboard frees the placement groups of stopped trials);
    # set before ray.init so that the worker processes inherit them
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "600")
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    ray.init(address="local", num_cpus=2, include_dashboard=True, object_store_memory=200 * 1024**2, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    """A fresh MLflow tracking store for one test; returns its URI."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """A real S3-API server (moto's standalone server) on a free port of 127.0.0.1 with the bucket BUCKET;
    yields the standard AWS variables that reach it (AWS_ENDPOINT_URL included)."""
    import boto3

    from pipeline.cluster import free_ports
    from tests.e2e.servers import BIN, healthy, start_group, stop_groups, wait_until

    log = tmp_path_factory.mktemp("s3") / "moto.log"
    (port,) = free_ports(1)
    server = start_group([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], dict(os.environ), log)
    aws = {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
    }
    try:
        wait_until(lambda: healthy(f"{aws['AWS_ENDPOINT_URL']}/moto-api/"), server, "the S3 server", log, timeout=60)
        boto3.client(
            "s3", endpoint_url=aws["AWS_ENDPOINT_URL"], region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test"
        ).create_bucket(Bucket=BUCKET)
        yield aws
    finally:
        stop_groups(server)
