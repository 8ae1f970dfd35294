"""The HMR data feed (docs/design.md §6): prepared AMASS shards -> Ray Data -> projected-keypoint batches on CPU actors.

    training_dataset  read_parquet on the shards that `pipeline.prepare` listed (checksums verified first:
                      `prepared_files(..., verify=True)`),
                      the data fraction (`lsr1.hmr.formats.in_fraction`), a global shuffle (seeded: a new
                      order each epoch, the same ones on each run), then
                      map_batches(KeypointBatches) on an actor pool
    KeypointBatches   builds the joint model once per actor and turns frames into `HMRProblem` arrays
                      (`lsr1.tasks.hmr.amass_problem`: random global rotation, projection, confidence dropout)
    worker_problems   on a Ray Train worker: its dataset shard as an endless stream of HMRProblems
    pw3d_problems     the prepared 3DPW validation or test split as one HMRProblem (validation, evaluation)
    absolute_paths    the config with its data paths made absolute (`pipeline.prepare.resolve_data_paths`:
                      relative to LSR1_DATA_DIR, else the working directory): Ray workers run in another folder

Every Ray Train worker reads its own share of each epoch (`get_dataset_shard("train")`), task.batch_size
// workers frames per iteration, so a global batch has task.batch_size frames on any worker count.

An epoch of the feed is one execution of the dataset, with a fixed start-up cost (listing, the shuffle, a
new actor building the body: ~5 s on 2 cores) that the workers wait for. So a small data set (the
synthetic stand-ins, a small data fraction) is held in memory and each frame repeated, enough for
MIN_EPOCH_BATCHES global batches per epoch; every copy gets its own augmentation. Real AMASS gives far
more batches in one pass.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from lsr1.config import ExperimentConfig, HMRConfig, config_from_dict, config_to_dict
from lsr1.hmr.formats import PW3D_COLUMNS, in_fraction, read_frames_parquet
from lsr1.tasks.base import derive_seed
from lsr1.tasks.hmr import HMRProblem, amass_problem, load_joint_model, pw3d_problem
from lsr1.tasks.prepare import PrepareError, resolve_data_paths

if TYPE_CHECKING:
    import ray.data

__all__ = ["KeypointBatches", "absolute_paths", "pw3d_problems", "training_dataset", "worker_problems"]

MIN_EPOCH_BATCHES = 200


def absolute_paths(config: ExperimentConfig) -> ExperimentConfig:
    """The config with hmr's data paths absolute (relative ones in the data root), for Ray workers and actors."""
    return dataclasses.replace(config, hmr=resolve_data_paths(config.hmr))


def _keep_fraction(batch: Any, fraction: float) -> Any:
    """A pyarrow batch of AMASS rows -> the rows `in_fraction` keeps."""
    import pyarrow as pa

    sources = batch.column("source").to_numpy(zero_copy_only=False)
    frames = batch.column("frame").to_numpy(zero_copy_only=False)
    return batch.filter(pa.array(in_fraction(sources, frames, fraction)))


def _repeat_rows(batch: Any, times: int) -> Any:
    """A pyarrow batch with its rows `times` times over."""
    import pyarrow as pa

    return pa.concat_tables([batch] * times)


class KeypointBatches:
    """A map_batches callable class: the joint model is built once per actor, then every batch of AMASS
    frames becomes `HMRProblem.to_arrays()` (keypoints, confidences, ground truth) on this CPU.

    The augmentation seed of a batch comes from task.seed, the batch's (source, frame) rows and how many
    batches this actor made, so a frame seen again in a later epoch gets a new rotation and dropout."""

    def __init__(self, hmr: dict[str, Any], seed: int) -> None:
        torch.set_num_threads(1)  # an actor beside the training workers on the same CPUs
        self.config = config_from_dict(HMRConfig, hmr)
        self.model = load_joint_model(self.config)
        self.seed, self.calls = seed, 0

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls += 1
        rows = hashlib.sha256("\n".join(f"{s}:{f}" for s, f in zip(batch["source"], batch["frame"])).encode()).hexdigest()
        problem = amass_problem(batch, self.model, self.config, derive_seed(self.seed, "observe", rows, self.calls))
        return problem.to_arrays()


