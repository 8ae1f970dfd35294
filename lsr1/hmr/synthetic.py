"""Synthetic stand-ins for the licensed HMR data, written in the real formats (docs/design.md §5), seeded and small.

    write_synthetic_amass   AMASS SMPL+H G `.npz` sequences (Z-up, 16 betas, hands, trans, dmpls) and the
                            `shape.npz` files real subjects have, under <root>/<dataset>/<subject>/
    write_synthetic_3dpw    3DPW `sequenceFiles/{train,validation,test}/*.pkl` as Python-2 pickles: world
                            poses, a moving camera, OpenPose-18 `poses2d` with realistic confidences and
                            missing joints, `jointPositions`, `campose_valid`
    write_legacy_smpl       an SMPL `.pkl` as the official files are: Python 2, chumpy arrays, scipy-sparse
                            J_regressor under its old module path
    generate                all of it (and the synthetic body) under one folder

Poses are smooth (sums of slow sinusoids) and stay inside per-joint limits (squashed with tanh), around a
relaxed standing pose; shapes are drawn per subject. `python -m lsr1.hmr.synthetic --out datasets/synthetic`.
"""

from __future__ import annotations

import argparse
import logging
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lsr1.hmr.body import BodyModel, forward_joints
from lsr1.hmr.camera import SMPL_TO_COCO
from lsr1.hmr.formats import AMASS_TO_Y_UP, atomic_output
from lsr1.hmr.rotations import axis_angle_to_matrix, euler_zyx_to_matrix, matrix_to_axis_angle
from lsr1.hmr.synthetic_body import write_synthetic_body

__all__ = ["Legacy", "generate", "random_motion", "write_legacy_smpl", "write_py2_pickle", "write_synthetic_3dpw", "write_synthetic_amass"]

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------------------
# Python-2 pickles


@dataclass(frozen=True)
class Legacy:
    """An instance of a Python-2 library class (chumpy, scipy.sparse), pickled as `module.name` + its state."""

    module: str
    name: str
    state: Any


def _py2(value: Any) -> Any:
    """Python 3 str -> bytes (a Python 2 str, written as BINSTRING), through containers."""
    if isinstance(value, str):
        return value.encode("latin1")
    if isinstance(value, tuple):
        return tuple(_py2(v) for v in value)
    if isinstance(value, list):
        return [_py2(v) for v in value]
    if isinstance(value, dict):
        return {_py2(k): _py2(v) for k, v in value.items()}
    return value


class _Py2Pickler(pickle._Pickler):  # the pure-Python pickler: its opcode writers can be extended
    """Protocol 2 as Python 2 + numpy 1.x wrote it: str as BINSTRING, arrays via numpy.core.multiarray."""

    def _global(self, module: str, name: str) -> None:
        self.write(pickle.GLOBAL + module.encode() + b"\n" + name.encode() + b"\n")

    def _build(self, module: str, name: str, args: tuple, state: Any) -> None:
        self._global(module, name)
        self.save(args)
        self.write(pickle.REDUCE)
        self.save(state)
        self.write(pickle.BUILD)

    def save(self, obj: Any, save_persistent_id: bool = True) -> None:
        if isinstance(obj, bytes):
            self.write(
                (pickle.SHORT_BINSTRING + bytes([len(obj)])) if len(obj) < 256 else (pickle.BINSTRING + len(obj).to_bytes(4, "little"))
            )
            self.write(obj)
        elif isinstance(obj, np.ndarray):
            array = np.ascontiguousarray(obj)
            self._global("numpy.core.multiarray", "_reconstruct")
            self.write(pickle.MARK)
            self._global("numpy", "ndarray")
            self.save((0,))
            self.save(b"b")
            self.write(pickle.TUPLE + pickle.REDUCE)
            self.save((1, array.shape, array.dtype, False, array.tobytes()))
            self.write(pickle.BUILD)
        elif isinstance(obj, np.dtype):
            args, state = obj.__reduce__()[1:3]
            self._build("numpy", "dtype", _py2(args), _py2(state))
        elif isinstance(obj, np.generic):
            self.save(obj.item())
        elif isinstance(obj, Legacy):
            self._global(obj.module, obj.name)
            self.write(pickle.EMPTY_TUPLE + pickle.NEWOBJ)
            self.save(_py2(obj.state))
            self.write(pickle.BUILD)
        else:
            super().save(obj, save_persistent_id)


