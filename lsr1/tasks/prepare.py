"""Prepare HMR data once for Ray Data: `python -m pipeline.prepare [--config configs/hmr.yaml] [--synthetic]`.
(The command keeps its pipeline name; nothing here uses Ray or MLflow, so it lives in the library.)

AMASS `.npz` sequences become Parquet shards, one row per frame (pose72, betas10, trans, source, frame;
`--every N` keeps every N-th frame), `--sequences-per-shard` sequences of one sub-dataset per shard. 3DPW
`sequenceFiles/<split>/*.pkl` become one Parquet file per split: every valid frame of every person, as
`lsr1.tasks.hmr.pw3d_arrays` reads them (root in the camera frame, OpenPose keypoints, jointPositions).
Everything goes to hmr.prepared_dir with manifest.json: the sha256 of every input and output, and every
file that was skipped and why.

Running it again redoes only what changed: an output whose inputs, options and own checksum match the
manifest is kept. Files are written to a temporary name and renamed, and the manifest after every output,
so an interrupted run continues where it stopped. A file that cannot be read fails the run, naming it
(`--on-error fail`, the default), or is left out, named in the log and in the manifest (`--on-error skip`).
Readers and checks are lsr1.hmr.formats' (pickles only through its restricted unpickler).

    python -m pipeline.prepare --synthetic                          # the synthetic stand-ins, seconds
    python -m pipeline.prepare --config configs/hmr_data_efficiency.yaml --synthetic --synthetic-sequences 100  # 24 000 frames
    python -m pipeline.prepare --config configs/hmr.yaml --every 2  # real AMASS / 3DPW (datasets/README.md)

Relative data paths (hmr.body_dir, amass_dir, pw3d_dir, cache_dir, prepared_dir, h36m_regressor) point into
the data root: LSR1_DATA_DIR (an absolute path), else the working directory. `resolve_data_paths` is the one
place that applies it, for every command (prepare, train, sweep, evaluate). A Ray job runs in an uploaded
copy of the working directory without the git-ignored data, so it needs LSR1_DATA_DIR.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import re
import sys
from collections.abc import Callable
from itertools import groupby
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from tqdm.auto import tqdm

from lsr1.config import ConfigError, HMRConfig, load_config
from lsr1.hmr.formats import (
    FormatError,
    amass_columns,
    atomic_output,
    is_amass_sequence,
    read_3dpw,
    read_amass,
    write_frames_parquet,
)
from lsr1.tasks.hmr import pw3d_arrays

__all__ = [
    "DATA_DIR_ENV",
    "MANIFEST",
    "PW3D_SPLITS",
    "PrepareError",
    "data_root",
    "main",
    "prepare",
    "prepared_files",
    "require_folders",
    "resolve_data_paths",
]

log = logging.getLogger("lsr1.tasks.prepare")

MANIFEST = "manifest.json"
FORMAT = 1
PW3D_SPLITS = ("train", "validation", "test")  # LGD trains on AMASS; validation and test are required
T = TypeVar("T")


class PrepareError(RuntimeError):
    """An input that cannot be prepared (with --on-error fail), or a prepared folder that cannot be used."""


# ---------------------------------------------------------------------------------------------------------
# where the data is

DATA_DIR_ENV = "LSR1_DATA_DIR"
DATA_PATH_KEYS = ("body_dir", "amass_dir", "pw3d_dir", "cache_dir", "prepared_dir", "h36m_regressor")


def data_root() -> Path:
    """The folder that relative hmr.* data paths are relative to: LSR1_DATA_DIR, else the working directory."""
    value = os.environ.get(DATA_DIR_ENV)
    if not value:
        return Path.cwd()
    root = Path(value).expanduser()
    if not root.is_absolute():  # relative to what? In a Ray job the working directory is an uploaded copy
        raise PrepareError(f"{DATA_DIR_ENV}={value!r} must be an absolute path (the folder that holds datasets/)")
    return root


def resolve_data_paths(hmr: HMRConfig) -> HMRConfig:
    """hmr with every data path absolute: relative ones joined to `data_root()`. Ray workers, actors and
    Tune trials run in other folders, so the driver resolves the paths once and hands them on."""
    root = data_root()
    paths = {key: str((root / getattr(hmr, key)).resolve()) for key in DATA_PATH_KEYS if getattr(hmr, key) is not None}
    return dataclasses.replace(hmr, **paths)


def _in_uploaded_copy() -> bool:
    """Whether this is the driver of a `ray job submit --working-dir` job without LSR1_DATA_DIR: it runs in an
    unpacked copy of the working directory, which has none of the git-ignored data."""
    if os.environ.get(DATA_DIR_ENV):
        return False
    try:  # the job supervisor passes the job's runtime env to its driver in this variable
        runtime_env = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")).get("runtime_env") or {}
    except ValueError:
        runtime_env = {}
    return bool(runtime_env.get("working_dir")) or "runtime_resources" in Path.cwd().parts


def missing_data_hint() -> str:
    """What to add to a 'data not found' error: in a Ray job without LSR1_DATA_DIR, why and what to set."""
    if not _in_uploaded_copy():
        return ""
    return (
        f"\nThis runs as a Ray job in an uploaded copy of the working directory ({Path.cwd()}), which has none "
        f"of the git-ignored data: set {DATA_DIR_ENV} to the absolute path of the folder that holds datasets/, "
        f'e.g. ray job submit --runtime-env-json \'{{"env_vars": {{"{DATA_DIR_ENV}": "\'$PWD\'"}}}}\' ... (README.md)'
    )


def require_folders(hmr: HMRConfig, keys: tuple[str, ...]) -> None:
    """A PrepareError naming the first of the hmr folders `keys` that does not exist (with the Ray-job hint)."""
    for key in keys:
        if not Path(getattr(hmr, key)).is_dir():
            raise PrepareError(
                f"hmr.{key} {getattr(hmr, key)} does not exist (data root {data_root()}; datasets/README.md, "
                f"or `python -m pipeline.prepare --synthetic` for the stand-ins){missing_data_hint()}"
            )


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Manifest:
    """manifest.json of a prepared folder: per output, its inputs' checksums, options, rows, the files left
    out and its own checksum; saved atomically after every output."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.path = folder, folder / MANIFEST
        self.outputs: dict[str, dict[str, Any]] = {}
        self.ignored: list[str] = []
        if self.path.exists():
            try:
                data = json.loads(self.path.read_text())
                if data.get("format") != FORMAT:
                    raise ValueError(f"format {data.get('format')!r}, expected {FORMAT}")
                self.outputs = data["outputs"]
            except (ValueError, KeyError, TypeError) as err:
                log.warning("%s is unreadable (%s): preparing everything again", self.path, err)

    def up_to_date(self, name: str, entry: dict[str, Any]) -> bool:
        """Whether output `name` exists as the manifest describes it, made from the same inputs and options."""
        old = self.outputs.get(name)
        if old is None or any(old.get(key) != entry[key] for key in ("inputs", "options")):
            return False
        if old["path"] is None:  # every input was skipped: nothing was written
            return True
        output = self.folder / old["path"]
        return output.is_file() and sha256(output) == old["sha256"]

    def save(self, sources: dict[str, str]) -> None:
        skipped = [
            {"output": name, "file": file, "reason": reason}
            for name, entry in sorted(self.outputs.items())
            for file, reason in sorted(entry["skipped"].items())
        ]
        data = {"format": FORMAT, "sources": sources, "outputs": self.outputs, "skipped": skipped, "ignored": self.ignored}
        with atomic_output(self.path) as tmp:
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


