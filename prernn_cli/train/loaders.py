"""A run's data: the training and validation datasets and the training loader.

The loader draws this rank's share of each epoch in ``(seed, epoch)`` order through a
:class:`~prernn_cli.train.distributed.ResumingSampler`, so a resumed epoch skips the
batches already done without loading them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, DistributedSampler

from prernn_cli.data import (
    Augment,
    ClipDataset,
    DataSplits,
    FrameCache,
    Sampling,
    collate,
    dense_windows,
    flip_pairs_from_names,
)
from prernn_cli.errors import DataError
from prernn_cli.spec import InputSpec
from prernn_cli.train.config import TrainConfig
from prernn_cli.train.distributed import EpochDataset, ResumingSampler


@dataclass
class RunData:
    train_set: ClipDataset
    val_set: ClipDataset
    sampler: ResumingSampler  # set to each epoch (and the batches to skip) before it runs
    loader: DataLoader | None  # None once the run is torn down
    steps_per_epoch: int
    skipped: list[tuple[str, str]]  # clips left out (unreadable, too short), as (path, reason)


def _augment(config: TrainConfig, splits: DataSplits) -> Augment | None:
    if not (config.augment or config.flip):
        return None
    pairs = flip_pairs_from_names(config.flip_pairs, splits.class_names) if config.flip_pairs else ()
    return Augment(translate=config.augment, flip=config.flip or bool(pairs), flip_pairs=pairs)


def _datasets(
    spec: InputSpec, splits: DataSplits, config: TrainConfig
) -> tuple[ClipDataset, ClipDataset, list[tuple[str, str]]]:
    """Training and validation datasets, and the clips left out (too short for a dense window)."""
    augment = _augment(config, splits)
    skipped: list[tuple[str, str]] = []
    train_clips, val_clips = splits.train, splits.val
    if config.sampling is Sampling.DENSE:
        train_clips, bad = dense_windows(train_clips, config.steps, spec.frames_per_step)
        val_clips, bad_val = dense_windows(val_clips, config.steps, spec.frames_per_step)
        skipped += [(str(p), r) for p, r in bad + bad_val]
        if config.strict and skipped:
            raise DataError(f"clip {skipped[0][0]}: {skipped[0][1]}; fix or remove it (or drop --strict)")
        if not train_clips:
            raise DataError("no training clip is long enough for one dense window; lower --steps")
    cache = FrameCache.open(Path(config.frame_cache), spec) if config.frame_cache else None
    train_set = ClipDataset(
        train_clips, spec, splits.task, config.steps, config.sampling, augment, seed=config.seed, frame_cache=cache
    )
    val_sampling = Sampling.DENSE if config.sampling is Sampling.DENSE else Sampling.UNIFORM
    val_set = ClipDataset(
        val_clips, spec, splits.task, config.steps, val_sampling, None, seed=config.seed, frame_cache=cache
    )
    return train_set, val_set, skipped


def run_data(
    spec: InputSpec, splits: DataSplits, config: TrainConfig, world: int, rank: int, device: torch.device
) -> RunData:
    """The datasets and the training loader of rank ``rank`` of ``world``."""
    train_set, val_set, skipped = _datasets(spec, splits, config)
    shard = DistributedSampler(
        range(len(train_set)), num_replicas=world, rank=rank, shuffle=True, seed=config.seed, drop_last=False
    )
    loader_kwargs = dict(
        batch_size=config.batch_size,
        num_workers=config.workers,
        collate_fn=collate,
        pin_memory=device.type == "cuda",
        persistent_workers=config.workers > 0,
        generator=torch.Generator().manual_seed(config.seed),  # keeps the global RNG untouched
    )
    if config.workers > 0:
        loader_kwargs["prefetch_factor"] = 4
    sampler = ResumingSampler(shard, 0)
    loader = DataLoader(EpochDataset(train_set), sampler=sampler, **loader_kwargs)
    return RunData(train_set, val_set, sampler, loader, math.ceil(len(shard) / config.batch_size), skipped)
