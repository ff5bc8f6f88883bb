"""The clips an analysis runs on, as windows of preprocessed frames with their targets."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from prernn_cli.data import (
    Clip,
    ClipDataset,
    ClipReadError,
    DataSplits,
    Sampling,
    collate,
    discover,
    load_targets,
    preprocess,
    read_clip_frames,
    spec_steps,
)
from prernn_cli.errors import DataError, UserInputError
from prernn_cli.spec import InputSpec, Task

WINDOW_STEPS = 64
"""A whole clip runs in windows of at most this many steps, the state carried from one to the next."""

_TARGET_KEYS = ("label", "sequence", "sequence_lengths", "targets")


@dataclass(frozen=True)
class ClipWindow:
    """Consecutive steps of a batch of clips; ``first`` is False when it continues the previous window's clips.

    ``target`` holds the clips' targets as a training batch does (``label``; ``sequence`` and
    ``sequence_lengths``; or ``targets`` of the window's steps), None when unknown.
    """

    frames: Tensor  # [B, T, C, H, W] or [B, T, C, L, H, W]
    first: bool = True
    target: dict | None = None


def select_clips(clips: Sequence, max_clips: int | None) -> list:
    """At most ``max_clips`` clips, evenly spread over the (class-sorted) list so every class is seen."""
    clips = list(clips)
    if max_clips is None or max_clips >= len(clips):
        return clips
    if max_clips < 1:
        raise UserInputError(f"--max-clips must be at least 1, got {max_clips}")
    return [clips[(i * len(clips)) // max_clips] for i in range(max_clips)]


def analysis_splits(data: Path, split_file: Path | None = None) -> DataSplits:
    """The clips under ``data`` (a folder, a manifest, or the folder a ``split_file`` lists), nothing held out."""
    return discover(Path(data), val_fraction=0.0, split_file=split_file)


def clip_batches(
    data: Path,
    input_spec: InputSpec,
    max_clips: int | None = None,
    steps: int | None = None,
    batch_size: int = 8,
    skipped: list | None = None,
    window: int = WINDOW_STEPS,
    splits: DataSplits | None = None,
) -> Iterator[ClipWindow]:
    """Windows of preprocessed frames of the clips under ``data`` (see :class:`ClipWindow`).

    Uses :func:`analysis_splits` (or ``splits`` when given): the ``val`` split when the
    data has one (``DIR/{train,val}``, a manifest with a split column, a split list's test
    list), every clip otherwise. ``steps=None`` runs each clip whole (2D: every frame; 3D:
    consecutive snippets of L frames), one clip at a time, in windows of ``window`` steps:
    the clip is held as decoded uint8 frames, only one window as float tensors.
    ``steps=T`` samples T evenly spread steps per clip and batches ``batch_size`` clips
    (:class:`prernn_cli.data.ClipDataset`). Unusable clips are appended to ``skipped`` as
    (path, reason) and left out.
    """
    splits = splits if splits is not None else analysis_splits(data)
    clips = select_clips(splits.val or splits.train, max_clips)
    skipped = skipped if skipped is not None else []
    if steps is not None:
        yield from _sampled_windows(clips, splits.task, input_spec, steps, batch_size, skipped)
        return
    for clip in clips:
        try:
            frames, count = read_clip_frames(clip.path, input_spec)
            total = count // input_spec.frames_per_step
            if total < 1:
                raise ClipReadError(f"too short: {count} frames, one step needs {input_spec.frames_per_step}")
            targets = _clip_targets(clip, splits.task, count)
        except ClipReadError as error:
            skipped.append((str(clip.path), str(error)))
            continue
        yield from _whole_clip_windows(frames, targets, splits.task, input_spec, total, window)


def _sampled_windows(
    clips: list[Clip], task: Task, input_spec: InputSpec, steps: int, batch_size: int, skipped: list
) -> Iterator[ClipWindow]:
    dataset = ClipDataset(clips, input_spec, task, steps=steps, sampling=Sampling.UNIFORM)
    for start in range(0, len(dataset), batch_size):
        batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        skipped.extend(batch["skipped"])
        if batch["size"]:
            yield ClipWindow(batch["frames"], target={k: batch[k] for k in _TARGET_KEYS if k in batch})


def _clip_targets(clip: Clip, task: Task, count: int) -> dict:
    """The whole clip's target in batch form (regress: one row per frame, checked against ``count``)."""
    if task is Task.CLASSIFY:
        return {"label": torch.tensor([clip.label])}
    if task is Task.CTC:
        sequence = torch.tensor(clip.sequence or (), dtype=torch.long)
        return {"sequence": sequence, "sequence_lengths": torch.tensor([len(sequence)])}
    try:
        rows = load_targets(clip.targets)
    except DataError as error:
        raise ClipReadError(str(error)) from None
    if rows.shape[0] != count:
        raise ClipReadError(f"targets {clip.targets} have {rows.shape[0]} rows but the clip has {count} frames")
    return {"rows": torch.from_numpy(rows)}


def _whole_clip_windows(
    frames: list, targets: dict, task: Task, input_spec: InputSpec, total: int, window: int
) -> Iterator[ClipWindow]:
    """One clip's steps in windows of ``window``; a regression window carries its steps' targets (a step's last frame)."""
    snippet = input_spec.frames_per_step
    for begin in range(0, total, window):
        length = min(window, total - begin)
        tensor = preprocess(frames[begin * snippet : (begin + length) * snippet], input_spec)  # [t·L, C, H, W]
        tensor = spec_steps(tensor, input_spec)  # [t, C, H, W], [t, C, L, H, W] or a flow stack [t, 2L, H, W]
        target = targets
        if task is Task.REGRESS:
            last_frames = [(step + 1) * snippet - 1 for step in range(begin, begin + length)]
            target = {"targets": targets["rows"][last_frames].unsqueeze(0)}
        yield ClipWindow(tensor.unsqueeze(0).contiguous(), first=begin == 0, target=target)