def prepared_files(prepared_dir: str | Path, verify: bool = False) -> tuple[list[Path], dict[str, Path]]:
    """The AMASS shards and the 3DPW split files that manifest.json of a prepared folder lists; an error
    naming the folder or file when it was not prepared or a listed file is missing. verify: also compare
    each file with the sha256 the manifest records, so that a shard changed or corrupted since it was
    prepared is named before any Ray task reads it."""
    folder = Path(prepared_dir)
    path = folder / MANIFEST
    if not path.is_file():
        raise PrepareError(
            f"{path} does not exist: run `python -m pipeline.prepare` (with --synthetic for the stand-ins){missing_data_hint()}"
        )
    try:
        outputs = json.loads(path.read_text())["outputs"]
    except (ValueError, KeyError, TypeError) as err:
        raise PrepareError(f"{path}: unreadable manifest ({err}); run `python -m pipeline.prepare` again") from None
    shards = [folder / e["path"] for _, e in sorted(outputs.items()) if e["kind"] == "amass" and e["path"] is not None]
    splits = {e["split"]: folder / e["path"] for e in outputs.values() if e["kind"] == "3dpw" and e["path"] is not None}
    recorded = {folder / e["path"]: e["sha256"] for e in outputs.values() if e["path"] is not None}
    for file in [*shards, *splits.values()]:
        if not file.is_file():
            raise PrepareError(f"{file}: listed in {path} but missing; run `python -m pipeline.prepare` again")
        if verify and sha256(file) != recorded[file]:
            raise PrepareError(
                f"{file}: corrupt or changed since it was prepared (sha256 differs from {path}); run `python -m pipeline.prepare` again"
            )
    if not shards:
        raise PrepareError(f"{path} lists no AMASS shard with frames")
    return shards, splits


# ---------------------------------------------------------------------------------------------------------
# building outputs


