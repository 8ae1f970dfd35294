"""pipeline.prepare: AMASS/3DPW -> Parquet shards with a manifest; idempotent, atomic, bad files named."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from lsr1.hmr.formats import PW3D_COLUMNS, load_amass_frames, read_3dpw_split, read_frames_parquet
from lsr1.tasks.hmr import pw3d_arrays
from lsr1.tasks.prepare import PrepareError, main, prepare, prepared_files
from tests.hmr_data import hmr_config, hmr_data  # noqa: F401


@pytest.fixture
def setup(hmr_data, tmp_path):  # noqa: F811
    """A private copy of the synthetic AMASS and 3DPW (tests break files) and a config preparing it into tmp_path."""
    amass, pw3d = tmp_path / "amass", tmp_path / "3dpw"
    shutil.copytree(hmr_data["amass"], amass)
    shutil.copytree(hmr_data["3dpw"], pw3d)
    config = hmr_config(hmr_data, f"hmr.amass_dir={amass}", f"hmr.pw3d_dir={pw3d}", f"hmr.prepared_dir={tmp_path / 'prepared'}")
    return config.hmr


def test_shards_hold_every_frame_and_a_rerun_keeps_them(setup):
    first = prepare(setup, per_shard=3, progress=False)
    shards, splits = prepared_files(setup.prepared_dir, verify=True)
    frames = load_amass_frames(setup.amass_dir)
    rows = [read_frames_parquet(s, {"pose72": (72,), "betas10": (10,)}) for s in shards]
    assert len(shards) > 1 and sum(len(r["pose72"]) for r in rows) == len(frames["pose72"])
    np.testing.assert_allclose(np.concatenate([r["pose72"] for r in rows]), frames["pose72"], atol=1e-6)
    assert set(splits) == {"train", "validation", "test"}
    test = read_frames_parquet(splits["test"], PW3D_COLUMNS)
    expected = pw3d_arrays(read_3dpw_split(setup.pw3d_dir, "test"))
    np.testing.assert_allclose(test["pose72"], expected["pose72"], atol=1e-6)

    again = prepare(setup, per_shard=3, progress=False)
    assert again["written"] == [] and sorted(again["kept"]) == sorted(first["written"])
    halved = prepare(setup, every=2, per_shard=3, progress=False)  # another option: every AMASS shard again
    amass = [name for name in halved["written"] if name.startswith("amass/")]
    assert len(amass) == len(shards) and sum(halved["rows"][n] for n in amass) < len(frames["pose72"]) * 0.6


def test_a_bad_amass_file_fails_the_run_or_is_skipped_and_listed(setup, capsys):
    bad = sorted(Path(setup.amass_dir).rglob("*_poses.npz"))[1]
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(PrepareError, match=bad.name):
        prepare(setup, progress=False)
    result = prepare(setup, on_error="skip", progress=False)
    assert list(result["skipped"]) == [bad.relative_to(setup.amass_dir).as_posix()]
    manifest = json.loads((result["manifest"]).read_text())
    assert [entry["file"] for entry in manifest["skipped"]] == list(result["skipped"])
    # a kept shard that left a file out does not pass a later --on-error fail run unnoticed
    assert (
        main(
            [
                "--set",
                f"hmr.amass_dir={setup.amass_dir}",
                "--set",
                f"hmr.pw3d_dir={setup.pw3d_dir}",
                "--set",
                f"hmr.prepared_dir={setup.prepared_dir}",
                "--set",
                f"hmr.body_dir={setup.body_dir}",
            ]
        )
        == 1
    )
    assert bad.name in capsys.readouterr().err


def test_a_bad_3dpw_pickle_is_named(setup):
    bad = sorted(Path(setup.pw3d_dir, "sequenceFiles", "test").glob("*.pkl"))[0]
    bad.write_bytes(bad.read_bytes()[:100])  # truncated
    with pytest.raises(PrepareError, match=bad.name):
        prepare(setup, progress=False)


def test_a_shard_changed_after_preparing_is_named_before_training_reads_it(setup):
    prepare(setup, per_shard=3, progress=False)
    shard = prepared_files(setup.prepared_dir)[0][0]
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(PrepareError, match=f"{shard.name}: corrupt or changed"):
        prepared_files(setup.prepared_dir, verify=True)
    result = prepare(setup, per_shard=3, progress=False)  # and preparing again rewrites exactly that shard
    assert result["written"] == [shard.relative_to(setup.prepared_dir).as_posix()]
    prepared_files(setup.prepared_dir, verify=True)


def test_unprepared_folder_is_a_clear_error(tmp_path):
    with pytest.raises(PrepareError, match="manifest.json does not exist: run `python -m pipeline.prepare`"):
        prepared_files(tmp_path)


def test_the_synthetic_amass_size_is_an_option(tmp_path, capsys):
    root = tmp_path / "synthetic"
    folders = {"body_dir": "body", "amass_dir": "amass", "pw3d_dir": "3dpw", "prepared_dir": "prepared"}
    args = [a for key, folder in folders.items() for a in ("--set", f"hmr.{key}={root / folder}")]
    assert main(["--synthetic", "--synthetic-sequences", "3", *args]) == 0
    assert "720 frames" in capsys.readouterr().out  # 2 sub-datasets x 2 subjects x 3 sequences x 60 frames
    with pytest.raises(SystemExit):
        main(["--synthetic", "--synthetic-sequences", "0", *args])


def test_relative_data_paths_are_in_the_data_root(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LSR1_DATA_DIR", str(tmp_path))  # the defaults: datasets/synthetic/... under it
    assert main(["--synthetic"]) == 0
    assert (tmp_path / "datasets" / "synthetic" / "prepared" / "manifest.json").is_file()
    assert str(tmp_path / "datasets" / "synthetic" / "prepared") in capsys.readouterr().out
    monkeypatch.setenv("LSR1_DATA_DIR", "datasets")
    assert main([]) == 2 and "LSR1_DATA_DIR='datasets' must be an absolute path" in capsys.readouterr().err


def test_missing_data_in_a_ray_job_says_to_set_lsr1_data_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("LSR1_DATA_DIR", raising=False)
    with pytest.raises(PrepareError) as plain:
        prepared_files(tmp_path)
    assert "LSR1_DATA_DIR" not in str(plain.value)
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps({"runtime_env": {"working_dir": "gcs://_ray_pkg_x.zip"}}))
    with pytest.raises(PrepareError, match="uploaded copy of the working directory .* set LSR1_DATA_DIR"):
        prepared_files(tmp_path)
