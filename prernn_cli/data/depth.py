"""Depth clips: folders of 8- or 16-bit grey frame images, one depth channel per frame.

A frame's values are scaled to [0, 1] by its bit depth (255 or 65535) when it becomes a
tensor (``preprocessing.to_tensor`` divides by the largest value of the frames' integer
type), so 16-bit depth keeps its precision through resizing and the frame cache. Every
frame of a clip has the bit depth of its first frame. A folder of colour frames is not a
depth clip: the reader says so rather than silently converting it to grey.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from prernn_cli.data.decoding import ClipReadError, frame_folder

#: PIL modes of grey frames, and the integer type their values fit
DEPTH_MODES: dict[str, type] = {
    "L": np.uint8,
    "I;16": np.uint16,
    "I;16L": np.uint16,
    "I;16B": np.uint16,
    "I": np.uint16,  # 16-bit PNGs some writers store as 32-bit integers: values must fit 16 bits
}
MODE_WORDS = {"RGB": "colour", "RGBA": "colour", "P": "palette (colour)", "LA": "grey with alpha", "CMYK": "colour"}


def _frame_type(mode: str, path: Path) -> type:
    """The integer type of a depth frame of PIL ``mode``; :class:`ClipReadError` for a colour frame."""
    if mode not in DEPTH_MODES:
        what = MODE_WORDS.get(mode, f"mode {mode}")
        raise ClipReadError(
            f"{path.name} is a {what} image ({mode}), not a depth frame; "
            "a depth clip is a folder of 8- or 16-bit grey PNG frames (or convert the model with --modality rgb)"
        )
    return DEPTH_MODES[mode]


def _folder(path: Path) -> tuple[tuple[Path, ...], tuple[int, int]]:
    if not Path(path).is_dir():
        raise ClipReadError("a depth clip is a folder of 8- or 16-bit grey PNG frames, not a video file")
    return frame_folder(Path(path))


def depth_bits(path: Path) -> int:
    """Bits per value of a depth clip's frames (8 or 16), read from its first frame's header."""
    files, _ = _folder(path)
    try:
        with Image.open(files[0]) as image:
            return 8 * np.dtype(_frame_type(image.mode, files[0])).itemsize
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise ClipReadError(f"cannot read frame image ({str(error)[:200]})") from None


def _decode(file: Path, dtype: type) -> np.ndarray:
    with Image.open(file) as image:
        if _frame_type(image.mode, file) is not dtype:
            raise ClipReadError(f"{file.name} has another bit depth than the clip's first frame")
        values = np.asarray(image)
    if values.dtype != dtype and values.size and (values.min() < 0 or values.max() > np.iinfo(dtype).max):
        raise ClipReadError(f"{file.name} holds values outside 0..65535, not a 16-bit depth frame")
    return values.astype(dtype)[..., None]


def read_depth_frames(path: Path, indices: Sequence[int] | None = None) -> tuple[list[np.ndarray], int]:
    """Frames ``indices`` (all when None) of a depth folder as H×W×1 uint8 or uint16 arrays, and the frame count."""
    files, _ = _folder(path)
    wanted = range(len(files)) if indices is None else indices
    if any(not 0 <= i < len(files) for i in wanted):
        raise ClipReadError(f"too short: {len(files)} frames")
    dtype = np.uint8 if depth_bits(path) == 8 else np.uint16
    try:
        return [_decode(files[i], dtype) for i in wanted], len(files)
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise ClipReadError(f"cannot read frame image ({str(error)[:200]})") from None
