"""Readers for the licensed data formats (docs/design.md §5), and the one restricted unpickler every pickle goes through.

    safe_unpickle  Python-2 and -3 pickles holding numpy arrays, plain containers, chumpy arrays and scipy
                   sparse matrices; anything else is refused before it is called, naming the file
    read_smpl      an SMPL model (.npz, or a real .pkl with chumpy arrays and a sparse J_regressor, cached)
    read_amass     one AMASS SMPL+H sequence (.npz); `amass_columns` / `load_amass_frames` prepare frames
                   as LGD does (first 72 pose values, hand joints zeroed, Z-up to Y-up, betas[:10]);
                   `in_fraction` picks a fixed fraction of the frames
    read_3dpw      one 3DPW sequence file (Python-2 pickle, latin1)
    write_frames_parquet / read_frames_parquet   per-frame arrays <-> Parquet (fixed-size list columns)

Every reader validates keys, shapes, dtypes and finiteness and raises FormatError naming the file, the key
and what was expected. Outputs are written to a temporary name and renamed (`atomic_output`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lsr1.hmr.rotations import axis_angle_to_matrix, matrix_to_axis_angle

__all__ = [
    "AMASS_COLUMNS",
    "AMASS_TO_Y_UP",
    "PW3D_COLUMNS",
    "AmassSequence",
    "FormatError",
    "Pw3dSequence",
    "amass_columns",
    "amass_frames",
    "atomic_output",
    "find_amass_files",
    "in_fraction",
    "is_amass_sequence",
    "load_amass_frames",
    "read_3dpw",
    "read_3dpw_split",
    "read_amass",
    "read_frames_parquet",
    "read_smpl",
    "safe_unpickle",
    "write_frames_parquet",
]

log = logging.getLogger(__name__)

# AMASS is Z-up; SMPL and LGD are Y-up: x' = y, y' = z, z' = x (LGD's euler_to_rot(-1.57, -1.57, 0), with
# the exact right angle instead of 1.57, a 0.05 degree tilt LGD's augmentation does not care about).
AMASS_TO_Y_UP = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])

# Per-frame numeric columns of the prepared Parquet files and each row's shape; AMASS rows also carry
# `source` (the sequence's path under the AMASS root) and `frame` (its index in that sequence).
AMASS_COLUMNS: dict[str, tuple[int, ...]] = {"pose72": (72,), "betas10": (10,), "trans": (3,)}
PW3D_COLUMNS: dict[str, tuple[int, ...]] = {
    "pose72": (72,),
    "betas10": (10,),
    "keypoints": (18, 2),
    "confidence": (18,),
    "joints24": (24, 3),
}


class FormatError(ValueError):
    """A data file that cannot be used: the message names the file, the key and what was expected."""


@contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it is renamed to `path`, on error removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# ---------------------------------------------------------------------------------------------------------
# the restricted unpickler


class _Chumpy:
    """Stands in for any chumpy object: keeps its pickled state, never runs chumpy. A plain `Ch` holds its
    value in state["x"]; derived chumpy expressions have no stored value and stay unresolved."""

    def __init__(self, name: str) -> None:
        self.name, self.state = name, None

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _Sparse:
    """Stands in for a scipy sparse matrix (csc, csr, coo): keeps its arrays, becomes dense on resolve."""

    def __init__(self, name: str) -> None:
        self.name, self.state = name, None

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _standin(base: type, module: str, name: str) -> type:
    """A class whose instances are `base(name)`: what the pickle's NEWOBJ/BUILD opcodes will call."""

    def __new__(cls: type, *args: Any) -> Any:
        return base(f"{module}.{name}")

    return type(name, (), {"__new__": __new__})


class _Refused(pickle.UnpicklingError):
    """The pickle asked for something outside the allowed set."""


def _reconstruct(cls: Any, shape: Any, dtype: Any) -> np.ndarray:
    if cls is not np.ndarray:
        raise _Refused(f"refusing array reconstruction of {cls!r}: only numpy.ndarray")
    return np.ndarray.__new__(np.ndarray, shape, dtype)


