"""Which frames of a clip make its T steps, and how frames are grouped into steps.

T steps are sampled per clip (:class:`Sampling`): ``uniform`` spreads them evenly
over the clip, ``random`` draws a random stride and offset (the default for
training, a temporal augmentation that never reverses time; with ``whole`` — for CTC,
whose label sequence describes the whole clip, so a crop that drops part of the clip
would drop labelled events — one random step in each of T equal segments of the clip
instead), ``dense`` cuts the
clip into consecutive windows of T steps (every window is one example; for long
videos). For a 3D backbone every step is a snippet of L consecutive frames
(``InputSpec.snippet_length``). A clip shorter than one needs is *too short*: it
is skipped and reported, like an unreadable one.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

from torch import Tensor

from prernn_cli.choices import Sampling
from prernn_cli.data.clips import Clip
from prernn_cli.data.decoding import ClipReadError, count_frames
from prernn_cli.data.modalities import count_clip_frames
from prernn_cli.spec import InputSpec


def frames_needed(steps: int, snippet: int) -> int:
    """The shortest clip that gives ``steps`` distinct steps of ``snippet`` frames."""
    return snippet + steps - 1


def step_starts(
    num_frames: int,
    steps: int,
    snippet: int,
    mode: Sampling,
    rng: random.Random | None = None,
    start: int | None = None,
    whole: bool = False,
) -> list[int]:
    """First frame of each of the ``steps`` steps (each step covers ``snippet`` frames).

    ``rng`` is used by ``random`` sampling only; ``start`` is the first frame of a dense window;
    ``whole``: random steps still cover the whole clip (one per segment).
    Raises :class:`ClipReadError` when the clip is too short.
    """
    if num_frames < frames_needed(steps, snippet):
        raise ClipReadError(
            f"too short: {num_frames} frames, needs at least {frames_needed(steps, snippet)} for {steps} steps of {snippet}"
        )
    span = num_frames - snippet  # last possible start
    if mode is Sampling.DENSE:
        first = start or 0
        return [first + i * snippet for i in range(steps)]
    if mode is Sampling.RANDOM and rng is not None and whole and steps > 1:
        edges = [round(i * (span + 1) / steps) for i in range(steps + 1)]  # T segments, none empty
        return [rng.randint(edges[i], edges[i + 1] - 1) for i in range(steps)]
    if mode is Sampling.RANDOM and rng is not None and steps > 1:
        max_stride = span // (steps - 1)
        min_stride = min(snippet, max_stride)
        stride = rng.randint(min_stride, max_stride)
        offset = rng.randint(0, span - stride * (steps - 1))
        return [offset + i * stride for i in range(steps)]
    if mode is Sampling.RANDOM and rng is not None:
        return [rng.randint(0, span)]
    if steps == 1:
        return [span // 2]
    return [round(i * span / (steps - 1)) for i in range(steps)]


def frame_indices(starts: Sequence[int], snippet: int) -> list[int]:
    """Every frame the steps starting at ``starts`` cover, step by step."""
    return [s + j for s in starts for j in range(snippet)]


def frames_to_steps(frames: Tensor, snippet: int) -> Tensor:
    """Group frames ``[T*L, C, H, W]`` into snippet steps ``[T, C, L, H, W]``; ``snippet`` 1: frames are steps, unchanged.

    Frames past the last whole snippet are dropped.
    """
    if snippet == 1:
        return frames
    usable = (frames.shape[0] // snippet) * snippet
    c, h, w = frames.shape[1:]
    return frames[:usable].view(usable // snippet, snippet, c, h, w).permute(0, 2, 1, 3, 4).contiguous()


def spec_steps(frames: Tensor, spec: InputSpec) -> Tensor:
    """Frames ``[T*L, C, H, W]`` as the steps of ``spec``: :func:`frames_to_steps`, or for flow on a 2D
    network L frames of (x, y) stacked into ``[T, 2L, H, W]`` (x1, y1, x2, y2, ..., as two-stream networks do)."""
    snippet = spec.frames_per_step
    if not spec.stacks_frames:
        return frames_to_steps(frames, snippet)
    usable = (frames.shape[0] // snippet) * snippet
    c, h, w = frames.shape[1:]
    return frames[:usable].reshape(usable // snippet, snippet * c, h, w)


def dense_windows(
    clips: Sequence[Clip], steps: int, snippet: int, hop: int | None = None, *, spec: InputSpec | None = None
) -> tuple[list[Clip], list[tuple[Path, str]]]:
    """Cut every clip into windows of ``steps`` consecutive steps (``hop`` frames apart; default no overlap).

    ``spec``: count the frames of its modality (flow computed from F RGB frames has F − 1).

    Returns the windows and the clips skipped as unreadable or too short.
    """
    window = steps * snippet
    hop = hop or window
    out: list[Clip] = []
    skipped: list[tuple[Path, str]] = []
    for clip in clips:
        try:
            n = count_frames(clip.path) if spec is None else count_clip_frames(clip.path, spec)
        except ClipReadError as error:
            skipped.append((clip.path, str(error)))
            continue
        if n < window:
            skipped.append((clip.path, f"too short: {n} frames, a dense window needs {window}"))
            continue
        for begin in range(0, n - window + 1, hop):
            out.append(Clip(clip.path, clip.label, clip.targets, clip.sequence, start=begin, num_frames=n))
    return out, skipped