def _read_each(files: list[Path], root: Path, read: Callable[[Path], T], on_error: str) -> tuple[list[tuple[str, T]], dict[str, str]]:
    """(relative path, read(path)) for every readable file, and {relative path: reason} for the others;
    with on_error 'fail' the first unreadable file raises PrepareError naming it."""
    done, skipped = [], {}
    for path in files:
        name = path.relative_to(root).as_posix()
        try:
            done.append((name, read(path)))
        except FormatError as err:
            if on_error == "fail":
                raise PrepareError(f"{err} (--on-error skip leaves such files out)") from None
            log.warning("skipped: %s", err)
            skipped[name] = str(err)
    return done, skipped


def _write(manifest: Manifest, name: str, entry: dict[str, Any], columns: list[dict[str, np.ndarray]], sources: dict[str, str]) -> None:
    rows = sum(len(c["source"]) for c in columns)
    if rows:
        path = write_frames_parquet({key: np.concatenate([c[key] for c in columns]) for key in columns[0]}, manifest.folder / name)
        entry |= {"path": name, "rows": rows, "sha256": sha256(path)}
    else:
        entry |= {"path": None, "rows": 0, "sha256": None}
    manifest.outputs[name] = entry
    manifest.save(sources)


def _check_kept(entry: dict[str, Any], on_error: str) -> None:
    """An output kept from an earlier --on-error skip run still has its skipped files: 'fail' means fail."""
    if on_error == "fail" and entry["skipped"]:
        reason = min(entry["skipped"].items())[1]
        raise PrepareError(f"{reason} (left out of {entry['path']} by an earlier --on-error skip run)")


def _amass_plan(root: Path, per_shard: int, manifest: Manifest) -> list[tuple[str, list[Path]]]:
    """Sequence files grouped by sub-dataset (the first folder under root), `per_shard` per shard, in path
    order; files that are readable but hold no sequence (shape.npz) are listed as ignored, unreadable ones
    stay in the plan so that building the shard reports them."""
    if not root.is_dir():
        raise PrepareError(f"AMASS folder {root} does not exist; see datasets/README.md{missing_data_hint()}")
    sequences = []
    for path in sorted(root.rglob("*.npz")):
        try:
            readable_sequence = is_amass_sequence(path)
        except FormatError:
            readable_sequence = True
        if readable_sequence:
            sequences.append(path)
        else:
            manifest.ignored.append(path.relative_to(root).as_posix())
    if not sequences:
        raise PrepareError(f"{root}: no AMASS sequence files (*.npz with poses and betas)")

    def dataset(path: Path) -> str:
        parts = path.relative_to(root).parts
        return re.sub(r"[^A-Za-z0-9_.-]", "_", parts[0]) if len(parts) > 1 else "root"

    plan = []
    for name, group in groupby(sequences, key=dataset):
        files = list(group)
        plan += [(f"amass/{name}-{i // per_shard:05d}.parquet", files[i : i + per_shard]) for i in range(0, len(files), per_shard)]
    return plan


def prepare(config: HMRConfig, every: int = 1, per_shard: int = 64, on_error: str = "fail", progress: bool = True) -> dict[str, Any]:
    """Prepare config.amass_dir and config.pw3d_dir into config.prepared_dir (see the module doc); returns
    counts: shards written and kept, frames per output, files skipped."""
    if every < 1 or per_shard < 1:
        raise ValueError(f"every and per_shard must be >= 1, got {every} and {per_shard}")
    if on_error not in ("fail", "skip"):
        raise ValueError(f"on_error must be 'fail' or 'skip', got {on_error!r}")
    amass_root, pw3d_root = Path(config.amass_dir).resolve(), Path(config.pw3d_dir).resolve()
    manifest = Manifest(Path(config.prepared_dir).resolve())
    previous = dict(manifest.outputs)
    sources = {"amass": str(amass_root), "3dpw": str(pw3d_root)}
    planned: list[tuple[str, dict[str, Any], Callable[[], None]]] = []

    for name, files in _amass_plan(amass_root, per_shard, manifest):
        inputs = {f.relative_to(amass_root).as_posix(): sha256(f) for f in files}
        entry = {"kind": "amass", "inputs": inputs, "options": {"every": every}, "skipped": {}}

        def build(name: str = name, files: list[Path] = files, entry: dict[str, Any] = entry) -> None:
            read, skipped = _read_each(files, amass_root, read_amass, on_error)
            columns = [amass_columns(sequence, source, every) for source, sequence in read]
            _write(manifest, name, entry | {"skipped": skipped}, columns, sources)

        planned.append((name, entry, build))

    for split in PW3D_SPLITS:
        folder = pw3d_root / "sequenceFiles" / split
        files = sorted(folder.glob("*.pkl"))
        if not files:
            if split == "train":  # unused by LGD's protocol
                log.info("no 3DPW train split in %s", folder)
                continue
            raise PrepareError(f"no 3DPW sequence files in {folder}; see datasets/README.md{missing_data_hint()}")
        name = f"3dpw/{split}.parquet"
        entry = {
            "kind": "3dpw",
            "split": split,
            "inputs": {f.relative_to(pw3d_root).as_posix(): sha256(f) for f in files},
            "options": {},
            "skipped": {},
        }

        def build(name: str = name, files: list[Path] = files, entry: dict[str, Any] = entry) -> None:
            read, skipped = _read_each(files, pw3d_root, read_3dpw, on_error)
            columns = []
            for source, sequence in read:
                arrays = pw3d_arrays([sequence])
                columns.append(arrays | {"source": np.full(len(arrays["pose72"]), source)})
            _write(manifest, name, entry | {"skipped": skipped}, columns, sources)

        planned.append((name, entry, build))

    written, kept = [], []
    for name, entry, build in tqdm(planned, desc="prepare", unit="file", disable=not progress):
        if manifest.up_to_date(name, entry):
            _check_kept(manifest.outputs[name], on_error)
            kept.append(name)
        else:
            build()
            written.append(name)
    names = {name for name, _, _ in planned}
    for name in set(previous) - names:  # outputs of an earlier plan (other options, removed inputs)
        stale = previous[name].get("path")
        if stale is not None:
            (manifest.folder / stale).unlink(missing_ok=True)
        manifest.outputs.pop(name, None)
    manifest.save(sources)
    return {
        "written": written,
        "kept": kept,
        "rows": {name: manifest.outputs[name]["rows"] for name in sorted(names)},
        "skipped": {f: r for name in sorted(names) for f, r in manifest.outputs[name]["skipped"].items()},
        "manifest": manifest.path,
    }


