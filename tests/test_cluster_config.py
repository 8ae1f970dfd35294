"""cluster.yaml passes the cluster-config schema that ships inside the installed Ray package."""

import json
import re
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER = Path(__file__).resolve().parents[1] / "cluster.yaml"


def _schema() -> dict:
    return json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())


def test_cluster_yaml_matches_rays_schema():
    config = yaml.safe_load(CLUSTER.read_text())
    jsonschema.validate(config, _schema())
    validate_config(prepare_config(config))


def test_cluster_yaml_has_a_gpu_worker_type_and_installs_cuda_torch():
    config = yaml.safe_load(CLUSTER.read_text())
    workers = {k: v for k, v in config["available_node_types"].items() if k != config["head_node_type"]}
    assert any(t["resources"].get("GPU", 0) >= 1 and t["max_workers"] >= 1 for t in workers.values())
    assert any("TORCH_SPEC" in command and "cu" in command for command in config["setup_commands"])
    assert any(target.endswith("datasets") for target in config["file_mounts"])


def test_the_schema_check_catches_a_typo():
    config = yaml.safe_load(CLUSTER.read_text())
    config["max_wokers"] = 3
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(config, _schema())


def test_cluster_yaml_keeps_checkpoints_and_mlflow_artifacts_in_one_bucket_that_workers_reach():
    text = CLUSTER.read_text()
    config = yaml.safe_load(text)
    (server,) = [command for command in config["head_start_ray_commands"] if "make mlflow-server" in command]
    bucket = re.search(r"MLFLOW_ARTIFACTS=s3://([\w.-]+)/", server).group(1)
    assert f'"LSR1_STORAGE": "s3://{bucket}/' in text  # the job line of the header
    workers = [t for k, t in config["available_node_types"].items() if k != config["head_node_type"]]
    assert all("IamInstanceProfile" in t["node_config"] for t in workers)
