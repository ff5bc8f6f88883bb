"""Optical flow computed from RGB clips with OpenCV's DIS (dense inverse search), at the model's frame size.

A clip of F RGB frames gives F − 1 flow frames: flow frame i is the displacement from
RGB frame i to i + 1 (as in the precomputed dumps of :mod:`prernn_cli.data.flow`), so
sampling picks flow frames exactly as it picks RGB frames, from a clip one frame shorter.
Frames are turned grey and resized (shorter side to cover the model's size) before the
flow is computed, so the displacements are in the pixels the model sees and the cost is
that of the small frames. The result is quantised like the precomputed dumps (0..255 for
[-bound, bound], :func:`~prernn_cli.data.flow.quantise_flow`), so the two sources train
the same network and share the frame cache's uint8 layout.

DIS with ``PRESET_MEDIUM`` rather than Farneback or DIS ``PRESET_FAST``: on a texture moved by
a known shift its endpoint error stays under the rounding error of the 8-bit flow images
(0.078 px) at 112 and 224 pixels, for a small and a large shift, at half Farneback's time
(``benchmarks/bench_optical_flow.py``; README, "Modalities", gives the numbers).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from prernn_cli.data.decoding import ClipReadError, count_frames, read_frames
from prernn_cli.data.flow import quantise_flow
from prernn_cli.data.planes import resize_planes

DIS_PRESET = cv2.DISOPTICAL_FLOW_PRESET_MEDIUM


def compute_flow(grey: np.ndarray) -> np.ndarray:
    """Flow between consecutive grey frames ``[N, H, W]`` uint8: ``[N − 1, H, W, 2]`` float32."""
    dis = cv2.DISOpticalFlow_create(DIS_PRESET)
    return np.stack([dis.calc(grey[i], grey[i + 1], None) for i in range(len(grey) - 1)])


def flow_frame_count(path: Path) -> int:
    """Flow frames an RGB clip gives: one fewer than its frames."""
    return max(0, count_frames(path) - 1)


def read_computed_flow(
    path: Path, size: tuple[int, int], bound: float, indices: Sequence[int] | None = None
) -> tuple[list[np.ndarray], int]:
    """Flow frames ``indices`` (all when None) computed from the RGB clip at ``path``, and the flow frame count.

    Each flow frame is ``H'×W'×2`` uint8 at the size covering ``size`` (quantised with ``bound``).
    Raises :class:`ClipReadError` for an unreadable clip or one too short.
    """
    total = flow_frame_count(path)
    wanted = list(range(total)) if indices is None else list(indices)
    if total < 1 or any(not 0 <= i < total for i in wanted):
        raise ClipReadError(f"too short: {total} flow frames (its RGB frames minus one)")
    needed = sorted({j for i in wanted for j in (i, i + 1)})
    frames, _ = read_frames(path, needed)
    grey = [np.asarray(Image.fromarray(frame).convert("L")) for frame in frames]
    grey = resize_planes([g[..., None] for g in grey], size)[..., 0]
    at = {index: k for k, index in enumerate(needed)}
    dis = cv2.DISOpticalFlow_create(DIS_PRESET)
    flows = {i: dis.calc(grey[at[i]], grey[at[i + 1]], None) for i in dict.fromkeys(wanted)}
    return [quantise_flow(flows[i], bound) for i in wanted], total
