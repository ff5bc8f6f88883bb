"""A disk cache of decoded clips: every frame, resized for the model, as uint8.

Decoding (PNG, JPEG, H.264) and resizing cost more CPU than the rest of a
training example. On a machine with few cores, the DataLoader workers doing it
take that CPU from the model. With a cache, each clip is decoded once, in the
first epoch. Later epochs, and later runs with the same input size, read a
memory-mapped ``.npy`` file. Sampling, cropping, flipping and normalising still
happen per example, so augmentation is unchanged.

An entry is named by a hash of the clip's path, its size and modification times,
and the frame size, channels and modality the model wants (flow computed from an
RGB clip is stored computed, keyed also by its bound). A clip changed between runs, or
another model input size, gets a new entry (a clip is looked at once per process,
so changes during a run are not seen). An unreadable entry is decoded again. Entries
are written to a temporary file and renamed, so workers racing on one clip, or a
killed run, never leave a partial entry behind.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from prernn_cli.errors import UserInputError
from prernn_cli.spec import InputSpec

CACHE_FORMAT = 1  # bump when the stored layout changes

log = logging.getLogger(__name__)


def clip_files(clip: Path) -> list[tuple[str, int, int]]:
    """What a cache entry of ``clip`` is keyed on: each of its files' name, size and modification time."""
    if clip.is_dir():
        return sorted(
            (entry.name, entry.stat().st_size, entry.stat().st_mtime_ns)
            for entry in os.scandir(clip)
            if entry.is_file()
        )
    status = clip.stat()
    return [(clip.name, status.st_size, status.st_mtime_ns)]


def save_entry(entry: Path, array: np.ndarray) -> None:
    """Write a cache entry as ``.npy`` beside it first, then rename it into place (no half-written entry)."""
    temporary = None
    try:
        descriptor, temporary = tempfile.mkstemp(dir=entry.parent, prefix=f".{entry.stem}.", suffix=".npy.tmp")
        with os.fdopen(descriptor, "wb") as handle:
            np.save(handle, array, allow_pickle=False)
        os.replace(temporary, entry)
    except OSError:
        if temporary is not None:
            Path(temporary).unlink(missing_ok=True)
        raise


class FrameCache:
    """Resized uint8 frames ``[N, H', W', C]`` of whole clips, stored under ``root``.

    Args:
        root: the cache folder (created when missing).
        spec: the model's input: frames are resized (shorter side, aspect kept) to its size and channels.
    """

    def __init__(self, root: Path, spec: InputSpec) -> None:
        self.root = Path(root)
        self.spec = spec
        self.root.mkdir(parents=True, exist_ok=True)
        self._keys: dict[Path, str] = {}  # per process: a clip is looked at (stat of every frame) once per run

    @classmethod
    def open(cls, root: Path, spec: InputSpec) -> FrameCache:
        """The cache in ``root`` for a model with input ``spec``; a one-line :class:`UserInputError` when ``root`` cannot be made."""
        try:
            return cls(root, spec)
        except OSError as error:
            raise UserInputError(
                f"--frame-cache {root}: cannot create the folder ({error.strerror}); give a writable folder"
            ) from None

    def _key(self, clip: Path) -> str:
        clip = Path(clip)
        if clip not in self._keys:
            self._keys[clip] = self._identity(clip.resolve())
        return self._keys[clip]

    def _identity(self, clip: Path) -> str:
        entries = clip_files(clip)
        spec = self.spec
        modality = () if spec.modality.value == "rgb" else (spec.modality.value, spec.flow_bound)  # rgb: keys unchanged
        identity = repr((CACHE_FORMAT, str(clip), entries, tuple(spec.size), spec.channels, *modality))
        return hashlib.sha256(identity.encode()).hexdigest()[:32]

    def path_for(self, clip: Path) -> Path:
        """Where the entry of ``clip`` lives (whether or not it exists yet)."""
        return self.root / f"{self._key(clip)}.npy"

    def _fits(self, frames: np.ndarray) -> bool:
        """Whether a stored entry has the layout this cache writes: ``[N ≥ 1, H' ≥ H, W' ≥ W, channels]`` uint8
        (16-bit depth: uint16)."""
        height, width = self.spec.size
        channels = 1 if self.spec.channels == 1 else 3
        if self.spec.modality.value != "rgb":
            channels = self.spec.frame_channels
        deep = self.spec.modality.value == "depth" and frames.dtype == np.uint16
        return (
            (frames.dtype == np.uint8 or deep)
            and frames.ndim == 4
            and frames.shape[0] >= 1
            and frames.shape[1] >= height
            and frames.shape[2] >= width
            and frames.shape[3] == channels
        )

    def frames(self, clip: Path, decode: Callable[[Path], np.ndarray]) -> np.ndarray:
        """All frames of ``clip``, from the cache, or from ``decode(clip)`` (then stored)."""
        entry = self.path_for(clip)
        try:
            cached = np.load(entry, mmap_mode="r", allow_pickle=False)
            if self._fits(cached):
                return cached
        except (OSError, ValueError):  # missing, or unreadable: decode again
            pass
        frames = np.ascontiguousarray(decode(clip))
        if frames.dtype != np.uint16:  # 16-bit depth keeps its precision
            frames = frames.astype(np.uint8, copy=False)
        try:
            save_entry(entry, frames)
        except OSError as error:  # a full disk: go on without this entry, the cache is only an optimisation
            log.warning(
                "frame cache: cannot store %s in %s (%s); it will be decoded again", clip, self.root, error.strerror
            )
        return frames
