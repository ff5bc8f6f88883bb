"""The clips an analysis runs on, as windows of preprocessed frames."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from prernn_cli.data import (
    ClipDataset,
    ClipReadError,
    Sampling,
    collate,
    discover,
    frames_to_steps,
    preprocess,
    read_frames,
)
from prernn_cli.errors import UserInputError
from prernn_cli.spec import InputSpec

WINDOW_STEPS = 64
"""A whole clip runs in windows of at most this many steps, the state carried from one to the next."""


@dataclass(frozen=True)
class ClipWindow:
    """Consecutive steps of a batch of clips; ``first`` is False when it continues the previous window's clips."""

    frames: Tensor  # [B, T, C, H, W] or [B, T, C, L, H, W]
    first: bool = True


def select_clips(clips: Sequence, max_clips: int | None) -> list:
    """At most ``max_clips`` clips, evenly spread over the (class-sorted) list so every class is seen."""
    clips = list(clips)
    if max_clips is None or max_clips >= len(clips):
        return clips
    if max_clips < 1:
        raise UserInputError(f"--max-clips must be at least 1, got {max_clips}")
    return [clips[(i * len(clips)) // max_clips] for i in range(max_clips)]


def clip_batches(
    data: Path,
    input_spec: InputSpec,
    max_clips: int | None = None,
    steps: int | None = None,
    batch_size: int = 8,
    skipped: list | None = None,
    window: int = WINDOW_STEPS,
) -> Iterator[ClipWindow]:
    """Windows of preprocessed frames of the clips under ``data`` (see :class:`ClipWindow`).

    Uses :func:`prernn_cli.data.discover`: the ``val`` split when the data has one
    (``DIR/{train,val}`` or a manifest with a split column), every clip otherwise.
    ``steps=None`` runs each clip whole (2D: every frame; 3D: consecutive
    snippets of L frames), one clip at a time, in windows of ``window`` steps:
    the clip is held as decoded uint8 frames, only one window as float tensors.
    ``steps=T`` samples T evenly spread steps per clip and batches
    ``batch_size`` clips (:class:`prernn_cli.data.ClipDataset`). Unusable clips
    are appended to ``skipped`` as (path, reason) and left out.
    """
    splits = discover(Path(data), val_fraction=0.0)
    clips = select_clips(splits.val or splits.train, max_clips)
    skipped = skipped if skipped is not None else []
    if steps is not None:
        dataset = ClipDataset(clips, input_spec, splits.task, steps=steps, sampling=Sampling.UNIFORM)
        for start in range(0, len(dataset), batch_size):
            batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
            skipped.extend(batch["skipped"])
            if batch["size"]:
                yield ClipWindow(batch["frames"])
        return
    snippet = input_spec.frames_per_step
    for clip in clips:
        try:
            frames, count = read_frames(clip.path)
        except ClipReadError as error:
            skipped.append((str(clip.path), str(error)))
            continue
        total = count // snippet
        if total < 1:
            skipped.append((str(clip.path), f"too short: {count} frames, one step needs {snippet}"))
            continue
        for begin in range(0, total, window):
            length = min(window, total - begin)
            tensor = preprocess(frames[begin * snippet : (begin + length) * snippet], input_spec)  # [t·L, C, H, W]
            tensor = frames_to_steps(tensor, snippet)  # [t, C, H, W] or [t, C, L, H, W]
            yield ClipWindow(tensor.unsqueeze(0).contiguous(), first=begin == 0)