# ---------------------------------------------------------------------------------------------------------
# the command


def _synthetic(config: HMRConfig, sequences: int) -> None:
    """Write the synthetic body, AMASS (`sequences` per subject, 60 frames each) and 3DPW
    (lsr1.hmr.synthetic, seeded: the same bytes every time) into the common parent of the configured folders."""
    from lsr1.hmr.synthetic import generate

    root = Path(config.amass_dir).parent
    expected = {"hmr.body_dir": root / "body", "hmr.amass_dir": root / "amass", "hmr.pw3d_dir": root / "3dpw"}
    given = {"hmr.body_dir": config.body_dir, "hmr.amass_dir": config.amass_dir, "hmr.pw3d_dir": config.pw3d_dir}
    wrong = [f"{key}={given[key]} (expected {path})" for key, path in expected.items() if Path(given[key]) != path]
    if wrong:
        raise PrepareError(f"--synthetic writes body/, amass/ and 3dpw/ under {root}; got {', '.join(wrong)}")
    generate(root, amass={"sequences": sequences})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.prepare", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=None, help="a preset (its hmr section); default: the synthetic stand-ins")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. hmr.amass_dir=/data/amass",
    )
    parser.add_argument("--synthetic", action="store_true", help="first write the synthetic body, AMASS and 3DPW (lsr1.hmr.synthetic)")
    parser.add_argument(
        "--synthetic-sequences",
        type=int,
        default=2,
        metavar="N",
        help="with --synthetic: AMASS sequences per subject (2 sub-datasets x 2 subjects x N x 60 frames; default 2)",
    )
    parser.add_argument("--every", type=int, default=1, help="keep every N-th AMASS frame (default 1: all, as LGD)")
    parser.add_argument("--sequences-per-shard", type=int, default=64, help="AMASS sequences per Parquet shard")
    parser.add_argument(
        "--on-error", choices=("fail", "skip"), default="fail", help="an unreadable input file fails the run (default) or is left out"
    )
    args = parser.parse_args(argv)
    if min(args.every, args.sequences_per_shard, args.synthetic_sequences) < 1:
        parser.error("--every, --sequences-per-shard and --synthetic-sequences must be >= 1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        config = resolve_data_paths(load_config(args.config, args.overrides).hmr)
    except (ConfigError, PrepareError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        if args.synthetic:
            _synthetic(config, args.synthetic_sequences)
        result = prepare(config, args.every, args.sequences_per_shard, args.on_error)
    except (PrepareError, FormatError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    amass = {k: v for k, v in result["rows"].items() if k.startswith("amass/")}
    print(f"\n{'AMASS':10}{len(amass)} shards, {sum(amass.values())} frames (every {args.every})")
    for name, rows in result["rows"].items():
        if name.startswith("3dpw/"):
            print(f"{'3DPW':10}{Path(name).stem}: {rows} frames")
    print(f"{'outputs':10}{len(result['written'])} written, {len(result['kept'])} up to date")
    print(f"{'skipped':10}{len(result['skipped'])} file(s)")
    for file, reason in result["skipped"].items():
        print(f"  {file}: {reason}")
    print(f"{'manifest':10}{result['manifest']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
