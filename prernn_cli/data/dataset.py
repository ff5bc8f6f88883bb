"""Clips as a torch ``Dataset`` of ``(frames, target)`` examples, and the batch collation.

Batches are ``frames`` ``[B, T, C, H, W]`` (3D: ``[B, T, C, L, H, W]``) float32,
plus the target of the task. Decoding happens in ``DataLoader`` workers; every
random choice of an example is drawn from a generator seeded with
``(seed, epoch, index)`` so results do not depend on the number of workers and a
resumed run sees exactly the data an uninterrupted one would. A clip that fails
to decode is returned as a failure record; the training loop reports it by path
and skips it (or stops under ``strict``). With a
:class:`~prernn_cli.data.frame_cache.FrameCache`, a clip's frames are decoded and
resized once and read from the cache afterwards; sampling and augmentation are
the same either way.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from prernn_cli.data.clips import Clip
from prernn_cli.data.decoding import ClipReadError
from prernn_cli.data.frame_cache import FrameCache
from prernn_cli.data.manifests import load_targets
from prernn_cli.data.modalities import check_clip, count_clip_frames, read_clip_frames
from prernn_cli.data.preprocessing import Augment, resize_frames, to_tensor
from prernn_cli.data.sampling import Sampling, frame_indices, spec_steps, step_starts
from prernn_cli.errors import DataError
from prernn_cli.spec import InputSpec, Task


@dataclass
class ClipDataset(Dataset):
    """Clips → ``(frames, target)`` examples, decoded lazily (in DataLoader workers).

    ``__getitem__`` returns a dict with ``frames``, ``index`` and the task's
    target (``label`` / ``targets`` / ``sequence``), or ``{"error": ..., "path": ...}``
    when the clip cannot be used: the loop decides whether to skip or stop.
    """

    clips: list[Clip]
    spec: InputSpec
    task: Task
    steps: int
    sampling: Sampling = Sampling.UNIFORM
    augment: Augment | None = None
    seed: int = 0
    epoch: int = 0
    frame_cache: FrameCache | None = None

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise DataError(f"--steps must be at least 1, got {self.steps}")
        if self.augment and self.augment.flip and self.task is Task.REGRESS:
            raise DataError("--flip is not supported with --task regress (targets would need mirroring); drop --flip")
        if self.clips:  # a clip of another modality (colour frames for a depth model) stops here, in one line
            check_clip(self.clips[0].path, self.spec)

    @property
    def snippet(self) -> int:
        return self.spec.frames_per_step

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.clips)

    def _rng(self, index: int) -> random.Random:
        return random.Random(f"{self.seed}:{self.epoch}:{index}")

    def __getitem__(self, index: int) -> dict:
        clip = self.clips[index]
        try:
            return self._load(index, clip)
        except ClipReadError as error:
            return {"error": str(error), "path": str(clip.path), "index": index}

    def _load(self, index: int, clip: Clip) -> dict:
        """One example. The random draws, in this order: the steps (random sampling), the flip, the crop."""
        rng = self._rng(index) if self.augment is not None else None
        arrays, starts, num_frames = self._sampled_frames(clip, rng if self.sampling is Sampling.RANDOM else None)
        flip = False
        if self.augment is not None and self.augment.flip and rng is not None:
            flip = rng.random() < 0.5
        crop_rng = rng if (self.augment is not None and self.augment.translate) else None
        tensor = to_tensor(arrays, self.spec, flip=flip, rng=crop_rng)  # [T*L, C, H, W]
        item: dict = {"frames": spec_steps(tensor, self.spec), "index": index}
        item.update(self._target(clip, flip, starts, num_frames))
        return item

    def _starts(self, clip: Clip, num_frames: int, step_rng: random.Random | None) -> list[int]:
        """First frame of each step: the dense window's, or sampled by :attr:`sampling`."""
        if clip.start is not None:
            return step_starts(num_frames, self.steps, self.snippet, Sampling.DENSE, start=clip.start)
        # a CTC label sequence covers the whole clip: random steps must not crop any of it away
        whole = self.task is Task.CTC
        return step_starts(num_frames, self.steps, self.snippet, self.sampling, rng=step_rng, whole=whole)

    def _sampled_frames(self, clip: Clip, step_rng: random.Random | None) -> tuple[np.ndarray, list[int], int]:
        """The resized frames of the sampled steps ``[T*L, H', W', C]`` uint8, the steps' first frames, the clip's frame count."""
        if self.frame_cache is not None:  # every frame decoded and resized once, then read from the cache
            resized = self.frame_cache.frames(clip.path, self._decode_resized)
            num_frames = resized.shape[0]
            starts = self._starts(clip, num_frames, step_rng)
            return resized[frame_indices(starts, self.snippet)], starts, num_frames
        if clip.start is not None or clip.path.is_dir():  # decode only the frames used
            num_frames = clip.num_frames if clip.num_frames is not None else count_clip_frames(clip.path, self.spec)
            starts = self._starts(clip, num_frames, step_rng)
            frames, num_frames = read_clip_frames(clip.path, self.spec, frame_indices(starts, self.snippet))
        else:  # video: one decoding pass
            frames, num_frames = read_clip_frames(clip.path, self.spec)
            starts = self._starts(clip, num_frames, step_rng)
            frames = [frames[i] for i in frame_indices(starts, self.snippet)]
        return resize_frames(frames, self.spec), starts, num_frames

    def _decode_resized(self, path: Path) -> np.ndarray:
        return resize_frames(read_clip_frames(path, self.spec)[0], self.spec)

    def _target(self, clip: Clip, flip: bool, starts: list[int], num_frames: int) -> dict:
        """The task's target of the example: ``label``, ``sequence`` (both swapped when flipped) or ``targets``."""
        if self.task is Task.CLASSIFY:
            return {"label": self.augment.swap(clip.label) if flip else clip.label}
        if self.task is Task.CTC:
            sequence = clip.sequence or ()
            if flip:
                sequence = tuple(self.augment.swap(s) for s in sequence)
            return {"sequence": torch.tensor(sequence, dtype=torch.long)}
        targets = load_targets(clip.targets) if clip.targets else None
        if targets is None or targets.shape[0] != num_frames:
            shape = None if targets is None else tuple(targets.shape)
            raise ClipReadError(f"targets {clip.targets} have shape {shape} but the clip has {num_frames} frames")
        # the target of a step is its last frame (for a 2D step: the frame itself)
        return {"targets": torch.from_numpy(targets[[s + self.snippet - 1 for s in starts]].copy())}


def collate(items: list[dict]) -> dict:
    """Stack the usable examples; keep the failures as ``skipped`` (path, reason) pairs."""
    good = [it for it in items if "error" not in it]
    batch: dict = {"skipped": [(it["path"], it["error"]) for it in items if "error" in it]}
    if not good:
        batch["size"] = 0
        return batch
    batch["size"] = len(good)
    batch["frames"] = torch.stack([it["frames"] for it in good])
    batch["index"] = torch.tensor([it["index"] for it in good], dtype=torch.long)
    if "label" in good[0]:
        batch["label"] = torch.tensor([it["label"] for it in good], dtype=torch.long)
    if "targets" in good[0]:
        batch["targets"] = torch.stack([it["targets"] for it in good])
    if "sequence" in good[0]:
        batch["sequence"] = torch.cat([it["sequence"] for it in good])
        batch["sequence_lengths"] = torch.tensor([len(it["sequence"]) for it in good], dtype=torch.long)
    return batch
