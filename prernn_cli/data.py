"""Clip data for training and evaluation: discovery, decoding, frame sampling, preprocessing.

Where clips come from
    * a folder ``DIR/<class>/<clip>``, a clip being a video file (mp4, avi, mkv,
      webm, mov; decoded with PyAV) or a folder of frame images sorted by name;
      ``DIR/train`` and ``DIR/val`` are used when present, otherwise a
      deterministic, per-class ``val_fraction`` of the clips is held out;
    * a manifest (``.csv`` with a header, or ``.jsonl``) whose rows give ``path``
      and one of ``label`` (classify), ``targets`` (regress: a ``.npy``/``.csv``
      file of shape N×K, one row per frame of the clip) or ``labels`` (ctc: a
      space-separated string or a JSON list of class names), and optionally
      ``split`` (``train``/``val``). Relative paths are relative to the manifest.

How a clip becomes a training example
    T steps are sampled per clip (:class:`Sampling`): ``uniform`` spreads them
    evenly over the clip, ``random`` draws a random stride and offset (the
    default for training, a temporal augmentation that never reverses time),
    ``dense`` cuts the clip into consecutive windows of T steps (every window is
    one example; for long videos). For a 3D backbone every step is a snippet of
    L consecutive frames (``InputSpec.snippet_length``). A clip shorter than one
    needs is *too short*: it is skipped and reported, like an unreadable one.

Preprocessing follows the model's :class:`~prernn_cli.spec.InputSpec`: the
shorter side is resized to the spec's size, the frame centre-cropped to it,
scaled to [0, 1] and normalised with the spec's mean and std.

Augmentation (training only, on by default, ``augment=False`` turns it off)
    is a random *translation*: the resized frame is padded by 1/8 of its size
    (edge pixels repeated) and a random window of the spec's size is cropped,
    the same window for every frame of a clip. It preserves every label this
    tool trains on, including direction of motion. Horizontal flipping is
    **off by default**: it turns left into right, so it would silently corrupt
    motion-direction or handedness labels. Enable it with ``flip=True`` only
    when labels do not depend on left/right, or give ``flip_pairs`` (class
    names swapped when a clip is flipped, e.g. ``{"left": "right"}``) to make it
    label-aware. Flipping is refused for regression targets (landmark indices
    would need re-ordering).

Batches are ``frames`` ``[B, T, C, H, W]`` (3D: ``[B, T, C, L, H, W]``) float32,
plus the target of the task. Decoding happens in ``DataLoader`` workers; every
random choice of an example is drawn from a generator seeded with
``(seed, epoch, index)`` so results do not depend on the number of workers and a
resumed run sees exactly the data an uninterrupted one would. A clip that fails
to decode is returned as a failure record; the training loop reports it by path
and skips it (or stops under ``strict``). With a
:class:`~prernn_cli.frame_cache.FrameCache`, a clip's frames are decoded and
resized once and read from the cache afterwards; sampling and augmentation are
the same either way.
"""

from __future__ import annotations

import csv
import functools
import json
import logging
import random
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Sequence

import av
import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from prernn_cli.errors import DataError
from prernn_cli.frame_cache import FrameCache
from prernn_cli.spec import InputSpec, Task

logger = logging.getLogger(__name__)

VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mkv", ".webm", ".mov"})
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"})
MANIFEST_SUFFIXES = frozenset({".csv", ".jsonl"})
CTC_BLANK = "<blank>"
#: Padding of the random-translation augmentation, as a fraction of the crop size.
TRANSLATE_FRACTION = 0.125


class Sampling(str, Enum):
    """How the T steps of a clip are chosen."""

    UNIFORM = "uniform"
    RANDOM = "random"
    DENSE = "dense"


class ClipReadError(Exception):
    """A clip cannot be used (unreadable, too short, inconsistent frames). Internal: becomes a skip."""


@dataclass(frozen=True)
class Clip:
    """One example: a clip and its target. ``start`` is set for dense windows."""

    path: Path
    label: int | None = None  # classify
    targets: Path | None = None  # regress: N x K file
    sequence: tuple[int, ...] | None = None  # ctc: class indices (blank = 0 excluded)
    start: int | None = None  # first frame of a dense window
    num_frames: int | None = None  # known when probed