def write_py2_pickle(obj: Any, path: str | Path) -> Path:
    """Pickle obj as Python 2 would have (protocol 2); Python 3 strings become Python 2 strs."""
    path = Path(path)
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as out:
            _Py2Pickler(out, protocol=2).dump(_py2(obj))
    return path


def write_legacy_smpl(arrays: dict[str, np.ndarray], path: str | Path) -> Path:
    """An SMPL model in the official `.pkl` layout: chumpy `Ch` arrays, J_regressor as scipy.sparse.csc."""

    def chumpy(value: np.ndarray) -> Legacy:
        return Legacy("chumpy.ch", "Ch", {"x": value.astype(np.float64), "_dirty_vars": set(), "_itr": None, "_depends_on_deps": {}})

    regressor = arrays["J_regressor"]
    rows, cols = np.nonzero(regressor.T)  # column-major order for csc
    csc = {
        "_shape": regressor.shape,
        "maxprint": 50,
        "format": "csc",
        "data": regressor.T[rows, cols],
        "indices": cols.astype(np.int32),
        "indptr": np.searchsorted(rows, np.arange(regressor.shape[1] + 1)).astype(np.int32),
    }
    data = {
        "v_template": chumpy(arrays["v_template"]),
        "shapedirs": chumpy(arrays["shapedirs"]),
        "posedirs": chumpy(arrays["posedirs"]),
        "weights": chumpy(arrays["weights"]),
        "J": chumpy(regressor @ arrays["v_template"]),
        "J_regressor": Legacy("scipy.sparse.csc", "csc_matrix", csc),
        "kintree_table": arrays["kintree_table"],
        "f": arrays["f"],
        "bs_style": "lbs",
        "bs_type": "lrotmin",
    }
    return write_py2_pickle(data, path)


# ---------------------------------------------------------------------------------------------------------
# motion

# (rest, low, high) of each left or central joint's axis-angle components (x, y, z) in radians, SMPL's
# T-pose frame; right joints mirror their left partner: (x, -y, -z).
_JOINT_RANGES = {
    1: ((-0.2, 0.0, 0.1), (-1.6, -0.5, -0.3), (0.4, 0.5, 0.8)),  # hip: flexion is -x, abduction +z
    3: ((0.05, 0.0, 0.0), (-0.3, -0.4, -0.3), (0.6, 0.4, 0.3)),  # spine1
    4: ((0.3, 0.0, 0.0), (0.0, -0.1, -0.1), (2.2, 0.1, 0.1)),  # knee: flexion +x
    6: ((0.05, 0.0, 0.0), (-0.2, -0.3, -0.2), (0.4, 0.3, 0.2)),  # spine2
    7: ((0.1, 0.0, 0.0), (-0.5, -0.3, -0.3), (0.7, 0.3, 0.3)),  # ankle
    9: ((0.05, 0.0, 0.0), (-0.2, -0.3, -0.2), (0.4, 0.3, 0.2)),  # spine3
    10: ((0.0, 0.0, 0.0), (-0.3, -0.1, -0.1), (0.3, 0.1, 0.1)),  # foot
    12: ((0.1, 0.0, 0.0), (-0.4, -0.5, -0.3), (0.5, 0.5, 0.3)),  # neck
    13: ((0.0, 0.0, 0.0), (-0.2, -0.3, -0.3), (0.2, 0.3, 0.3)),  # collar
    15: ((0.0, 0.0, 0.0), (-0.4, -0.6, -0.3), (0.5, 0.6, 0.3)),  # head
    16: ((0.0, -0.3, -1.1), (-0.8, -1.4, -1.5), (0.8, 0.6, 0.4)),  # shoulder: arm down is -z, forward is -y
    18: ((0.0, -0.4, 0.0), (-0.2, -2.4, -0.2), (0.2, 0.0, 0.2)),  # elbow: flexion -y
    20: ((0.0, 0.0, 0.0), (-0.6, -0.4, -0.8), (0.6, 0.4, 0.8)),  # wrist
    22: ((0.0, 0.0, 0.0), (-0.2, -0.2, -0.2), (0.2, 0.2, 0.2)),  # hand
}
_MIRROR = {1: 2, 4: 5, 7: 8, 10: 11, 13: 14, 16: 17, 18: 19, 20: 21, 22: 23}


