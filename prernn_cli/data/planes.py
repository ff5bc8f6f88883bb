"""Resizing frames of any channel count and bit depth: depth (8/16-bit, one channel) and flow (two channels).

PIL resizes "L" and "RGB" images only as 8-bit; a 16-bit depth frame or a two-channel
flow frame is resized one channel at a time as a 32-bit float image (PIL mode "F"), with
the same rule as colour frames (shorter side to the model's size, aspect kept, bilinear),
and rounded back to its own integer type.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image


def cover_size(height: int, width: int, size: tuple[int, int]) -> tuple[int, int]:
    """``(width, height)`` of a frame resized, aspect kept, to just cover ``size`` (height, width)."""
    want_h, want_w = size
    scale = max(want_h / height, want_w / width)
    return max(want_w, round(width * scale)), max(want_h, round(height * scale))


def resize_planes(frames: Sequence[np.ndarray], size: tuple[int, int]) -> np.ndarray:
    """Frames ``H×W×C`` (uint8 or uint16) resized to cover ``size``: ``[N, H', W', C]`` of the frames' type."""
    first = np.asarray(frames[0])
    dtype = first.dtype
    height, width = first.shape[:2]
    new = cover_size(height, width, size)
    if new == (width, height):
        return np.stack([np.asarray(frame).reshape(height, width, -1) for frame in frames])
    limit = np.iinfo(dtype).max
    out = []
    for frame in frames:
        planes = np.asarray(frame, dtype=np.float32).reshape(height, width, -1)
        resized = [
            np.asarray(Image.fromarray(np.ascontiguousarray(planes[..., c])).resize(new, Image.BILINEAR))
            for c in range(planes.shape[-1])
        ]
        out.append(np.clip(np.rint(np.stack(resized, axis=-1)), 0, limit).astype(dtype))
    return np.stack(out)
