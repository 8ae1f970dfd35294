"""Synthetic HMR data for the tests: written once per test session under pytest's temporary folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from lsr1.config import ExperimentConfig, load_config
from lsr1.hmr.synthetic import generate


@pytest.fixture(scope="session")
def hmr_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Paths of a small synthetic body, AMASS and 3DPW (every test module shares one copy)."""
    root = tmp_path_factory.getbasetemp() / "hmr-synthetic"
    if not (root / "complete").exists():
        generate(root, seed=0, amass={"frames": 30}, pw3d={"sequences": {"train": 1, "validation": 1, "test": 2}, "frames": 20})
        (root / "complete").touch()
    return {"root": root, "body": root / "body", "amass": root / "amass", "3dpw": root / "3dpw", "cache": root / "cache"}


def hmr_config(data: dict[str, Path], *overrides: str) -> ExperimentConfig:
    """configs/hmr_smoke.yaml pointed at the session's synthetic data."""
    paths = [
        f"hmr.body_dir={data['body']}",
        f"hmr.amass_dir={data['amass']}",
        f"hmr.pw3d_dir={data['3dpw']}",
        f"hmr.cache_dir={data['cache']}",
    ]
    return load_config("configs/hmr_smoke.yaml", [*paths, *overrides])