def _ranges() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rest, low, high = np.zeros((24, 3)), np.zeros((24, 3)), np.zeros((24, 3))
    for joint, (r, lo, hi) in _JOINT_RANGES.items():
        rest[joint], low[joint], high[joint] = r, lo, hi
        if joint in _MIRROR:
            flip = np.array([1.0, -1.0, -1.0])
            other = _MIRROR[joint]
            rest[other] = flip * np.array(r)
            low[other] = np.where(flip > 0, lo, -np.array(hi))
            high[other] = np.where(flip > 0, hi, -np.array(lo))
    return rest, low, high


def random_motion(frames: int, fps: float, rng: np.random.Generator, energy: float = 1.0) -> np.ndarray:
    """Body poses (frames, 72) with a zero root: each joint component follows a sum of three slow
    sinusoids around a per-sequence style offset, squashed into its range with tanh (smooth, in limits)."""
    rest, low, high = _ranges()
    mid, half = 0.5 * (low + high), np.maximum(0.5 * (high - low), 1e-6)
    centre = np.arctanh(np.clip((rest - mid) / half, -0.9, 0.9)) + 0.4 * energy * rng.standard_normal((24, 3))
    t = np.arange(frames)[:, None, None, None] / fps
    freq = rng.uniform(0.1, 1.2, (1, 24, 3, 3))
    amp = energy * rng.uniform(0.0, 0.6, (1, 24, 3, 3))
    phase = rng.uniform(0.0, 2 * np.pi, (1, 24, 3, 3))
    wave = (amp * np.sin(2 * np.pi * freq * t + phase)).sum(-1)  # (T, 24, 3)
    pose = mid + half * np.tanh(centre + wave)
    pose[:, 0] = 0.0
    return pose.reshape(frames, 72)


def _heading(frames: int, fps: float, rng: np.random.Generator) -> np.ndarray:
    """Root rotations (frames, 3, 3), Y-up: a slowly turning heading with a little lean."""
    t = np.arange(frames) / fps
    angles = np.stack(
        [
            0.08 * np.sin(2 * np.pi * rng.uniform(0.05, 0.3) * t + rng.uniform(0, 6.3)),
            rng.uniform(0, 2 * np.pi) + rng.uniform(-0.3, 0.3) * t,
            0.05 * np.sin(2 * np.pi * rng.uniform(0.05, 0.3) * t + rng.uniform(0, 6.3)),
        ],
        -1,
    )
    return euler_zyx_to_matrix(torch.from_numpy(angles)).numpy()


def _aa(rot: np.ndarray) -> np.ndarray:
    return matrix_to_axis_angle(torch.from_numpy(rot)).numpy()


# ---------------------------------------------------------------------------------------------------------
# AMASS


