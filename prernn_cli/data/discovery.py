"""Finding clips: a clip folder ``DIR/<class>/<clip>`` or a manifest, split into train and val.

A clip is a video file (mp4, avi, mkv, webm, mov; decoded with PyAV) or a folder
of frame images sorted by name. ``DIR/train`` and ``DIR/val`` are used when both
are present, otherwise a deterministic, per-class ``val_fraction`` of the clips is
held out — or, with ``group_by``, a ``val_fraction`` of the clips' groups (whole groups go to
val; :mod:`prernn_cli.data.split_lists`). Manifests (``.csv``/``.jsonl``) are read by
:mod:`prernn_cli.data.manifests`; UCF101/HMDB51 split lists (``split_file``) by
:mod:`prernn_cli.data.split_lists`.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from prernn_cli.data.clips import Clip, DataSplits, holdout
from prernn_cli.data.decoding import VIDEO_SUFFIXES
from prernn_cli.data.manifests import MANIFEST_SUFFIXES, read_manifest
from prernn_cli.data.split_lists import group_holdout, group_pattern, read_split_file
from prernn_cli.errors import DataError, UserInputError
from prernn_cli.spec import Task

logger = logging.getLogger(__name__)


def _is_clip(path: Path) -> bool:
    if path.is_file():
        return path.suffix.lower() in VIDEO_SUFFIXES
    return path.is_dir()


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


def _split_folders(train_dir: Path, val_dir: Path) -> DataSplits:
    """Clips of ``DIR/train/<class>/<clip>`` and ``DIR/val/<class>/<clip>``, which must have the same classes."""
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


def _class_folders_with_holdout(data: Path, val_fraction: float, group_by: re.Pattern | None = None) -> DataSplits:
    """Clips of ``DIR/<class>/<clip>``: a deterministic ``val_fraction`` of each class held out, or of the groups."""
    classes = _class_folders(data)
    if set(classes) <= {"train", "val"} and classes:
        raise DataError(f"{data} has a train or val folder but not both; add the missing one or use DIR/<class>/<clip>")
    _check_classes(classes, data)
    names = tuple(sorted(classes))
    if group_by is not None:
        clips = [Clip(p, label=i) for i, name in enumerate(names) for p in classes[name]]
        train, val = group_holdout(clips, lambda clip: clip.path.name, group_by, val_fraction)
        _warn_classes_without_val(names, val, val_fraction)
        return DataSplits(Task.CLASSIFY, names, train, val, len(names), "folders, grouped")
    train, val = [], []
    for i, name in enumerate(names):
        t, v = holdout(classes[name], val_fraction, salt=name)
        train += [Clip(p, label=i) for p in t]
        val += [Clip(p, label=i) for p in v]
    return DataSplits(Task.CLASSIFY, names, train, val, len(names), "folders")


def _warn_classes_without_val(names: tuple[str, ...], val: list[Clip], val_fraction: float) -> None:
    missing = sorted(set(names) - {names[clip.label] for clip in val})
    if val_fraction > 0 and missing:
        logger.warning("the group holdout left no val clip in %d class(es): %s", len(missing), ", ".join(missing[:5]))


def discover(
    data: Path,
    val_fraction: float = 0.2,
    task: Task | None = None,
    split_file: Path | None = None,
    group_by: str | None = None,
) -> DataSplits:
    """Find the clips under ``data`` (a clip folder or a manifest file) and split them.

    ``split_file``: a UCF101/HMDB51 split list gives the split of the clips under the folder
    ``data``. ``group_by``: a regex naming each clip's group; the holdout then picks whole
    groups (see :mod:`prernn_cli.data.split_lists`).

    Raises :class:`DataError` for an empty folder, a single class, classes that
    differ between ``train`` and ``val``, or an unusable manifest or split list.
    """
    data = Path(data)
    if split_file is not None:
        if group_by is not None:
            raise UserInputError("--group-by and --split-file both choose the split; give one of them")
        if task not in (None, Task.CLASSIFY):
            raise DataError(f"--task {task.value} needs a manifest; split lists give classes only")
        return read_split_file(Path(split_file), data)
    pattern = group_pattern(group_by) if group_by is not None else None
    if not data.exists():
        raise DataError(
            f"data path {data} does not exist; give a clip folder (DIR/<class>/<clip>) or a manifest (.csv/.jsonl)"
        )
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    if data.is_file():
        if data.suffix.lower() not in MANIFEST_SUFFIXES:
            raise DataError(f"{data} is a file but not a manifest; give a .csv or .jsonl manifest or a clip folder")
        return read_manifest(data, val_fraction=val_fraction, task=task, group_by=pattern)
    if task not in (None, Task.CLASSIFY):
        raise DataError(f"--task {task.value} needs a manifest with per-clip targets; a clip folder only gives classes")
    train_dir, val_dir = data / "train", data / "val"
    if train_dir.is_dir() and val_dir.is_dir():
        if pattern is not None:
            logger.warning("--group-by is not used: %s has train and val folders, which fix the split", data)
        return _split_folders(train_dir, val_dir)
    return _class_folders_with_holdout(data, val_fraction, pattern)
