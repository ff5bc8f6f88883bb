"""A clip's frames as the model's modality sees them: RGB, depth, or optical flow.

The rest of the data pipeline works on *frames* of the input spec's
:attr:`~prernn_cli.spec.InputSpec.frame_channels` channels: sampling picks frame
indices, the frame cache stores them, preprocessing crops and normalises them. This
module decodes those frames for each modality:

* ``rgb``: video files and frame folders (:mod:`~prernn_cli.data.decoding`);
* ``depth``: folders of 8- or 16-bit grey frames (:mod:`~prernn_cli.data.depth`);
* ``flow``: folders of precomputed ``flow_x``/``flow_y`` images (:mod:`~prernn_cli.data.flow`),
  or any RGB clip, whose F frames give F − 1 flow frames (:mod:`~prernn_cli.data.optical_flow`).

A 2D network stacks a step's L consecutive flow frames into 2L channels; that happens
when frames become steps (:func:`~prernn_cli.data.sampling.spec_steps`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from prernn_cli.data.decoding import ClipReadError, count_frames, frame_folder, read_frames
from prernn_cli.data.depth import depth_bits, read_depth_frames
from prernn_cli.data.flow import flow_files, is_flow_folder, read_flow_frames
from prernn_cli.data.optical_flow import flow_frame_count, read_computed_flow
from prernn_cli.errors import DataError
from prernn_cli.spec import InputSpec, Modality


def count_clip_frames(path: Path, spec: InputSpec) -> int:
    """Frames of the spec's modality in a clip (a flow clip computed from F RGB frames has F − 1)."""
    path = Path(path)
    if spec.modality is Modality.FLOW:
        return len(flow_files(path)[0]) if is_flow_folder(path) else flow_frame_count(path)
    return count_frames(path)


def read_clip_frames(path: Path, spec: InputSpec, indices: Sequence[int] | None = None) -> tuple[list[np.ndarray], int]:
    """Frames ``indices`` (all when None) of a clip in the spec's modality, and the clip's frame count.

    RGB frames are H×W×3 uint8, depth H×W×1 uint8 or uint16, flow H×W×2 uint8 (computed flow
    already at the size covering the model's). Raises :class:`ClipReadError` for a clip that
    cannot be used.
    """
    path = Path(path)
    if spec.modality is Modality.DEPTH:
        return read_depth_frames(path, indices)
    if spec.modality is Modality.FLOW and is_flow_folder(path):
        return read_flow_frames(path, indices)
    if spec.modality is Modality.FLOW:
        return read_computed_flow(path, spec.size, spec.flow_bound, indices)
    return read_frames(path, indices)


def check_clip(path: Path, spec: InputSpec) -> None:
    """Refuse, with a one-line :class:`DataError`, a clip that is not of the model's modality.

    Run on the first clip of a data set before loading starts, so that a depth model given
    colour frames, or a flow folder without ``flow_y``, stops the command with a clear message
    instead of skipping every clip.
    """
    path = Path(path)
    try:
        if spec.modality is Modality.DEPTH:
            depth_bits(path)
        elif spec.modality is Modality.FLOW and is_flow_folder(path):
            flow_files(path)
    except ClipReadError as error:
        raise DataError(f"{path}: {error}") from None


def probe_frame_size(path: Path, spec: InputSpec) -> tuple[int, int]:
    """``(height, width)`` of a clip's frames in the spec's modality (computed flow: the model's cover size)."""
    path = Path(path)
    try:
        if spec.modality is Modality.FLOW and is_flow_folder(path):
            width, height = frame_folder(path / "flow_x")[1]
            return height, width
        if spec.modality is Modality.DEPTH:
            depth_bits(path)
            width, height = frame_folder(path)[1]
            return height, width
    except ClipReadError as error:
        raise DataError(f"cannot read {path}: {error}") from None
    return spec.size
