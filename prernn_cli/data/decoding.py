"""Decoding clips into frames: video files (PyAV) and folders of frame images sorted by name.

Problems with one clip (unreadable, too short, frames of different sizes) raise
:class:`ClipReadError`, which the dataset turns into a reported skip; problems the
user must fix (a missing path) raise :class:`~prernn_cli.errors.DataError`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import av
import numpy as np
from PIL import Image

from prernn_cli.errors import DataError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"})
VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mkv", ".webm", ".mov"})


class ClipReadError(Exception):
    """A clip cannot be used (unreadable, too short, inconsistent frames). Internal: becomes a skip."""


def _short(error: BaseException) -> str:
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    return text[:200]


def _frame_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


@functools.lru_cache(maxsize=65536)
def _frame_folder(folder: Path, mtime_ns: int) -> tuple[tuple[Path, ...], tuple[int, int]]:
    """A frame folder's image files and their one size, checked once per process (and again when the folder changes).

    Raises :class:`ClipReadError` for an empty folder or frames of different sizes.
    """
    files = _frame_files(folder)
    if not files:
        raise ClipReadError(f"folder holds no frame images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    sizes = set()
    try:
        for file in files:  # header reads only: cheap, and catches a mixed folder
            with Image.open(file) as image:
                sizes.add(image.size)
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise ClipReadError(f"cannot read frame image ({_short(error)})") from None
    if len(sizes) > 1:
        raise ClipReadError(f"frames of different sizes {sorted(sizes)[:3]} in one folder")
    return tuple(files), sizes.pop()


def frame_folder(folder: Path) -> tuple[tuple[Path, ...], tuple[int, int]]:
    """The image files of a frame folder, sorted by name, and their size ``(width, height)``."""
    folder = Path(folder)
    return _frame_folder(folder, folder.stat().st_mtime_ns)


def count_frames(path: Path) -> int:
    """Number of frames in a clip (decodes a video when its header has no count)."""
    path = Path(path)
    if path.is_dir():
        return len(frame_folder(path)[0])
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            if stream.frames:
                return int(stream.frames)
            return sum(1 for _ in container.decode(stream))
    except (av.error.FFmpegError, IndexError, OSError) as error:
        raise ClipReadError(f"cannot read video ({_short(error)})") from None


def read_frames(path: Path, indices: Sequence[int] | None = None) -> tuple[list[np.ndarray], int]:
    """Decode frames ``indices`` (all when None) of a clip as H×W×3 uint8 RGB arrays.

    Returns the frames and the clip's frame count. Raises :class:`ClipReadError`
    for an unreadable clip, frames of different sizes, or indices past the end.
    """
    path = Path(path)
    if path.is_dir():
        return _read_folder_frames(path, indices)
    return _read_video_frames(path, indices)


def _read_folder_frames(folder: Path, indices: Sequence[int] | None) -> tuple[list[np.ndarray], int]:
    files, size = frame_folder(folder)
    wanted = range(len(files)) if indices is None else indices
    if any(i >= len(files) for i in wanted):
        raise ClipReadError(f"too short: {len(files)} frames")
    frames = []
    try:
        for i in wanted:
            with Image.open(files[i]) as image:
                if image.size != size:  # rewritten since the folder was checked
                    raise ClipReadError(f"frames of different sizes {sorted({size, image.size})} in one folder")
                frames.append(np.asarray(image.convert("RGB")))
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise ClipReadError(f"cannot read frame image ({_short(error)})") from None
    return frames, len(files)


def _read_video_frames(path: Path, indices: Sequence[int] | None) -> tuple[list[np.ndarray], int]:
    wanted_set = None if indices is None else set(indices)
    last = None if indices is None else (max(indices) if len(indices) else -1)
    decoded: dict[int, np.ndarray] = {}
    count = 0
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for count, frame in enumerate(container.decode(stream), start=1):
                i = count - 1
                if wanted_set is None or i in wanted_set:
                    decoded[i] = frame.to_ndarray(format="rgb24")
                if last is not None and i >= last:  # decode no further than the last frame wanted
                    break
    except (av.error.FFmpegError, IndexError, OSError, ValueError) as error:
        raise ClipReadError(f"cannot decode video ({_short(error)})") from None
    if count == 0:
        raise ClipReadError("video has no frames")
    wanted = range(count) if indices is None else indices
    if any(i not in decoded for i in wanted):
        raise ClipReadError(f"too short: {count} frames")
    shapes = {decoded[i].shape for i in wanted}
    if len(shapes) > 1:
        raise ClipReadError(f"frames of different sizes {sorted(shapes)[:3]}")
    return [decoded[i] for i in wanted], count


def probe_clip(path: Path) -> tuple[int, int, int, int]:
    """``(frames, channels, height, width)`` of a video file or frame folder, read from headers.

    Raises :class:`~prernn_cli.errors.DataError` for a missing or unreadable clip.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path} does not exist; give a video file or a folder of frame images")
    try:
        if path.is_dir():
            files, (width, height) = frame_folder(path)
            with Image.open(files[0]) as image:
                bands = 3 if image.mode == "P" else len(image.getbands())
            return len(files), bands, height, width
        count = count_frames(path)

        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            pix_fmt = stream.codec_context.pix_fmt or ""
            bands = 1 if pix_fmt.startswith("gray") else 3
            return count, bands, stream.codec_context.height, stream.codec_context.width
    except ClipReadError as error:
        raise DataError(f"cannot read {path}: {error}") from None