@dataclass
class DataSplits:
    """Clips of the train and val splits, and what their labels mean."""

    task: Task
    class_names: tuple[str, ...]  # classify: classes; ctc: <blank> first; regress: ()
    train: list[Clip]
    val: list[Clip]
    num_outputs: int  # K the model's head must have
    source: str  # "folders", "split folders", "manifest"

    def split(self, name: str) -> list[Clip]:
        if name not in ("train", "val"):
            raise DataError(f"unknown split {name!r}; use train or val")
        return self.train if name == "train" else self.val


# ---------------------------------------------------------------- discovery


def _is_clip(path: Path) -> bool:
    if path.is_file():
        return path.suffix.lower() in VIDEO_SUFFIXES
    return path.is_dir()


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


def _class_folders(root: Path) -> dict[str, list[Path]]:
    classes: dict[str, list[Path]] = {}
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        clips = sorted(p for p in class_dir.iterdir() if not p.name.startswith(".") and _is_clip(p))
        if clips:
            classes[class_dir.name] = clips
    return classes


def _check_classes(classes: dict[str, list[Path]], root: Path) -> None:
    if not classes:
        raise DataError(
            f"no clips found in {root}; expected {root}/<class>/<clip> with clips as video files "
            f"({', '.join(sorted(VIDEO_SUFFIXES))}) or folders of frame images"
        )
    if len(classes) < 2:
        only = next(iter(classes))
        raise DataError(f"only one class ({only!r}) in {root}; classification needs at least two class folders")


def _holdout(items: Sequence, fraction: float, salt: str) -> tuple[list, list]:
    """Deterministic split: a seeded shuffle per group (independent of the training seed)."""
    items = list(items)
    if len(items) < 2 or fraction <= 0:
        return items, []
    order = list(range(len(items)))
    random.Random(f"prernn-split:{salt}").shuffle(order)
    n_val = min(len(items) - 1, max(1, round(fraction * len(items))))
    val_idx = set(order[:n_val])
    return [x for i, x in enumerate(items) if i not in val_idx], [x for i, x in enumerate(items) if i in val_idx]


def discover(data: Path, val_fraction: float = 0.2, task: Task | None = None) -> DataSplits:
    """Find the clips under ``data`` (a clip folder or a manifest file) and split them.

    Raises :class:`DataError` for an empty folder, a single class, classes that
    differ between ``train`` and ``val``, or an unusable manifest.
    """
    data = Path(data)
    if not data.exists():
        raise DataError(f"data path {data} does not exist; give a clip folder (DIR/<class>/<clip>) or a manifest (.csv/.jsonl)")
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    if data.is_file():
        if data.suffix.lower() not in MANIFEST_SUFFIXES:
            raise DataError(f"{data} is a file but not a manifest; give a .csv or .jsonl manifest or a clip folder")
        return read_manifest(data, val_fraction=val_fraction, task=task)
    if task not in (None, Task.CLASSIFY):
        raise DataError(f"--task {task.value} needs a manifest with per-clip targets; a clip folder only gives classes")

    train_dir, val_dir = data / "train", data / "val"
    if train_dir.is_dir() and val_dir.is_dir():
        train_classes = _class_folders(train_dir)
        val_classes = _class_folders(val_dir)
        _check_classes(train_classes, train_dir)
        if not val_classes:
            raise DataError(f"no clips found in {val_dir}; put validation clips in {val_dir}/<class>/<clip> or remove it")
        if set(train_classes) != set(val_classes):
            only_train = sorted(set(train_classes) - set(val_classes))
            only_val = sorted(set(val_classes) - set(train_classes))
            raise DataError(
                f"classes differ between {train_dir} and {val_dir}: only in train {only_train}, only in val {only_val}; "
                "use the same class folders in both"
            )
        names = tuple(sorted(train_classes))
        index = {name: i for i, name in enumerate(names)}
        train = [Clip(p, label=index[c]) for c in names for p in train_classes[c]]
        val = [Clip(p, label=index[c]) for c in names for p in val_classes[c]]
        return DataSplits(Task.CLASSIFY, names, train, val, len(names), "split folders")

    classes = _class_folders(data)
    if set(classes) <= {"train", "val"} and classes:
        raise DataError(f"{data} has a train or val folder but not both; add the missing one or use DIR/<class>/<clip>")
    _check_classes(classes, data)
    names = tuple(sorted(classes))
    train, val = [], []
    for i, name in enumerate(names):
        t, v = _holdout(classes[name], val_fraction, salt=name)
        train += [Clip(p, label=i) for p in t]
        val += [Clip(p, label=i) for p in v]
    return DataSplits(Task.CLASSIFY, names, train, val, len(names), "folders")