def passes_per_epoch(shards: list[Path], batch_size: int, fraction: float) -> int:
    """How often an epoch reads the shards: enough for MIN_EPOCH_BATCHES batches (see the module doc)."""
    import pyarrow.parquet as pq

    rows = sum(pq.ParquetFile(s).metadata.num_rows for s in shards) * fraction
    return max(1, math.ceil(MIN_EPOCH_BATCHES * batch_size / max(rows, 1.0)))


def training_dataset(config: ExperimentConfig, shards: list[Path]) -> ray.data.Dataset:
    """The training dataset: rows of HMRProblem arrays, shuffled anew every epoch from task.seed, so that a
    run is reproducible (see the module doc).

    config must have absolute paths (`absolute_paths`): the actor builds the body from them."""
    import ray.data

    context = ray.data.DataContext.get_current()
    # the training progress bar is the one to watch; Ray Data's per-operator bars would print every second
    # into the job log for as long as training runs
    context.enable_progress_bars = False
    # the same run twice sees the same batches: blocks stay in order, so that the workers' streaming_split
    # deals them out by count rather than by who asked first (Ray Train copies these options at fit())
    context.execution_options.preserve_order = True
    dataset = ray.data.read_parquet([str(s) for s in shards])
    if config.hmr.data_fraction < 1.0:
        dataset = dataset.map_batches(_keep_fraction, fn_kwargs={"fraction": config.hmr.data_fraction}, batch_format="pyarrow")
    passes = passes_per_epoch(shards, config.task.batch_size, config.hmr.data_fraction)
    if passes > 1:  # fewer frames than MIN_EPOCH_BATCHES batches (a few MB): held in the object store, each
        # row `passes` times (one operator, where a union of `passes` copies would plan `passes` inputs)
        dataset = dataset.materialize().map_batches(_repeat_rows, fn_kwargs={"times": passes}, batch_format="pyarrow")
    with warnings.catch_warnings():  # max_restarts has no named parameter in Ray 2.60 (pinned <2.61) yet
        warnings.filterwarnings("ignore", "`ray_remote_args` is deprecated", category=Warning)
        # a new order every epoch, the same orders on every run of the config
        shuffle = ray.data.RandomSeedConfig(seed=derive_seed(config.task.seed, "shuffle") % 2**32, reseed_after_execution=True)
        return dataset.random_shuffle(seed=shuffle).map_batches(
            KeypointBatches,
            fn_constructor_kwargs={"hmr": config_to_dict(config.hmr), "seed": config.task.seed},
            batch_size=config.task.batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=1),
            num_cpus=0.5,  # on 2 cores a whole CPU for the actor starves the read tasks (notes/ray-mlflow.md)
            # Ray Data hands every pool actor its DataContext and this operator's transform as object-store refs
            # (whatever our constructor arguments: a config dict and a seed), and Ray logs an ERROR line for an
            # actor with such arguments and restarts allowed. Not restarting it: a dead actor fails the epoch,
            # and Ray Train restarts the worker group from its last checkpoint (--max-failures)
            max_restarts=0,
        )


def worker_problems(shard: Any, config: HMRConfig, batch_size: int, device: torch.device | str = "cpu") -> Iterator[HMRProblem]:
    """This worker's batches of `batch_size` problems from its Ray Data shard (a `DataIterator`), epoch
    after epoch; an epoch with no full batch is an error (fewer frames than workers x batch size)."""
    model = load_joint_model(config, device=device)
    while True:
        count = 0
        for batch in shard.iter_batches(batch_size=batch_size, batch_format="numpy", drop_last=True):
            count += 1
            yield HMRProblem.from_arrays(batch, model, config)
        if count == 0:
            raise ValueError(
                f"an epoch of the training data gave this worker no full batch of {batch_size} frames: too few frames (hmr.data_fraction {config.data_fraction})"
            )


def pw3d_problems(config: HMRConfig, split: str, splits: dict[str, Path], device: torch.device | str = "cpu") -> HMRProblem:
    """The prepared 3DPW `split` ("validation": every config.val_skip-th frame, as LGD; "test": all) as one
    problem; the same frames as `lsr1.tasks.hmr.hmr_problem_set` reads from the pickles."""
    if split not in splits:
        raise PrepareError(f"the prepared data has no 3DPW {split} split (has {sorted(splits)}); run `python -m pipeline.prepare`")
    arrays = read_frames_parquet(splits[split], PW3D_COLUMNS)
    skip = config.val_skip if split == "validation" else 1
    return pw3d_problem({key: value[::skip] for key, value in arrays.items()}, load_joint_model(config, device=device), config)