def write_synthetic_amass(
    root: str | Path, seed: int = 0, datasets: int = 2, subjects: int = 2, sequences: int = 2, frames: int = 60, fps: float = 30.0
) -> list[Path]:
    """AMASS-format sequences `<root>/Synth<k>/subject<i>/seq<j>_poses.npz` plus a `shape.npz` per subject."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    written = []
    for d in range(datasets):
        for s in range(subjects):
            folder = root / f"Synth{chr(ord('A') + d)}" / f"subject{s:02d}"
            betas = np.concatenate([rng.normal(0.0, 1.0, 10), rng.normal(0.0, 0.3, 6)])
            gender = rng.choice(["male", "female"])
            with atomic_output(folder / "shape.npz") as tmp, open(tmp, "wb") as out:
                np.savez(out, betas=betas, gender=np.array(gender))
            for q in range(sequences):
                body = random_motion(frames, fps, rng, energy=rng.uniform(0.6, 1.4))
                root_y_up = _heading(frames, fps, rng)
                poses = np.zeros((frames, 156))
                poses[:, :66] = body[:, :66]
                poses[:, :3] = _aa(AMASS_TO_Y_UP.T @ root_y_up)  # stored Z-up, as AMASS is
                poses[:, 66:] = rng.uniform(-0.1, 0.6, (1, 90)) + 0.05 * rng.standard_normal((frames, 90))  # finger curls
                walk = np.cumsum(rng.normal(0.0, 0.01, (frames, 3)), 0) * np.array([1.0, 1.0, 0.0])
                path = folder / f"seq{q:02d}_poses.npz"
                with atomic_output(path) as tmp, open(tmp, "wb") as out:
                    np.savez(
                        out,
                        poses=poses,
                        betas=betas,
                        trans=walk + np.array([0.0, 0.0, 0.95]),
                        gender=np.array(gender),
                        mocap_framerate=np.array(fps),
                        dmpls=rng.normal(0.0, 0.1, (frames, 8)),
                    )
                written.append(path)
    log.info("wrote %d synthetic AMASS sequences under %s", len(written), root)
    return written


# ---------------------------------------------------------------------------------------------------------
# 3DPW

INTRINSICS = np.array([[1961.9, 0.0, 540.0], [0.0, 1969.2, 960.0], [0.0, 0.0, 1.0]])  # 1080 x 1920 portrait


def _look_at(centre: np.ndarray, target: np.ndarray) -> np.ndarray:
    """World -> camera (4, 4) for an OpenCV camera (x right, y down, z forward) at centre looking at target."""
    forward = (target - centre) / np.linalg.norm(target - centre)
    right = np.cross(forward, [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    rot = np.stack([right, down, forward])
    pose = np.eye(4)
    pose[:3, :3], pose[:3, 3] = rot, -rot @ centre
    return pose


def _detections(pixels: np.ndarray, facing: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """OpenPose-like poses2d (T, 3, 18) from true pixels (T, 18, 2): confidences mostly 0.5-0.95, face
    keypoints weak when the head faces away, some joints missing (0, 0, 0), noise growing as confidence
    falls, and frames with fewer than 6 detections zeroed (3DPW ships 2D poses only from 6 joints up)."""
    frames = len(pixels)
    conf = rng.uniform(0.5, 0.95, (frames, 18))
    away = facing < 0.0  # (T,)
    conf[away[:, None] & np.isin(np.arange(18), [0, 14, 15])[None]] *= 0.1
    conf[rng.random((frames, 18)) < 0.08] = 0.0
    noisy = pixels + rng.normal(0.0, 1.0, pixels.shape) * (2.0 + 10.0 * (1.0 - conf))[..., None]
    out = np.concatenate([noisy, conf[..., None]], -1)
    out[conf == 0.0] = 0.0
    out[(conf > 0.1).sum(1) < 6] = 0.0
    return out.transpose(0, 2, 1)


def write_synthetic_3dpw(
    root: str | Path,
    body: BodyModel,
    seed: int = 0,
    sequences: dict[str, int] | None = None,
    frames: int = 40,
    fps: float = 30.0,
) -> list[Path]:
    """3DPW-format `<root>/sequenceFiles/<split>/<name>.pkl` (Python 2 pickles) posed with `body`."""
    sequences = sequences or {"train": 2, "validation": 2, "test": 3}
    root = Path(root)
    model = body.joint_model(dtype=torch.float64)
    written = []
    for split, count in sequences.items():
        for number in range(count):
            rng = np.random.default_rng([seed, ["train", "validation", "test"].index(split), number])
            people = int(rng.integers(1, 3))
            distance = rng.uniform(3.0, 5.0)
            centre = np.array([rng.uniform(-0.5, 0.5), rng.uniform(-0.1, 0.4), distance])
            wobble = 0.03 * np.sin(np.arange(frames)[:, None] / fps * rng.uniform(0.5, 2.0, 3) + rng.uniform(0, 6.3, 3))
            cam_poses = np.stack([_look_at(centre + w, np.array([0.0, -0.2, 0.0])) for w in wobble])
            data: dict[str, Any] = {key: [] for key in ("poses", "betas", "trans", "poses2d", "jointPositions", "campose_valid", "genders")}
            for person in range(people):
                pose = random_motion(frames, fps, rng, energy=rng.uniform(0.8, 1.6))
                world_root = _heading(frames, fps, rng)
                pose[:, :3] = _aa(world_root)
                betas = rng.normal(0.0, 0.8, 10)
                trans = np.array([(person - 0.5 * (people - 1)) * 1.2, 0.0, 0.0]) + np.cumsum(rng.normal(0, 0.004, (frames, 3)), 0)
                rotmats = axis_angle_to_matrix(torch.from_numpy(pose).reshape(frames, 24, 3))
                points = forward_joints(model, rotmats, torch.from_numpy(betas).expand(frames, 10)).numpy() + trans[:, None]
                camera = np.einsum("tij,tkj->tki", cam_poses[:, :3, :3], points) + cam_poses[:, None, :3, 3]
                pixels = (camera[..., :2] / camera[..., 2:]) * INTRINSICS[[0, 1], [0, 1]] + INTRINSICS[:2, 2]
                forward = world_root @ np.array([0.0, 0.0, 1.0])  # (T, 3) the way the body faces
                facing = np.einsum("ti,ti->t", forward, centre - trans)
                valid = np.ones(frames, dtype=np.uint8)
                if rng.random() < 0.4:
                    start = int(rng.integers(0, frames - 5))
                    valid[start : start + 5] = 0
                data["poses"].append(pose)
                data["betas"].append(betas)
                data["trans"].append(trans)
                data["poses2d"].append(_detections(pixels[:, list(SMPL_TO_COCO)], facing, rng))
                data["jointPositions"].append(points[:, :24].reshape(frames, 72))
                data["campose_valid"].append(valid)
                data["genders"].append(str(rng.choice(["m", "f"])))
            name = f"synthetic_{split}_{number:02d}"
            data.update(sequence=name, cam_poses=cam_poses, cam_intrinsics=INTRINSICS, img_frame_ids=np.arange(frames))
            written.append(write_py2_pickle(data, root / "sequenceFiles" / split / f"{name}.pkl"))
    log.info("wrote %d synthetic 3DPW sequences under %s", len(written), root)
    return written


def generate(root: str | Path, seed: int = 0, amass: dict[str, int] | None = None, pw3d: dict[str, Any] | None = None) -> dict[str, Path]:
    """The synthetic body (`<root>/body`), AMASS (`<root>/amass`) and 3DPW (`<root>/3dpw`); sizes as keyword
    dicts for `write_synthetic_amass` and `write_synthetic_3dpw`."""
    root = Path(root)
    write_synthetic_body(root / "body")
    write_synthetic_amass(root / "amass", seed=seed, **(amass or {}))
    write_synthetic_3dpw(root / "3dpw", BodyModel(root / "body"), seed=seed, **(pw3d or {}))
    return {"body": root / "body", "amass": root / "amass", "3dpw": root / "3dpw"}


def main() -> None:
    parser = argparse.ArgumentParser(description="Write the synthetic SMPL body, AMASS and 3DPW stand-ins.")
    parser.add_argument("--out", default="datasets/synthetic")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--subjects", type=int, default=2, help="AMASS subjects per sub-dataset")
    parser.add_argument("--sequences", type=int, default=2, help="AMASS sequences per subject")
    parser.add_argument("--frames", type=int, default=60, help="AMASS frames per sequence")
    parser.add_argument("--test-sequences", type=int, default=3, help="3DPW test sequences")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    paths = generate(
        args.out,
        args.seed,
        amass={"subjects": args.subjects, "sequences": args.sequences, "frames": args.frames},
        pw3d={"sequences": {"train": 2, "validation": 2, "test": args.test_sequences}},
    )
    for name, path in paths.items():
        log.info("%-6s %s", name, path)


if __name__ == "__main__":
    main()
