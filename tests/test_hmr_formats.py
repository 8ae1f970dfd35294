import os
import pickle

import numpy as np
import pytest
import torch

from lsr1.hmr import formats
from lsr1.hmr.body import BodyModel
from lsr1.hmr.formats import (
    FormatError,
    amass_frames,
    find_amass_files,
    read_3dpw,
    read_3dpw_split,
    read_amass,
    read_smpl,
    safe_unpickle,
)
from lsr1.hmr.rotations import axis_angle_to_matrix
from lsr1.hmr.synthetic import write_legacy_smpl, write_py2_pickle
from tests.hmr_data import hmr_data  # noqa: F401  (session fixture)


class _Exploit:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.mark.parametrize("protocol", [2, 5])
def test_a_pickle_that_calls_anything_else_is_refused_and_nothing_runs(tmp_path, protocol):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"poses": [np.zeros(3)], "x": _Exploit(f"touch {marker}")}, protocol=protocol))
    with pytest.raises(FormatError, match=r"evil\.pkl.*refusing (posix|os)\.system"):
        safe_unpickle(evil)
    assert not marker.exists()
    sneaky = tmp_path / "sneaky.pkl"  # a numpy function that reads files is not an array constructor
    sneaky.write_bytes(b"\x80\x02cnumpy\nload\nq\x00X\x04\x00\x00\x00/etcq\x01\x85q\x02Rq\x03.")
    with pytest.raises(FormatError, match=r"sneaky\.pkl.*refusing numpy\.load"):
        safe_unpickle(sneaky)


def test_numpy_2_pickles_of_arrays_and_containers_load(tmp_path):
    data = {"a": np.arange(6.0).reshape(2, 3), "b": [np.int64(3), {1, 2}], "c": ("x", np.float32(1.5))}
    for protocol in (2, 4, 5):
        path = tmp_path / f"p{protocol}.pkl"
        path.write_bytes(pickle.dumps(data, protocol=protocol))
        loaded = safe_unpickle(path)
        np.testing.assert_array_equal(loaded["a"], data["a"])
        assert loaded["b"][0] == 3 and loaded["b"][1] == {1, 2} and loaded["c"] == ("x", 1.5)


def test_a_python2_smpl_pickle_with_chumpy_and_sparse_regressor_loads_and_is_cached(hmr_data, tmp_path, monkeypatch):  # noqa: F811
    reference = read_smpl(hmr_data["body"] / "smpl" / "SMPL_NEUTRAL.npz")
    legacy = write_legacy_smpl(reference, tmp_path / "models" / "smpl" / "SMPL_NEUTRAL.pkl")
    raw = legacy.read_bytes()
    assert b"cchumpy.ch\nCh\n" in raw and b"cscipy.sparse.csc\ncsc_matrix\n" in raw and b"cnumpy.core.multiarray\n" in raw
    body = BodyModel(tmp_path / "models", cache_dir=tmp_path / "cache")
    for key, value in reference.items():
        np.testing.assert_array_equal(body.arrays[key], value, err_msg=key)
    assert len(list((tmp_path / "cache").glob("SMPL_NEUTRAL-*.npz"))) == 1
    monkeypatch.setattr(formats, "safe_unpickle", lambda path: pytest.fail("the cache was not used"))
    cached = BodyModel(tmp_path / "models", cache_dir=tmp_path / "cache")
    pose = 0.4 * torch.randn(4, 72)
    a = body.smpl(betas=torch.zeros(4, 10), body_pose=pose[:, 3:], global_orient=pose[:, :3]).joints
    b = cached.smpl(betas=torch.zeros(4, 10), body_pose=pose[:, 3:], global_orient=pose[:, :3]).joints
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def _smpl_npz(path, arrays):
    with open(path, "wb") as out:
        np.savez(out, **arrays)
    return path


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda a: a.pop("posedirs"), "missing key 'posedirs'"),
        (lambda a: a.update(weights=a["weights"][:, :23]), r"key 'weights': expected shape \(6890, 24\), got \(6890, 23\)"),
        (lambda a: a["v_template"].__setitem__((5, 1), np.nan), "key 'v_template': contains NaN"),
        (lambda a: a.update(f=a["f"].astype(np.float64)), "key 'f': expected integer values"),
    ],
    ids=["missing", "shape", "nan", "dtype"],
)
def test_bad_smpl_files_name_the_file_key_and_problem(hmr_data, tmp_path, corrupt, message):  # noqa: F811
    arrays = dict(read_smpl(hmr_data["body"] / "smpl" / "SMPL_NEUTRAL.npz"))
    corrupt(arrays)
    path = _smpl_npz(tmp_path / "SMPL_NEUTRAL.npz", arrays)
    with pytest.raises(FormatError, match=rf"SMPL_NEUTRAL\.npz: {message}"):
        read_smpl(path)