def _read_manifest_rows(path: Path) -> list[dict]:
    rows: list[dict] = []
    try:
        if path.suffix.lower() == ".csv":
            with path.open(newline="") as handle:
                reader = csv.DictReader(handle)
                if not reader.fieldnames or "path" not in reader.fieldnames:
                    raise DataError(f"manifest {path} needs a header row with a 'path' column (and label, targets or labels)")
                rows = [dict(row) for row in reader]
        else:
            for number, line in enumerate(path.read_text().splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    raise DataError(f"manifest {path} line {number} is not JSON ({error.msg}); write one JSON object per line") from None
                if not isinstance(row, dict) or "path" not in row:
                    raise DataError(f"manifest {path} line {number} has no 'path' key; each line needs path and label/targets/labels")
                rows.append(row)
    except UnicodeDecodeError:
        raise DataError(f"manifest {path} is not a text file; give a UTF-8 .csv or .jsonl manifest") from None
    if not rows:
        raise DataError(f"manifest {path} lists no clips; add rows with path and label/targets/labels")
    return rows


def _infer_task(rows: list[dict], path: Path) -> Task:
    keys = set().union(*(row.keys() for row in rows))
    found = [t for t, key in ((Task.CLASSIFY, "label"), (Task.REGRESS, "targets"), (Task.CTC, "labels")) if key in keys]
    if len(found) != 1:
        raise DataError(f"manifest {path} must have exactly one of the columns label, targets, labels (found {[t.value for t in found] or 'none'}); or pass --task")
    return found[0]


def _sequence_tokens(value) -> list[str]:
    if isinstance(value, list):
        return [str(v) for v in value]
    return str(value).split()


def read_manifest(path: Path, val_fraction: float = 0.2, task: Task | None = None) -> DataSplits:
    """Read a CSV/JSONL manifest (see the module docstring)."""
    path = Path(path)
    rows = _read_manifest_rows(path)
    task = task or _infer_task(rows, path)
    key = {Task.CLASSIFY: "label", Task.REGRESS: "targets", Task.CTC: "labels"}[task]
    base = path.parent
    missing: list[str] = []
    for number, row in enumerate(rows, start=1):
        if row.get(key) in (None, ""):
            raise DataError(f"manifest {path} row {number} has no {key!r} value; --task {task.value} needs it on every row")
        clip_path = Path(str(row["path"]))
        row["_path"] = clip_path if clip_path.is_absolute() else base / clip_path
        if not row["_path"].exists():
            missing.append(str(row["path"]))
        if task is Task.REGRESS:
            target = Path(str(row["targets"]))
            row["_targets"] = target if target.is_absolute() else base / target
            if not row["_targets"].exists():
                missing.append(str(row["targets"]))
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise DataError(f"manifest {path} points to missing files: {', '.join(missing[:3])}{more}; fix the paths (relative to the manifest)")

    if task is Task.CLASSIFY:
        names = tuple(sorted({str(row["label"]) for row in rows}))
        if len(names) < 2:
            raise DataError(f"manifest {path} has only one class ({names[0]!r}); classification needs at least two")
        index = {n: i for i, n in enumerate(names)}
        make = lambda row: Clip(row["_path"], label=index[str(row["label"])])  # noqa: E731
        num_outputs = len(names)
    elif task is Task.CTC:
        tokens = sorted({tok for row in rows for tok in _sequence_tokens(row["labels"])})
        if CTC_BLANK in tokens:
            raise DataError(f"manifest {path} uses the reserved label {CTC_BLANK!r}; rename that class")
        names = (CTC_BLANK, *tokens)
        index = {n: i for i, n in enumerate(names)}
        make = lambda row: Clip(row["_path"], sequence=tuple(index[t] for t in _sequence_tokens(row["labels"])))  # noqa: E731
        num_outputs = len(names)
    else:
        names = ()
        widths = set()
        for row in rows:
            targets = load_targets(row["_targets"])
            widths.add(targets.shape[1])
        if len(widths) != 1:
            raise DataError(f"target files in {path} have different widths {sorted(widths)}; every file must be N x K with the same K")
        num_outputs = widths.pop()
        make = lambda row: Clip(row["_path"], targets=row["_targets"])  # noqa: E731

    has_split = any(str(row.get("split", "")).strip() for row in rows)
    if has_split:
        bad = sorted({str(row.get("split")) for row in rows} - {"train", "val"})
        if bad:
            raise DataError(f"manifest {path} has split values {bad}; use train or val on every row")
        train = [make(r) for r in rows if r["split"] == "train"]
        val = [make(r) for r in rows if r["split"] == "val"]
    else:
        groups: dict[str, list[dict]] = {}
        for row in rows:
            groups.setdefault(str(row["label"]) if task is Task.CLASSIFY else "", []).append(row)
        train, val = [], []
        for name in sorted(groups):
            t, v = _holdout(groups[name], val_fraction, salt=name)
            train += [make(r) for r in t]
            val += [make(r) for r in v]
    if not train:
        raise DataError(f"manifest {path} has no training rows; mark some rows split=train")
    if task is Task.CLASSIFY and val:
        train_labels = {c.label for c in train}
        val_labels = {c.label for c in val}
        if train_labels != val_labels and has_split:
            only_val = sorted(names[i] for i in val_labels - train_labels)
            only_train = sorted(names[i] for i in train_labels - val_labels)
            raise DataError(f"classes differ between train and val rows of {path}: only in train {only_train}, only in val {only_val}")
    return DataSplits(task, names, train, val, num_outputs, "manifest")


def load_targets(path: Path) -> np.ndarray:
    """Per-frame regression targets, N x K float32 (``.npy`` or ``.csv`` without header)."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".npy":
            array = np.load(path, allow_pickle=False)
        elif path.suffix.lower() == ".csv":
            array = np.loadtxt(path, delimiter=",", dtype=np.float32, ndmin=2)
        else:
            raise DataError(f"target file {path} must be .npy or .csv (N frames x K values)")
    except (ValueError, OSError) as error:
        raise DataError(f"target file {path} cannot be read ({str(error).splitlines()[0]}); write N x K numbers") from None
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise DataError(f"target file {path} has shape {tuple(array.shape)}; it must be 2-D, N frames x K values")
    return array.astype(np.float32, copy=False)


# ---------------------------------------------------------------- decoding


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


def _short(error: BaseException) -> str:
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    return text[:200]


def read_frames(path: Path, indices: Sequence[int] | None = None) -> tuple[list[np.ndarray], int]:
    """Decode frames ``indices`` (all when None) of a clip as H×W×3 uint8 RGB arrays.

    Returns the frames and the clip's frame count. Raises :class:`ClipReadError`
    for an unreadable clip, frames of different sizes, or indices past the end.
    """
    path = Path(path)
    if path.is_dir():
        files, size = frame_folder(path)
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
                if last is not None and i >= last:
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


# ---------------------------------------------------------------- sampling


def frames_needed(steps: int, snippet: int) -> int:
    """The shortest clip that gives ``steps`` distinct steps of ``snippet`` frames."""
    return snippet + steps - 1


def step_starts(num_frames: int, steps: int, snippet: int, mode: Sampling, rng: random.Random | None = None, start: int | None = None) -> list[int]:
    """First frame of each of the ``steps`` steps (each step covers ``snippet`` frames).

    Raises :class:`ClipReadError` when the clip is too short.
    """
    if num_frames < frames_needed(steps, snippet):
        raise ClipReadError(f"too short: {num_frames} frames, needs at least {frames_needed(steps, snippet)} for {steps} steps of {snippet}")
    span = num_frames - snippet  # last possible start
    if mode is Sampling.DENSE:
        first = start or 0
        return [first + i * snippet for i in range(steps)]
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


def dense_windows(clips: Sequence[Clip], steps: int, snippet: int, hop: int | None = None) -> tuple[list[Clip], list[tuple[Path, str]]]:
    """Cut every clip into windows of ``steps`` consecutive steps (``hop`` frames apart; default no overlap).

    Returns the windows and the clips skipped as unreadable or too short.
    """
    window = steps * snippet
    hop = hop or window
    out: list[Clip] = []
    skipped: list[tuple[Path, str]] = []
    for clip in clips:
        try:
            n = count_frames(clip.path)
        except ClipReadError as error:
            skipped.append((clip.path, str(error)))
            continue
        if n < window:
            skipped.append((clip.path, f"too short: {n} frames, a dense window needs {window}"))
            continue
        for begin in range(0, n - window + 1, hop):
            out.append(Clip(clip.path, clip.label, clip.targets, clip.sequence, start=begin, num_frames=n))
    return out, skipped


# ---------------------------------------------------------------- preprocessing


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


def flip_pairs_from_names(pairs: dict[str, str], class_names: Sequence[str]) -> tuple[tuple[int, int], ...]:
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
    """Frames (H×W×3 uint8) resized, shorter side first, to cover the model's size: ``[N, H', W', C]`` uint8."""
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
    if flip:
        arrays = arrays[:, :, ::-1]
    tensor = torch.from_numpy(np.ascontiguousarray(arrays)).permute(0, 3, 1, 2).float().div_(255.0)
    if spec.channels not in (1, 3):
        raise DataError(f"the model expects {spec.channels} input channels; clips give RGB (3) or gray (1)")
    mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32).view(1, -1, 1, 1)
    return tensor.sub_(mean).div_(std)


