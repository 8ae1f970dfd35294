import os
import pickle

import pytest
import torch

from lsr1.checkpoint import CheckpointError, config_of, load_checkpoint, save_checkpoint
from lsr1.config import ExperimentConfig, config_to_dict


def _payload():
    return {"config": config_to_dict(ExperimentConfig()), "model": {"w": torch.ones(3)}, "iteration": 4}


def test_round_trip(tmp_path):
    path = save_checkpoint(tmp_path / "sub" / "c.pt", _payload())
    loaded = load_checkpoint(path)
    assert loaded["iteration"] == 4 and torch.equal(loaded["model"]["w"], torch.ones(3))
    assert config_of(loaded) == ExperimentConfig()
    assert [p.name for p in path.parent.iterdir()] == ["c.pt"]  # no temporary file left behind


def test_refuses_to_write_non_finite_weights(tmp_path):
    payload = _payload()
    payload["model"]["w"] = torch.tensor([1.0, float("nan")])
    with pytest.raises(CheckpointError, match="not finite"):
        save_checkpoint(tmp_path / "c.pt", payload)
    assert not (tmp_path / "c.pt").exists()


def test_unreadable_files_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "none.pt")
    truncated = tmp_path / "truncated.pt"
    save_checkpoint(truncated, _payload())
    truncated.write_bytes(truncated.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="truncated.pt: not a readable checkpoint"):
        load_checkpoint(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.ones(1)}, foreign)
    with pytest.raises(CheckpointError, match="foreign.pt: not an lsr1 checkpoint"):
        load_checkpoint(foreign)


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_malicious_pickle_is_rejected_and_not_executed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as out:
        pickle.dump({"format": 1, "config": {}, "model": _Exploit()}, out, protocol=2)
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_checkpoint(evil)
    assert not (tmp_path / "pwned").exists()


def test_invalid_stored_config_is_named(tmp_path):
    payload = _payload()
    payload["config"]["lsr1"]["buffer_size"] = 0
    path = save_checkpoint(tmp_path / "c.pt", payload)
    with pytest.raises(CheckpointError, match="c.pt: stored config is invalid"):
        config_of(load_checkpoint(path), path)