def test_truncated_and_foreign_files_are_clear_errors(hmr_data, tmp_path):  # noqa: F811
    source = next((hmr_data["3dpw"] / "sequenceFiles" / "test").glob("*.pkl"))
    truncated = tmp_path / "cut.pkl"
    truncated.write_bytes(source.read_bytes()[:5000])
    with pytest.raises(FormatError, match=r"cut\.pkl: not a readable pickle, truncated"):
        read_3dpw(truncated)
    npz = tmp_path / "cut.npz"
    npz.write_bytes((hmr_data["body"] / "smpl" / "SMPL_NEUTRAL.npz").read_bytes()[:4000])
    with pytest.raises(FormatError, match=r"cut\.npz: not a readable \.npz"):
        read_smpl(npz)
    text = tmp_path / "notes.pkl"
    text.write_text("hello")
    with pytest.raises(FormatError, match=r"notes\.pkl"):
        safe_unpickle(text)


def test_3dpw_files_are_python2_pickles_and_read_back(hmr_data):  # noqa: F811
    sequences = read_3dpw_split(hmr_data["3dpw"], "test")
    assert len(sequences) == 2
    raw = sequences[0].path.read_bytes()
    assert raw[:2] == b"\x80\x02" and b"U\x07poses2d" in raw  # protocol 2, Python 2 str keys
    for s in sequences:
        frames = len(s.cam_poses)
        assert s.name.startswith("synthetic_test") and set(s.genders) <= {"m", "f"}
        assert all(p.shape == (frames, 72) for p in s.poses) and all(p.shape == (frames, 3, 18) for p in s.poses2d)
        assert all(v.dtype == bool for v in s.campose_valid)
        conf = np.concatenate([p[:, 2] for p in s.poses2d])
        assert 0 < (conf == 0).mean() < 0.5 and conf.max() <= 1  # some joints missing, confidences in [0, 1]


def test_bad_3dpw_content_names_the_key(hmr_data, tmp_path):  # noqa: F811
    source = safe_unpickle(next((hmr_data["3dpw"] / "sequenceFiles" / "test").glob("*.pkl")))
    broken = dict(source)
    del broken["poses2d"]
    with pytest.raises(FormatError, match=r"a\.pkl: missing key 'poses2d'"):
        read_3dpw(write_py2_pickle(broken, tmp_path / "a.pkl"))
    broken = dict(source, jointPositions=[p[:, :70] for p in source["jointPositions"]])
    with pytest.raises(FormatError, match=r"b\.pkl: key 'jointPositions'\[0\]: expected shape"):
        read_3dpw(write_py2_pickle(broken, tmp_path / "b.pkl"))
    broken = dict(source, betas=source["betas"][:1] * 3)
    with pytest.raises(FormatError, match=r"c\.pkl: key 'betas': expected a list of"):
        read_3dpw(write_py2_pickle(broken, tmp_path / "c.pkl"))


def test_amass_reader_and_lgd_frames(hmr_data, tmp_path):  # noqa: F811
    files = find_amass_files(hmr_data["amass"])
    assert files and all(f.name != "shape.npz" for f in files)
    sequence = read_amass(files[0])
    assert sequence.poses.shape[1] == 156 and len(sequence.betas) == 16 and sequence.framerate == 30.0
    frames = amass_frames(sequence)
    assert frames["pose72"].dtype == np.float32 and (frames["pose72"][:, 66:72] == 0).all()
    np.testing.assert_array_equal(frames["betas10"][0], sequence.betas[:10].astype(np.float32))
    up = lambda pose: axis_angle_to_matrix(torch.from_numpy(np.asarray(pose[:, :3], np.float64)))[:, :, 1]  # noqa: E731
    assert (up(sequence.poses)[:, 2] > 0.9).all()  # the body's up axis is +z in AMASS
    assert (up(frames["pose72"])[:, 1] > 0.9).all()  # and +y after LGD's swap
    bad = tmp_path / "x_poses.npz"
    np.savez(bad, poses=np.zeros((4, 165)), betas=np.zeros(16))
    with pytest.raises(FormatError, match="SMPL-X release"):
        read_amass(bad)
    np.savez(bad, poses=np.zeros((4, 156)), betas=np.zeros(16), trans=np.zeros((3, 3)))
    with pytest.raises(FormatError, match=r"x_poses\.npz: key 'trans': expected shape \(4, 3\)"):
        read_amass(bad)