def _frombuffer(buffer: Any, dtype: Any, shape: Any, order: str) -> np.ndarray:
    return np.frombuffer(buffer, dtype=dtype).reshape(shape, order=order).copy()


def _reconstructor(cls: Any, base: Any, state: Any) -> Any:
    """copy_reg._reconstructor (protocol 0/1 objects), for the stand-in classes only."""
    if not (isinstance(cls, type) and getattr(cls, "_lsr1_standin", False)) or base is not object:
        raise _Refused(f"refusing copy_reg._reconstructor of {cls!r}")
    return cls.__new__(cls)


def _numpy_scalar(dtype: np.dtype, data: Any = None) -> Any:
    if not isinstance(dtype, np.dtype):
        raise _Refused(f"refusing a numpy scalar with dtype {dtype!r}")
    if dtype.hasobject:
        return data
    raw = data.encode("latin1") if isinstance(data, str) else data
    return np.frombuffer(raw, dtype=dtype, count=1)[0]


def _encode(text: Any, encoding: str = "utf-8") -> bytes:
    """_codecs.encode, which Python 3 pickles (protocol < 3) use for bytes: str -> bytes only."""
    if not isinstance(text, str) or not isinstance(encoding, str):
        raise _Refused("refusing _codecs.encode of anything but a str")
    return text.encode(encoding)


_ALLOWED: dict[tuple[str, str], Any] = {
    **{(m, "_reconstruct"): _reconstruct for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(m, "scalar"): _numpy_scalar for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(m, "_frombuffer"): _frombuffer for m in ("numpy.core.numeric", "numpy._core.numeric")},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    **{(m, "set"): set for m in ("builtins", "__builtin__")},
    **{(m, "frozenset"): frozenset for m in ("builtins", "__builtin__")},
    ("collections", "OrderedDict"): dict,
    **{(m, "_reconstructor"): _reconstructor for m in ("copyreg", "copy_reg")},
    ("_codecs", "encode"): _encode,
}
_SPARSE = ("csc_matrix", "csr_matrix", "coo_matrix")


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "chumpy" or module.startswith("chumpy."):
            cls = _standin(_Chumpy, module, name)
        elif (module == "scipy.sparse" or module.startswith("scipy.sparse.")) and name in _SPARSE:
            cls = _standin(_Sparse, module, name)
        else:
            raise _Refused(
                f"refusing {module}.{name}: only numpy arrays, plain containers, chumpy arrays and scipy sparse matrices may be unpickled"
            )
        cls._lsr1_standin = True
        return cls

    def persistent_load(self, pid: Any) -> Any:
        raise _Refused("refusing a persistent id")


def _dense(sparse: _Sparse, where: str) -> np.ndarray:
    """A scipy sparse matrix's pickled state -> dense float64 array, with numpy only."""
    state = sparse.state if isinstance(sparse.state, dict) else {}
    shape = state.get("_shape", state.get("shape"))
    kind = sparse.name.rsplit(".", 1)[-1][:3]
    try:
        rows, cols = (int(n) for n in shape)
        data = np.asarray(state["data"], dtype=np.float64)
        out = np.zeros((rows, cols))
        if kind == "coo":
            np.add.at(out, (np.asarray(state["row"]), np.asarray(state["col"])), data)
            return out
        indices, indptr = np.asarray(state["indices"]), np.asarray(state["indptr"])
        major = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
        np.add.at(out, (indices, major) if kind == "csc" else (major, indices), data)
        return out
    except (KeyError, TypeError, ValueError, IndexError) as err:
        raise FormatError(f"{where}: unreadable {sparse.name} ({type(err).__name__}: {err})") from None


def _resolve(obj: Any, where: str) -> Any:
    """Replace stand-ins by arrays: chumpy Ch -> its value, sparse -> dense; other chumpy objects stay."""
    if isinstance(obj, _Sparse):
        return _dense(obj, where)
    if isinstance(obj, _Chumpy):
        state = obj.state
        if isinstance(state, dict) and isinstance(state.get("x"), np.ndarray):
            return state["x"]
        return obj
    if isinstance(obj, dict):
        return {key: _resolve(value, f"{where}[{key!r}]") for key, value in obj.items()}
    if isinstance(obj, list):
        return [_resolve(value, f"{where}[{i}]") for i, value in enumerate(obj)]
    if isinstance(obj, tuple):
        return tuple(_resolve(value, f"{where}[{i}]") for i, value in enumerate(obj))
    return obj


