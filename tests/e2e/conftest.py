"""The synthetic data root that the end-to-end tests share (prepared once per test run)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.servers import REPO


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """A data root outside the repository: `LSR1_DATA_DIR=<it> python -m pipeline.prepare --synthetic`."""
    root = tmp_path_factory.mktemp("data")
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.prepare", "--synthetic"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "LSR1_DATA_DIR": str(root)},
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert (root / "datasets" / "synthetic" / "prepared" / "manifest.json").is_file()
    return root
