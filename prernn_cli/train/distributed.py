"""Running under ``torchrun``: the process's place in the world, the process group, and the samplers.

Training examples are addressed by ``(epoch, index)`` keys so that every example's random
choices follow from ``(seed, epoch, index)`` and a resumed epoch can skip the batches it
already did without loading them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler, Sampler

from prernn_cli.data import ClipDataset
from prernn_cli.devices import resolve_device


def distributed_env() -> tuple[int, int, int]:
    """``(WORLD_SIZE, RANK, LOCAL_RANK)`` as set by ``torchrun`` (1, 0, 0 outside it)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return world, rank, local


def start_device(device: str, world: int, local_rank: int) -> torch.device:
    """The device this process trains on; with ``world`` > 1 also joins the process group (NCCL on CUDA, gloo on CPU)."""
    resolved = resolve_device(device)
    if world > 1:
        if resolved.type == "cuda":
            resolved = torch.device("cuda", local_rank)
            torch.cuda.set_device(resolved)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if resolved.type == "cuda" else "gloo")
    return resolved


def end_process_group(finished: bool) -> None:
    """Leave the process group: after a barrier when every rank finished, at once after an error."""
    if finished:
        dist.barrier()
    dist.destroy_process_group()


class ResumingSampler(Sampler):
    """Yields ``(epoch, index)`` keys from a :class:`DistributedSampler`, skipping the first ``skip``.

    Passing the epoch in the key (rather than via ``dataset.set_epoch``) keeps
    examples exact with persistent workers.
    """

    def __init__(self, sampler: DistributedSampler, epoch: int, skip: int = 0) -> None:
        self.sampler = sampler
        self.epoch = epoch
        self.skip = skip

    def __iter__(self) -> Iterator[tuple[int, int]]:
        self.sampler.set_epoch(self.epoch)
        for position, index in enumerate(self.sampler):
            if position >= self.skip:
                yield (self.epoch, index)

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.skip)


class EpochDataset(torch.utils.data.Dataset):
    """A :class:`ClipDataset` indexed by ``(epoch, index)`` keys."""

    def __init__(self, dataset: ClipDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, index = key if isinstance(key, tuple) else (0, key)
        self.dataset.epoch = epoch
        return self.dataset[index]


class ShardSampler(Sampler):
    """Unpadded shard for evaluation: rank r takes indices r, r + world, ..."""

    def __init__(self, n: int, rank: int, world: int) -> None:
        self.indices = list(range(rank, n, world))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
