"""A run's data: the training and validation datasets, the training loader, and what reads a batch.

The loader draws this rank's share of each epoch in ``(seed, epoch)`` order through a
:class:`~prernn_cli.train.distributed.ResumingSampler`, so a resumed epoch skips the
batches already done without loading them.

With ``--trunk-cache`` (a frozen trunk only) the trunk's outputs of every clip are
computed once, before the first epoch (:mod:`~prernn_cli.data.trunk_cache`): batches
then hold those features, and the model reads them from the trunk's outputs on
(:class:`~prernn_cli.data.trunk_cache.TrunkFeatureModel`).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from prernn_cli.data import (
    Augment,
    ClipDataset,
    ClipReadError,
    DataSplits,
    FrameCache,
    Sampling,
    collate,
    count_clip_frames,
    dense_windows,
    flip_pairs_from_names,
)
from prernn_cli.data.trunk_cache import (
    TrunkCache,
    TrunkFeatureDataset,
    TrunkFeatureModel,
    TrunkLayout,
    TrunkPass,
    fill,
    precision,
    trunk_identity,
)
from prernn_cli.errors import DataError, UserInputError
from prernn_cli.spec import InputSpec, Task
from prernn_cli.train.config import TrainConfig
from prernn_cli.train.distributed import EpochDataset, ResumingSampler

logger = logging.getLogger(__name__)


@dataclass
class RunData:
    train_set: ClipDataset
    val_set: ClipDataset
    sampler: ResumingSampler  # set to each epoch (and the batches to skip) before it runs
    loader: DataLoader | None  # None once the run is torn down
    steps_per_epoch: int
    skipped: list[tuple[str, str]]  # clips left out (unreadable, too short), as (path, reason)
    reader: nn.Module  # what a batch goes through: the model, or the model from cached trunk outputs
    step_shape: tuple[int, ...]  # one step of one clip in a batch
    note: str | None = None  # how the trunk cache serves the run, for the start of the progress


def check_cache_options(config: TrainConfig) -> None:
    """``--trunk-cache`` needs a frozen trunk, and ``--trunk-cache-views`` augmentation to draw views with."""
    if config.trunk_cache and not config.freeze_trunk:
        raise UserInputError("--trunk-cache: the trunk trains, so its outputs change every step: add --freeze-trunk")
    if config.trunk_cache_views and not config.trunk_cache:
        raise UserInputError("--trunk-cache-views stores augmented views in the trunk cache: add --trunk-cache DIR")
    if config.trunk_cache_views and not (config.augment or config.flip):
        raise UserInputError(
            "--trunk-cache-views draws augmented views, but augmentation is off (--no-augment): "
            "drop --trunk-cache-views or --no-augment"
        )


def with_whole_clip_steps(config: TrainConfig, splits: DataSplits, spec: InputSpec) -> TrainConfig:
    """``--steps 0``: T = the shortest training clip's frames ÷ frames per step, so every frame of it is in one step.

    Unreadable clips are left to the loaders (which skip and report them). The resolved T is what
    the run records, so evaluate and export use it, and ``--resume`` resolves it the same way.
    """
    if config.steps != 0:
        return config
    counts = []
    for clip in splits.train:
        try:
            counts.append(clip.num_frames if clip.num_frames is not None else count_clip_frames(clip.path, spec))
        except ClipReadError:
            continue
    if not counts:
        raise DataError("--steps 0 takes T from the training clips, and none could be read; give --steps N")
    shortest = min(counts)
    steps = shortest // spec.frames_per_step
    if steps < 1:
        raise DataError(
            f"--steps 0: the shortest training clip has {shortest} frames, fewer than one step's "
            f"{spec.frames_per_step}; give --steps N or remove that clip"
        )
    logger.info("--steps 0: %d steps per clip (the shortest training clip has %d frames)", steps, shortest)
    return replace(config, steps=steps)


def _augment(config: TrainConfig, splits: DataSplits) -> Augment | None:
    translate = config.augment
    if translate and splits.task is Task.REGRESS:  # a shifted frame no longer matches image-coordinate targets
        logger.info("random translation is off for --task regress: it would move the frames but not the targets")
        translate = False
    if not (translate or config.flip):
        return None
    pairs = flip_pairs_from_names(config.flip_pairs, splits.class_names) if config.flip_pairs else ()
    return Augment(translate=translate, flip=config.flip or bool(pairs), flip_pairs=pairs)


def _datasets(
    spec: InputSpec, splits: DataSplits, config: TrainConfig, trunk_cache: TrunkCache | None = None
) -> tuple[ClipDataset, ClipDataset, list[tuple[str, str]]]:
    """Training and validation datasets (read from ``trunk_cache`` when given), and the clips left out."""
    augment = _augment(config, splits)
    skipped: list[tuple[str, str]] = []
    train_clips, val_clips = splits.train, splits.val
    if config.sampling is Sampling.DENSE:
        train_clips, bad = dense_windows(train_clips, config.steps, spec.frames_per_step, spec=spec)
        val_clips, bad_val = dense_windows(val_clips, config.steps, spec.frames_per_step, spec=spec)
        skipped += [(str(p), r) for p, r in bad + bad_val]
        if config.strict and skipped:
            raise DataError(f"clip {skipped[0][0]}: {skipped[0][1]}; fix or remove it (or drop --strict)")
        if not train_clips:
            raise DataError("no training clip is long enough for one dense window; lower --steps")
    cache = FrameCache.open(Path(config.frame_cache), spec) if config.frame_cache else None
    dataset = ClipDataset if trunk_cache is None else partial(TrunkFeatureDataset, trunk_cache=trunk_cache)
    views = {"views": config.trunk_cache_views} if trunk_cache is not None else {}
    train_set = dataset(
        train_clips, spec, splits.task, config.steps, config.sampling, augment, config.seed, frame_cache=cache, **views
    )
    val_sampling = Sampling.DENSE if config.sampling is Sampling.DENSE else Sampling.UNIFORM
    val_set = dataset(val_clips, spec, splits.task, config.steps, val_sampling, None, config.seed, frame_cache=cache)
    return train_set, val_set, skipped


def _open_trunk_cache(model: nn.Module, config: TrainConfig, device: torch.device) -> tuple[TrunkCache, TrunkPass]:
    """The trunk cache of ``model``'s (frozen, on ``device``) trunk, and how its entries are computed."""
    spec = model.spec.input
    runner = TrunkPass(model.trunk, spec, device, config.amp, max(1, config.batch_size * config.steps))
    model.trunk.eval()
    layout = TrunkLayout.probe(model.trunk, spec, device)
    identity = trunk_identity(model.trunk, spec, precision(device, config.amp))
    cache = TrunkCache.open(Path(config.trunk_cache), identity, layout, config.trunk_cache_dtype, spec.frames_per_step)
    return cache, runner