def preprocess(frames: Sequence[np.ndarray], spec: InputSpec, flip: bool = False, rng: random.Random | None = None) -> Tensor:
    """Resize, crop, normalise ``frames`` (H×W×3 uint8) into ``[N, C, H, W]`` float32 (:func:`resize_frames`, :func:`to_tensor`)."""
    return to_tensor(resize_frames(frames, spec), spec, flip=flip, rng=rng)


# ---------------------------------------------------------------- whole clips as model steps (stream, export)


def probe_clip(path: Path) -> tuple[int, int, int, int]:
    """``(frames, channels, height, width)`` of a video file or frame folder, read from headers."""
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


def read_clip_steps(path: Path, input_spec: InputSpec, *, resize: bool = False) -> tuple[np.ndarray, int]:
    """Decode a clip and preprocess it into model steps ``[N, *step]`` float32, as training does.

    A 2D model takes one frame per step; a 3D model consecutive, non-overlapping
    snippets of L frames (leftover frames at the end are dropped). Frames must already
    have the model's size and channels unless ``resize`` (shorter side resized,
    centre crop, colour converted: what ``prernn train``/``evaluate`` do).

    Returns the steps and the clip's frame count.

    Raises:
        DataError: unreadable clip, frames of the wrong size/channels, a clip shorter than one step.
    """
    path = Path(path)
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
        frames, count = read_frames(path)
    except ClipReadError as error:
        raise DataError(f"cannot read {path}: {error}") from None
    tensor = preprocess(frames, input_spec)  # [N, C, H, W]
    if snippet > 1:
        usable = (tensor.shape[0] // snippet) * snippet
        c, h, w = tensor.shape[1:]
        tensor = tensor[:usable].view(usable // snippet, snippet, c, h, w).permute(0, 2, 1, 3, 4).contiguous()
    return tensor.numpy(), count


# ---------------------------------------------------------------- dataset


@dataclass
class ClipDataset(Dataset):
    """Clips → ``(frames, target)`` examples, decoded lazily (in DataLoader workers).

    ``__getitem__`` returns a dict with ``frames``, ``index`` and the task's
    target (``label`` / ``targets`` / ``sequence``), or ``{"error": ..., "path": ...}``
    when the clip cannot be used: the loop decides whether to skip or stop.
    """

    clips: list[Clip]
    spec: InputSpec
    task: Task
    steps: int
    sampling: Sampling = Sampling.UNIFORM
    augment: Augment | None = None
    seed: int = 0
    epoch: int = 0
    frame_cache: FrameCache | None = None
    _warned: set = field(default_factory=set, repr=False)

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise DataError(f"--steps must be at least 1, got {self.steps}")
        if self.augment and self.augment.flip and self.task is Task.REGRESS:
            raise DataError("--flip is not supported with --task regress (targets would need mirroring); drop --flip")

    @property
    def snippet(self) -> int:
        return self.spec.frames_per_step

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.clips)

    def _rng(self, index: int) -> random.Random:
        return random.Random(f"{self.seed}:{self.epoch}:{index}")

    def __getitem__(self, index: int) -> dict:
        clip = self.clips[index]
        try:
            return self._load(index, clip)
        except ClipReadError as error:
            return {"error": str(error), "path": str(clip.path), "index": index}

    def _load(self, index: int, clip: Clip) -> dict:
        rng = self._rng(index) if self.augment is not None else None
        snippet = self.snippet
        step_rng = rng if self.sampling is Sampling.RANDOM else None

        def starts_in(num_frames: int) -> list[int]:
            if clip.start is not None:
                return step_starts(num_frames, self.steps, snippet, Sampling.DENSE, start=clip.start)
            return step_starts(num_frames, self.steps, snippet, self.sampling, rng=step_rng)

        if self.frame_cache is not None:  # every frame decoded and resized once, then read from the cache
            resized = self.frame_cache.frames(clip.path, lambda path: resize_frames(read_frames(path)[0], self.spec))
            n = resized.shape[0]
            starts = starts_in(n)
            arrays = resized[[s + j for s in starts for j in range(snippet)]]
        else:
            if clip.start is not None or clip.path.is_dir():  # decode only the frames used
                n = clip.num_frames if clip.num_frames is not None else count_frames(clip.path)
                starts = starts_in(n)
                frames, n = read_frames(clip.path, [s + j for s in starts for j in range(snippet)])
            else:  # video: one decoding pass
                frames, n = read_frames(clip.path)
                starts = starts_in(n)
                frames = [frames[s + j] for s in starts for j in range(snippet)]
            arrays = resize_frames(frames, self.spec)
        flip = False
        if self.augment is not None and self.augment.flip and rng is not None:
            flip = rng.random() < 0.5
        crop_rng = rng if (self.augment is not None and self.augment.translate) else None
        tensor = to_tensor(arrays, self.spec, flip=flip, rng=crop_rng)  # [T*L, C, H, W]
        if snippet > 1:
            c, h, w = tensor.shape[1:]
            tensor = tensor.view(self.steps, snippet, c, h, w).permute(0, 2, 1, 3, 4).contiguous()  # T, C, L, H, W
        item: dict = {"frames": tensor, "index": index}
        if self.task is Task.CLASSIFY:
            item["label"] = self.augment.swap(clip.label) if flip else clip.label
        elif self.task is Task.CTC:
            sequence = clip.sequence or ()
            if flip:
                sequence = tuple(self.augment.swap(s) for s in sequence)
            item["sequence"] = torch.tensor(sequence, dtype=torch.long)
        else:
            targets = load_targets(clip.targets) if clip.targets else None
            if targets is None or targets.shape[0] != n:
                shape = None if targets is None else tuple(targets.shape)
                raise ClipReadError(f"targets {clip.targets} have shape {shape} but the clip has {n} frames")
            # the target of a step is its last frame (for a 2D step: the frame itself)
            item["targets"] = torch.from_numpy(targets[[s + snippet - 1 for s in starts]].copy())
        return item


def collate(items: list[dict]) -> dict:
    """Stack the usable examples; keep the failures as ``skipped`` (path, reason) pairs."""
    good = [it for it in items if "error" not in it]
    batch: dict = {"skipped": [(it["path"], it["error"]) for it in items if "error" in it]}
    if not good:
        batch["size"] = 0
        return batch
    batch["size"] = len(good)
    batch["frames"] = torch.stack([it["frames"] for it in good])
    batch["index"] = torch.tensor([it["index"] for it in good], dtype=torch.long)
    if "label" in good[0]:
        batch["label"] = torch.tensor([it["label"] for it in good], dtype=torch.long)
    if "targets" in good[0]:
        batch["targets"] = torch.stack([it["targets"] for it in good])
    if "sequence" in good[0]:
        batch["sequence"] = torch.cat([it["sequence"] for it in good])
        batch["sequence_lengths"] = torch.tensor([len(it["sequence"]) for it in good], dtype=torch.long)
    return batch


def check_targets(splits: DataSplits) -> None:
    """Eagerly validate regression target files against their clips' frame counts (one-line DataError)."""
    if splits.task is not Task.REGRESS:
        return
    for clip in [*splits.train, *splits.val]:
        targets = load_targets(clip.targets)
        try:
            n = count_frames(clip.path)
        except ClipReadError:
            continue  # reported as a skip when loaded
        if targets.shape[0] != n:
            raise DataError(f"targets {clip.targets} have {targets.shape[0]} rows but clip {clip.path} has {n} frames; give one row per frame (N x K)")


def describe(splits: DataSplits) -> dict:
    """A small JSON-able summary of the data."""
    return {
        "task": splits.task.value,
        "source": splits.source,
        "classes": list(splits.class_names),
        "train_clips": len(splits.train),
        "val_clips": len(splits.val),
        "outputs": splits.num_outputs,
    }


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


__all__ = [
    "Task", "Sampling", "Clip", "DataSplits", "Augment", "ClipDataset", "ClipReadError",
    "discover", "read_manifest", "load_targets", "read_frames", "count_frames", "frame_folder", "step_starts",
    "dense_windows", "resize_frames", "to_tensor", "preprocess", "collate", "check_targets", "describe", "parse_flip_pairs",
    "flip_pairs_from_names", "probe_clip", "read_clip_steps",
]
