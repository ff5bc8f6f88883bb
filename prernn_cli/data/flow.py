"""Precomputed optical flow: ``CLIP/flow_x/*`` and ``CLIP/flow_y/*`` folders of grey images.

This is the layout of the TV-L1 dumps two-stream repositories ship (``flow_x/frame_0000.jpg``,
``flow_y/frame_0000.jpg``, ...): frame i of each folder holds the x or y displacement from
RGB frame i to i+1, quantised so that 0..255 maps linearly to [-bound, bound] pixels
(bound 20 by default; ``InputSpec.flow_bound``). Frames stay in that uint8 form through
resizing and the frame cache; the input spec's default mean 0.5 and std 0.5 make a value
v the tensor 2·v/255 − 1, that is displacement / bound. Resizing resizes the images, as
those repositories do: it does not rescale the displacements.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from prernn_cli.data.decoding import ClipReadError, frame_folder

FLOW_FOLDERS = ("flow_x", "flow_y")
#: the uint8 value of a zero displacement (0..255 maps to [-bound, bound])
FLOW_ZERO = 127.5


def is_flow_folder(path: Path) -> bool:
    """Whether ``path`` is a clip of precomputed flow (a folder holding ``flow_x`` or ``flow_y``)."""
    path = Path(path)
    return path.is_dir() and any((path / name).is_dir() for name in FLOW_FOLDERS)


def flow_files(path: Path) -> tuple[tuple[Path, ...], tuple[Path, ...]]:
    """The x and y images of a flow clip, frame by frame; :class:`ClipReadError` when they do not pair up."""
    path = Path(path)
    missing = [name for name in FLOW_FOLDERS if not (path / name).is_dir()]
    if missing:
        raise ClipReadError(
            f"flow clip has no {missing[0]}/ folder; a flow clip holds flow_x/ and flow_y/ folders of grey images"
        )
    (x_files, x_size), (y_files, y_size) = (frame_folder(path / name) for name in FLOW_FOLDERS)
    if len(x_files) != len(y_files):
        raise ClipReadError(f"flow_x/ holds {len(x_files)} images but flow_y/ {len(y_files)}; they pair frame by frame")
    if x_size != y_size:
        raise ClipReadError(f"flow_x/ images are {x_size[0]}×{x_size[1]} but flow_y/ {y_size[0]}×{y_size[1]}")
    return x_files, y_files


def _grey(file: Path) -> np.ndarray:
    with Image.open(file) as image:
        if image.mode != "L":
            raise ClipReadError(
                f"{file.parent.name}/{file.name} is a {image.mode} image; flow images are 8-bit grey (0..255 is -bound..bound)"
            )
        return np.asarray(image)


def read_flow_frames(path: Path, indices: Sequence[int] | None = None) -> tuple[list[np.ndarray], int]:
    """Flow frames ``indices`` (all when None) of a flow folder as H×W×2 uint8 (x, y), and the frame count."""
    x_files, y_files = flow_files(path)
    wanted = range(len(x_files)) if indices is None else indices
    if any(not 0 <= i < len(x_files) for i in wanted):
        raise ClipReadError(f"too short: {len(x_files)} flow frames")
    try:
        return [np.stack([_grey(x_files[i]), _grey(y_files[i])], axis=-1) for i in wanted], len(x_files)
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise ClipReadError(f"cannot read flow image ({str(error)[:200]})") from None


def quantise_flow(flow: np.ndarray, bound: float) -> np.ndarray:
    """Displacements (pixels, float) as flow images: [-bound, bound] → 0..255 uint8, clipped."""
    return np.clip(np.rint(flow * (FLOW_ZERO / bound) + FLOW_ZERO), 0, 255).astype(np.uint8)


def dequantise_flow(images: np.ndarray, bound: float) -> np.ndarray:
    """Flow images (uint8) back to displacements in pixels (float32)."""
    return (images.astype(np.float32) - FLOW_ZERO) * (bound / FLOW_ZERO)