def safe_unpickle(path: str | Path) -> Any:
    """Load a pickle (Python 2 strings decoded as latin1) allowing only numpy arrays and dtypes, plain
    containers, chumpy arrays (mapped to their value arrays) and scipy sparse matrices (made dense, without
    scipy). Anything else is refused before it is called: FormatError naming the file."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            data = _RestrictedUnpickler(f, encoding="latin1").load()
    except FileNotFoundError:
        raise FormatError(f"{path}: no such file") from None
    except _Refused as err:
        raise FormatError(f"{path}: unsafe pickle, nothing was executed: {err}") from None
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        MemoryError,
        OverflowError,
    ) as err:
        raise FormatError(f"{path}: not a readable pickle, truncated or corrupt ({type(err).__name__}: {err})") from None
    return _resolve(data, str(path))


# ---------------------------------------------------------------------------------------------------------
# validation


def _get(data: Any, key: str, where: Path) -> Any:
    if not isinstance(data, dict):
        raise FormatError(f"{where}: expected a mapping of arrays at the top level, got {type(data).__name__}")
    if key not in data:
        raise FormatError(f"{where}: missing key {key!r} (keys: {sorted(map(str, data))})")
    return data[key]


def _array(value: Any, where: str, shape: tuple[int | None, ...], kind: str = "f", finite: bool = True) -> np.ndarray:
    """Check a value against an expected shape (None = any size) and dtype kind ('f' numbers, 'i' integers,
    'b' 0/1 flags); return it as float64, int64 or bool."""
    if isinstance(value, _Chumpy):
        raise FormatError(f"{where}: a chumpy {value.name} without a stored value; export plain arrays first")
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as err:
        raise FormatError(f"{where}: expected an array, got {type(value).__name__} ({err})") from None
    expected = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
    if array.ndim != len(shape) or any(s is not None and s != n for s, n in zip(shape, array.shape)):
        raise FormatError(f"{where}: expected shape {expected}, got {array.shape}")
    if array.dtype.kind not in ("f", "i", "u", "b") or (kind == "i" and array.dtype.kind == "f"):
        raise FormatError(f"{where}: expected {'integer' if kind == 'i' else 'numeric'} values, got dtype {array.dtype}")
    if finite and array.dtype.kind == "f" and not np.isfinite(array).all():
        raise FormatError(f"{where}: contains NaN or Inf")
    return array.astype({"f": np.float64, "i": np.int64, "b": bool}[kind])


def _text(value: Any, where: str) -> str:
    if isinstance(value, bytes):
        return value.decode("latin1")
    if isinstance(value, np.ndarray) and value.dtype.kind in ("U", "S") and value.size == 1:
        return _text(value.item(), where)
    if isinstance(value, str):
        return value
    raise FormatError(f"{where}: expected a string, got {type(value).__name__}")


def _load_npz(path: Path) -> dict[str, Any]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except FileNotFoundError:
        raise FormatError(f"{path}: no such file") from None
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as err:
        raise FormatError(f"{path}: not a readable .npz, truncated or corrupt ({type(err).__name__}: {err})") from None


# ---------------------------------------------------------------------------------------------------------
# SMPL


def _smpl_arrays(data: Any, where: Path) -> dict[str, np.ndarray]:
    v = _array(_get(data, "v_template", where), f"{where}: key 'v_template'", (None, 3))
    n = len(v)
    return {
        "v_template": v,
        "shapedirs": _array(_get(data, "shapedirs", where), f"{where}: key 'shapedirs'", (n, 3, None)),
        "posedirs": _array(_get(data, "posedirs", where), f"{where}: key 'posedirs'", (n, 3, 207)),
        "J_regressor": _array(_get(data, "J_regressor", where), f"{where}: key 'J_regressor'", (24, n)),
        "weights": _array(_get(data, "weights", where), f"{where}: key 'weights'", (n, 24)),
        "kintree_table": _array(_get(data, "kintree_table", where), f"{where}: key 'kintree_table'", (2, 24), "i"),
        "f": _array(_get(data, "f", where), f"{where}: key 'f'", (None, 3), "i"),
    }


def read_smpl(path: str | Path, cache_dir: str | Path | None = None) -> dict[str, np.ndarray]:
    """The arrays smplx's SMPL needs, validated: v_template (V, 3), shapedirs (V, 3, S), posedirs (V, 3, 207),
    J_regressor (24, V) dense, weights (V, 24), kintree_table (2, 24), f (F, 3).

    A `.pkl` (real SMPL: Python 2, chumpy arrays, sparse J_regressor) goes through `safe_unpickle`; with
    `cache_dir`, the result is stored there as `<name>-<sha256 prefix>.npz` and read from it next time.
    """
    path = Path(path)
    if path.suffix == ".npz":
        return _smpl_arrays(_load_npz(path), path)
    if path.suffix != ".pkl":
        raise FormatError(f"{path}: expected an SMPL model file ending in .npz or .pkl")
    if cache_dir is None:
        return _smpl_arrays(safe_unpickle(path), path)
    try:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    except FileNotFoundError:
        raise FormatError(f"{path}: no such file") from None
    cached = Path(cache_dir) / f"{path.stem}-{digest}.npz"
    if cached.exists():
        return _smpl_arrays(_load_npz(cached), cached)
    arrays = _smpl_arrays(safe_unpickle(path), path)
    with atomic_output(cached) as tmp:
        with open(tmp, "wb") as out:
            np.savez(out, **arrays)
    log.info("cached %s as %s", path, cached)
    return arrays


# ---------------------------------------------------------------------------------------------------------
# AMASS


@dataclass
class AmassSequence:
    """One AMASS SMPL+H sequence: poses (T, 156) axis-angle (22 body joints, then 2 x 15 hand joints), Z-up."""

    path: Path
    poses: np.ndarray  # (T, 156) float64
    betas: np.ndarray  # (S,) float64, S >= 10 (16 in the SMPL+H release)
    trans: np.ndarray | None  # (T, 3) float64
    gender: str | None
    framerate: float | None


def read_amass(path: str | Path) -> AmassSequence:
    """Read and validate one AMASS `.npz` (SMPL+H G release; the SMPL-X release has another layout)."""
    path = Path(path)
    data = _load_npz(path)
    poses = _get(data, "poses", path)
    if np.ndim(poses) == 2 and np.shape(poses)[1] == 165:
        raise FormatError(f"{path}: key 'poses' has 165 columns (the SMPL-X release); use the SMPL+H G release (156)")
    poses = _array(poses, f"{path}: key 'poses'", (None, 156))
    betas = _array(_get(data, "betas", path), f"{path}: key 'betas'", (None,))
    if len(betas) < 10:
        raise FormatError(f"{path}: key 'betas': expected at least 10 values, got {len(betas)}")
    trans = _array(data["trans"], f"{path}: key 'trans'", (len(poses), 3)) if "trans" in data else None
    framerate = float(_array(data["mocap_framerate"], f"{path}: key 'mocap_framerate'", ())) if "mocap_framerate" in data else None
    gender = _text(data["gender"], f"{path}: key 'gender'") if "gender" in data else None
    return AmassSequence(path, poses, betas, trans, gender, framerate)


def amass_frames(sequence: AmassSequence) -> dict[str, np.ndarray]:
    """LGD's SMPL frames of a sequence: pose72 (T, 72) float32 = poses[:, :72] with the hand joints
    (66:72) zeroed and the root turned Z-up -> Y-up; betas10 (T, 10) float32 = betas[:10] per frame."""
    pose = sequence.poses[:, :72].copy()
    pose[:, 66:72] = 0.0
    root = axis_angle_to_matrix(torch.from_numpy(pose[:, :3]))
    pose[:, :3] = matrix_to_axis_angle(torch.from_numpy(AMASS_TO_Y_UP) @ root).numpy()
    betas = np.tile(sequence.betas[:10], (len(pose), 1))
    return {"pose72": pose.astype(np.float32), "betas10": betas.astype(np.float32)}


def is_amass_sequence(path: str | Path) -> bool:
    """Whether an .npz holds a sequence (`poses` and `betas`; AMASS's shape.npz does not). FormatError if unreadable."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {"poses", "betas"} <= set(npz.files)
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as err:
        raise FormatError(f"{path}: not a readable .npz ({type(err).__name__}: {err})") from None


def find_amass_files(root: str | Path) -> list[Path]:
    """AMASS sequence files under root (sorted); files without `poses`/`betas` (e.g. shape.npz) are skipped."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"AMASS folder {root} does not exist; see datasets/README.md")
    files = []
    for path in sorted(root.rglob("*.npz")):
        if is_amass_sequence(path):
            files.append(path)
        else:
            log.info("skipping %s: no poses/betas", path)
    if not files:
        raise FormatError(f"{root}: no AMASS sequence files (*.npz with poses and betas)")
    return files


def load_amass_frames(root: str | Path) -> dict[str, np.ndarray]:
    """Every frame under root: pose72 (N, 72), betas10 (N, 10) float32, source (N,) index into `files`,
    frame (N,) the index in its sequence."""
    files = find_amass_files(root)
    parts = [amass_frames(read_amass(path)) for path in files]
    return {
        "pose72": np.concatenate([p["pose72"] for p in parts]),
        "betas10": np.concatenate([p["betas10"] for p in parts]),
        "source": np.concatenate([np.full(len(p["pose72"]), i) for i, p in enumerate(parts)]),
        "frame": np.concatenate([np.arange(len(p["pose72"])) for p in parts]),
        "files": np.array([f.relative_to(root).as_posix() for f in files]),
    }


def amass_columns(sequence: AmassSequence, source: str, every: int = 1) -> dict[str, np.ndarray]:
    """The prepared rows of a sequence, every `every`-th frame: `amass_frames`' pose72 and betas10, trans
    (T, 3) float32 Y-up (zeros if the file has none), source (its path under the AMASS root), frame."""
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    frames = amass_frames(sequence)
    trans = sequence.trans if sequence.trans is not None else np.zeros((len(sequence.poses), 3))
    frames["trans"] = (trans @ AMASS_TO_Y_UP.T).astype(np.float32)
    keep = np.arange(0, len(sequence.poses), every)
    return {key: value[keep] for key, value in frames.items()} | {"source": np.full(len(keep), source), "frame": keep}


def in_fraction(sources: np.ndarray, frames: np.ndarray, fraction: float) -> np.ndarray:
    """Which frames (B,) a data fraction keeps: a fixed hash of (source path, frame index) below `fraction`.
    The same frames on any machine or worker count, and every smaller fraction is a subset of a larger one."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    sources, frames = np.asarray(sources), np.asarray(frames, dtype=np.uint64)
    names, inverse = np.unique(sources, return_inverse=True)
    keys = np.array([int.from_bytes(hashlib.sha256(str(n).encode()).digest()[:8], "little") for n in names], dtype=np.uint64)
    z = keys[inverse.reshape(-1)] ^ (frames * np.uint64(0x9E3779B97F4A7C15))  # splitmix64 finaliser
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / 2.0**53 < fraction


def write_frames_parquet(columns: dict[str, np.ndarray], path: str | Path) -> Path:
    """Write per-frame arrays (T, ...) as one Parquet file, atomically: float arrays as fixed-size float32
    lists of their flattened rows, 1D arrays (strings, integers) as plain columns."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    def column(value: np.ndarray) -> pa.Array:
        if value.ndim == 1:
            return pa.array(value)
        flat = value.reshape(len(value), -1).astype(np.float32)
        return pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), flat.shape[1])

    path = Path(path)
    with atomic_output(path) as tmp:
        pq.write_table(pa.table({key: column(np.asarray(value)) for key, value in columns.items()}), tmp)
    return path


def read_frames_parquet(path: str | Path, shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """The columns `shapes` names of a file `write_frames_parquet` wrote, as float32 (T, *shape) arrays;
    FormatError naming the file for an unreadable file, a missing column or a wrong row width."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    try:
        table = pq.read_table(path, columns=list(shapes))
    except FileNotFoundError:
        raise FormatError(f"{path}: no such file; run `python -m pipeline.prepare`") from None
    except (pa.ArrowException, OSError) as err:
        raise FormatError(f"{path}: not a readable Parquet file, truncated or corrupt ({type(err).__name__}: {err})") from None
    out = {}
    for key, shape in shapes.items():
        width = int(np.prod(shape))
        kind = table.schema.field(key).type
        if not (pa.types.is_fixed_size_list(kind) and kind.list_size == width):
            raise FormatError(f"{path}: column {key!r}: expected lists of {width} values, got {kind}")
        values = table.column(key).combine_chunks().flatten().to_numpy(zero_copy_only=False)
        out[key] = values.astype(np.float32).reshape(table.num_rows, *shape)
    return out


# ---------------------------------------------------------------------------------------------------------
# 3DPW


@dataclass
class Pw3dSequence:
    """One 3DPW sequence file; per-person lists, T frames, world coordinates (cam_poses: world -> camera)."""

    path: Path
    name: str
    genders: list[str]
    poses: list[np.ndarray]  # (T, 72) axis-angle, root in world coordinates
    betas: list[np.ndarray]  # (S,), S >= 10
    poses2d: list[np.ndarray]  # (T, 3, 18): x, y in pixels and the OpenPose confidence, COCO-18 order
    joint_positions: list[np.ndarray]  # (T, 72): 24 SMPL joints in metres, world coordinates
    cam_poses: np.ndarray  # (T, 4, 4)
    campose_valid: list[np.ndarray]  # (T,) bool


def read_3dpw(path: str | Path) -> Pw3dSequence:
    """Read and validate one 3DPW `sequenceFiles/<split>/*.pkl` (Python 2 pickle) through `safe_unpickle`."""
    path = Path(path)
    data = safe_unpickle(path)
    poses = _get(data, "poses", path)
    if not isinstance(poses, list) or not poses:
        raise FormatError(f"{path}: key 'poses': expected a non-empty list (one array per person)")
    cam_poses = _array(_get(data, "cam_poses", path), f"{path}: key 'cam_poses'", (None, 4, 4))
    frames, people = len(cam_poses), len(poses)

    def per_person(key: str, shape: tuple[int | None, ...], kind: str = "f") -> list[np.ndarray]:
        value = _get(data, key, path)
        if not isinstance(value, (list, tuple)) or len(value) != people:
            raise FormatError(f"{path}: key {key!r}: expected a list of {people} arrays (one per person)")
        return [_array(v, f"{path}: key {key!r}[{i}]", shape, kind) for i, v in enumerate(value)]

    betas = per_person("betas", (None,))
    if any(len(b) < 10 for b in betas):
        raise FormatError(f"{path}: key 'betas': expected at least 10 values per person")
    genders = _get(data, "genders", path)
    if not isinstance(genders, (list, tuple)) or len(genders) != people:
        raise FormatError(f"{path}: key 'genders': expected a list of {people} strings")
    return Pw3dSequence(
        path=path,
        name=_text(_get(data, "sequence", path), f"{path}: key 'sequence'"),
        genders=[_text(g, f"{path}: key 'genders'[{i}]") for i, g in enumerate(genders)],
        poses=per_person("poses", (frames, 72)),
        betas=betas,
        poses2d=per_person("poses2d", (frames, 3, 18)),
        joint_positions=per_person("jointPositions", (frames, 72)),
        cam_poses=cam_poses,
        campose_valid=per_person("campose_valid", (frames,), "b"),
    )


def read_3dpw_split(root: str | Path, split: str) -> list[Pw3dSequence]:
    """All sequences of `<root>/sequenceFiles/<split>/*.pkl`, sorted by name."""
    if split not in ("train", "validation", "test"):
        raise ValueError(f"3DPW split must be 'train', 'validation' or 'test', got {split!r}")
    folder = Path(root) / "sequenceFiles" / split
    files = sorted(folder.glob("*.pkl"))
    if not files:
        raise FileNotFoundError(f"no 3DPW sequence files in {folder}; see datasets/README.md")
    return [read_3dpw(path) for path in files]
