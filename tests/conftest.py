import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    """Every test starts from the same torch seed and one thread (results do not depend on the machine)."""
    torch.manual_seed(0)
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def ray_local():
    """One private local Ray instance for every test that needs Ray (DESIGN §8)."""
    import os

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
