"""Frames to model input: resizing, cropping, normalising, and train-time augmentation.

Preprocessing follows the model's :class:`~prernn_cli.spec.InputSpec`: the
shorter side is resized to the spec's size, the frame centre-cropped to it,
scaled to [0, 1] and normalised with the spec's mean and std.

Augmentation (training only, on by default, ``augment=False`` turns it off)
    is a random *translation*: the resized frame is padded by 1/8 of its size
    (edge pixels repeated) and a random window of the spec's size is cropped,
    the same window for every frame of a clip. It preserves class and CTC
    labels, including direction of motion; training turns it off for
    regression, whose targets (landmarks, positions) are often image
    coordinates that a shift would falsify. Horizontal flipping is
    **off by default**: it turns left into right, so it would silently corrupt
    motion-direction or handedness labels. Enable it with ``flip=True`` only
    when labels do not depend on left/right, or give ``flip_pairs`` (class
    names swapped when a clip is flipped, e.g. ``{"left": "right"}``) to make it
    label-aware. Flipping is refused for regression targets (landmark indices
    would need re-ordering).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from prernn_cli.data.decoding import ClipReadError, probe_clip
from prernn_cli.data.modalities import check_clip, count_clip_frames, probe_frame_size, read_clip_frames
from prernn_cli.data.planes import resize_planes
from prernn_cli.data.sampling import spec_steps
from prernn_cli.errors import DataError
from prernn_cli.spec import InputSpec, Modality

#: Padding of the random-translation augmentation, as a fraction of the crop size.
TRANSLATE_FRACTION = 0.125


@dataclass(frozen=True)
class Augment:
    """Train-time augmentation (see the module docstring for why flip is opt-in)."""

    translate: bool = True
    flip: bool = False
    flip_pairs: tuple[tuple[int, int], ...] = ()  # class indices swapped when flipped

    def swap(self, label: int) -> int:
        for a, b in self.flip_pairs:
            if label == a:
                return b
            if label == b:
                return a
        return label


def parse_flip_pairs(text: str | None) -> dict[str, str]:
    """``"left:right,up:down"`` → ``{"left": "right", "up": "down"}``."""
    if not text:
        return {}
    pairs = {}
    for part in text.split(","):
        if ":" not in part:
            raise DataError(f"--flip-pairs entry {part!r} must be A:B (class names swapped by a horizontal flip)")
        a, b = (s.strip() for s in part.split(":", 1))
        pairs[a] = b
    return pairs


def flip_pairs_from_names(pairs: dict[str, str], class_names: Sequence[str]) -> tuple[tuple[int, int], ...]:
    """Class-name pairs → the class-index pairs of :attr:`Augment.flip_pairs`; an unknown name raises :class:`DataError`."""
    index = {name: i for i, name in enumerate(class_names)}
    out = []
    for a, b in pairs.items():
        for name in (a, b):
            if name not in index:
                raise DataError(f"flip pair names unknown class {name!r}; classes are {list(class_names)}")
        out.append((index[a], index[b]))
    return tuple(out)


def _resize_shorter(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    height, width = size
    w, h = image.size
    scale = max(height / h, width / w)
    new = (max(width, round(w * scale)), max(height, round(h * scale)))
    if new != (w, h):
        image = image.resize(new, Image.BILINEAR)
    return image


def resize_frames(frames: Sequence[np.ndarray], spec: InputSpec) -> np.ndarray:
    """Frames (H×W×3 uint8) resized, shorter side first, to cover the model's size: ``[N, H', W', C]`` uint8.

    Depth and flow frames (H×W×C, uint8 or uint16) keep their channels and integer type.
    """
    if spec.modality is not Modality.RGB:
        return resize_planes(frames, spec.size)
    mode = "L" if spec.channels == 1 else "RGB"
    images = [_resize_shorter(Image.fromarray(f).convert(mode), spec.size) for f in frames]
    arrays = np.stack([np.asarray(im, dtype=np.uint8) for im in images])  # N,H',W'(,C)
    return arrays[..., None] if arrays.ndim == 3 else arrays


def to_tensor(arrays: np.ndarray, spec: InputSpec, flip: bool = False, rng: random.Random | None = None) -> Tensor:
    """Crop and normalise resized frames ``[N, H', W', C]`` uint8 into ``[N, C, H, W]`` float32.

    ``rng`` given: a random translation crop (same for every frame); else centre crop.
    """
    height, width = spec.size
    _, h, w, _ = arrays.shape
    if rng is not None:
        pad = max(1, round(TRANSLATE_FRACTION * min(height, width)))
        arrays = np.pad(arrays, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="edge")
        top = rng.randint(0, h + 2 * pad - height)
        left = rng.randint(0, w + 2 * pad - width)
    else:
        top, left = (h - height) // 2, (w - width) // 2
    arrays = arrays[:, top : top + height, left : left + width]
    scale = float(np.iinfo(arrays.dtype).max)  # 8- or 16-bit values to [0, 1]
    if flip:
        arrays = arrays[:, :, ::-1]
        if spec.modality is Modality.FLOW:  # a mirrored flow field points the other way along x
            arrays = np.concatenate([255 - arrays[..., :1], arrays[..., 1:]], axis=-1)
    arrays = np.ascontiguousarray(arrays, dtype=np.uint8 if arrays.dtype == np.uint8 else np.float32)
    tensor = torch.from_numpy(arrays).permute(0, 3, 1, 2).float().div_(scale)
    if spec.modality is Modality.RGB and spec.channels not in (1, 3):
        raise DataError(f"the model expects {spec.channels} input channels; clips give RGB (3) or gray (1)")
    channels = spec.frame_channels  # a flow stack repeats one frame's (x, y) statistics
    mean = torch.tensor(spec.mean[:channels], dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(spec.std[:channels], dtype=torch.float32).view(1, -1, 1, 1)
    return tensor.sub_(mean).div_(std)


def preprocess(
    frames: Sequence[np.ndarray], spec: InputSpec, flip: bool = False, rng: random.Random | None = None
) -> Tensor:
    """Resize, crop, normalise ``frames`` (H×W×3 uint8) into ``[N, C, H, W]`` float32 (:func:`resize_frames`, :func:`to_tensor`)."""
    return to_tensor(resize_frames(frames, spec), spec, flip=flip, rng=rng)


def read_clip_steps(path: Path, input_spec: InputSpec, *, resize: bool = False) -> tuple[np.ndarray, int]:
    """Decode a whole clip and preprocess it into model steps ``[N, *step]`` float32, as training does (stream, export).

    A 2D model takes one frame per step; a 3D model consecutive, non-overlapping
    snippets of L frames (leftover frames at the end are dropped). Frames must already
    have the model's size and channels unless ``resize`` (shorter side resized,
    centre crop, colour converted: what ``prernn train``/``evaluate`` do).

    Returns the steps and the clip's frame count.

    Raises:
        DataError: unreadable clip, frames of the wrong size/channels, a clip shorter than one step.
    """
    path = Path(path)
    if input_spec.modality is not Modality.RGB:
        return _read_modality_steps(path, input_spec, resize)
    count, channels, height, width = probe_clip(path)
    want_h, want_w = input_spec.size
    if not resize and (channels, height, width) != (input_spec.channels, want_h, want_w):
        raise DataError(
            f"{path} has {channels}×{height}×{width} frames (C×H×W) but the model expects {input_spec.channels}×{want_h}×{want_w}; "
            "give frames of that size, or pass --resize to resize and centre-crop them"
        )
    snippet = input_spec.frames_per_step
    if count < snippet:
        raise DataError(f"{path} has {count} frames; one step of this model is a snippet of {snippet}")
    try:
        frames, count = read_clip_frames(path, input_spec)
    except ClipReadError as error:
        raise DataError(f"cannot read {path}: {error}") from None
    steps = spec_steps(preprocess(frames, input_spec), input_spec)  # [N, C, H, W] or [N, C, L, H, W]
    return steps.numpy(), count


def _read_modality_steps(path: Path, input_spec: InputSpec, resize: bool) -> tuple[np.ndarray, int]:
    """:func:`read_clip_steps` for depth and flow clips (a flow clip's count is its flow frames)."""
    if not path.exists():
        raise DataError(f"{path} does not exist; give a frame folder or a video file")
    check_clip(path, input_spec)
    height, width = probe_frame_size(path, input_spec)
    if not resize and (height, width) != tuple(input_spec.size):
        raise DataError(
            f"{path} has {height}×{width} frames but the model expects {input_spec.size[0]}×{input_spec.size[1]}; "
            "give frames of that size, or pass --resize to resize and centre-crop them"
        )
    try:
        count = count_clip_frames(path, input_spec)
        if count < input_spec.frames_per_step:
            raise DataError(f"{path} has {count} frames; one step of this model takes {input_spec.frames_per_step}")
        frames, count = read_clip_frames(path, input_spec)
    except ClipReadError as error:
        raise DataError(f"cannot read {path}: {error}") from None
    return spec_steps(preprocess(frames, input_spec), input_spec).numpy(), count