def _fill_trunk_cache(
    cache: TrunkCache,
    runner: TrunkPass,
    sets: tuple[TrunkFeatureDataset, ...],
    config: TrainConfig,
    world: int,
    rank: int,
) -> str:
    """Compute the entries the datasets need (this rank's share of the clips); a line on what was done."""
    started = time.perf_counter()
    wanted: dict = {}
    for dataset in sets:
        views = dataset.clip_views()
        for clip in dataset.clips:
            known = wanted.setdefault(clip.path, [])
            known += [view for view in views if view not in known]
    share = {path: wanted[path] for path in sorted(wanted, key=str)[rank::world]}
    result = fill(cache, runner, share, config.steps, config.workers, sets[0].frame_cache)
    counts, failures = [result.frame_counts], [result.failures]
    if world > 1:  # every rank reads every clip: gather what the others found
        gathered: list = [None] * world
        dist.all_gather_object(gathered, (result.frame_counts, result.failures))
        counts, failures = [g[0] for g in gathered], [g[1] for g in gathered]
    for dataset in sets:
        for found in counts:
            dataset.frame_counts.update(found)
        for failed in failures:
            dataset.failures.update(failed)
    views = sets[0].clip_views()
    seen = (
        "1 centre-cropped view per clip, spatial augmentation off"
        if views == [None]
        else f"{len(views)} augmented views per clip"
    )
    line = (
        f"trunk cache {cache.root}: {seen}; entries: {result.computed} computed, {result.read} read"
        f" ({time.perf_counter() - started:.1f} s)"
    )
    logger.info(line)
    return line


def run_data(
    model: nn.Module, splits: DataSplits, config: TrainConfig, world: int, rank: int, device: torch.device
) -> RunData:
    """The datasets and the training loader of rank ``rank`` of ``world`` (the trunk cache filled first)."""
    spec = model.spec.input
    reader, step_shape, note, trunk_cache = model, spec.step_shape(), None, None
    if config.trunk_cache:
        trunk_cache, runner = _open_trunk_cache(model, config, device)
        reader, step_shape = TrunkFeatureModel(model, trunk_cache.layout), (trunk_cache.layout.size,)
    train_set, val_set, skipped = _datasets(spec, splits, config, trunk_cache)
    if trunk_cache is not None:
        note = _fill_trunk_cache(trunk_cache, runner, (train_set, val_set), config, world, rank)
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
    steps_per_epoch = math.ceil(len(shard) / config.batch_size)
    return RunData(train_set, val_set, sampler, loader, steps_per_epoch, skipped, reader, step_shape, note)
