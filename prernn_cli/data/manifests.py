"""Manifests: a ``.csv`` (with a header) or ``.jsonl`` file listing clips and their targets.

Every row gives ``path`` and one of ``label`` (classify), ``targets`` (regress: a
``.npy``/``.csv`` file of shape N×K, one row per frame of the clip) or ``labels``
(ctc: a space-separated string or a JSON list of class names), and optionally
``split`` (``train``/``val``; without it a deterministic ``val_fraction`` is held
out, per class for classification, or of the clips' groups with ``group_by``: see
:mod:`prernn_cli.data.split_lists`). Relative paths are relative to the manifest.
"""

from __future__ import annotations

import csv
import json
import logging
import re
from pathlib import Path

import numpy as np

from prernn_cli.data.clips import Clip, DataSplits, holdout
from prernn_cli.data.decoding import ClipReadError, count_frames
from prernn_cli.data.split_lists import group_holdout
from prernn_cli.errors import DataError
from prernn_cli.spec import Task

logger = logging.getLogger(__name__)

MANIFEST_SUFFIXES = frozenset({".csv", ".jsonl"})
CTC_BLANK = "<blank>"
_TARGET_KEYS = {Task.CLASSIFY: "label", Task.REGRESS: "targets", Task.CTC: "labels"}


def _read_csv_rows(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or "path" not in reader.fieldnames:
            raise DataError(f"manifest {path} needs a header row with a 'path' column (and label, targets or labels)")
        return [dict(row) for row in reader]


def _read_jsonl_rows(path: Path) -> list[dict]:
    rows: list[dict] = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(
                f"manifest {path} line {number} is not JSON ({error.msg}); write one JSON object per line"
            ) from None
        if not isinstance(row, dict) or "path" not in row:
            raise DataError(
                f"manifest {path} line {number} has no 'path' key; each line needs path and label/targets/labels"
            )
        rows.append(row)
    return rows


def _read_manifest_rows(path: Path) -> list[dict]:
    try:
        rows = _read_csv_rows(path) if path.suffix.lower() == ".csv" else _read_jsonl_rows(path)
    except UnicodeDecodeError:
        raise DataError(f"manifest {path} is not a text file; give a UTF-8 .csv or .jsonl manifest") from None
    if not rows:
        raise DataError(f"manifest {path} lists no clips; add rows with path and label/targets/labels")
    return rows


def _infer_task(rows: list[dict], path: Path) -> Task:
    keys = set().union(*(row.keys() for row in rows))
    found = [t for t, key in ((Task.CLASSIFY, "label"), (Task.REGRESS, "targets"), (Task.CTC, "labels")) if key in keys]
    if len(found) != 1:
        raise DataError(
            f"manifest {path} must have exactly one of the columns label, targets, labels (found {[t.value for t in found] or 'none'}); or pass --task"
        )
    return found[0]


def _sequence_tokens(value) -> list[str]:
    if isinstance(value, list):
        return [str(v) for v in value]
    return str(value).split()


def _resolve_paths(rows: list[dict], path: Path, task: Task) -> None:
    """Check every row has the task's target and resolve its files (``_path``, ``_targets``) against the manifest's folder."""
    key = _TARGET_KEYS[task]
    base = path.parent
    missing: list[str] = []
    for number, row in enumerate(rows, start=1):
        if row.get(key) in (None, ""):
            raise DataError(
                f"manifest {path} row {number} has no {key!r} value; --task {task.value} needs it on every row"
            )
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
        raise DataError(
            f"manifest {path} points to missing files: {', '.join(missing[:3])}{more}; fix the paths (relative to the manifest)"
        )


def _outputs(rows: list[dict], path: Path, task: Task) -> tuple[tuple[str, ...], int]:
    """The class names (ctc: ``<blank>`` first; regress: none) and the number of outputs K of the model's head."""
    if task is Task.CLASSIFY:
        names = tuple(sorted({str(row["label"]) for row in rows}))
        if len(names) < 2:
            raise DataError(f"manifest {path} has only one class ({names[0]!r}); classification needs at least two")
        return names, len(names)
    if task is Task.CTC:
        tokens = sorted({tok for row in rows for tok in _sequence_tokens(row["labels"])})
        if CTC_BLANK in tokens:
            raise DataError(f"manifest {path} uses the reserved label {CTC_BLANK!r}; rename that class")
        names = (CTC_BLANK, *tokens)
        return names, len(names)
    widths = {load_targets(row["_targets"]).shape[1] for row in rows}
    if len(widths) != 1:
        raise DataError(
            f"target files in {path} have different widths {sorted(widths)}; every file must be N x K with the same K"
        )
    return (), widths.pop()


def _split_rows(
    rows: list[dict], path: Path, task: Task, val_fraction: float, group_by: re.Pattern | None = None
) -> tuple[list[dict], list[dict], bool]:
    """Train rows, val rows, and whether the manifest gave the split (else a per-class or per-group holdout)."""
    has_split = any(str(row.get("split", "")).strip() for row in rows)
    if has_split:
        if group_by is not None:
            logger.warning("--group-by is not used: manifest %s has a split column, which fixes the split", path)
        bad = sorted({str(row.get("split")) for row in rows} - {"train", "val"})
        if bad:
            raise DataError(f"manifest {path} has split values {bad}; use train or val on every row")
        return [r for r in rows if r["split"] == "train"], [r for r in rows if r["split"] == "val"], True
    if group_by is not None:
        train, val = group_holdout(rows, lambda row: row["_path"].name, group_by, val_fraction)
        return train, val, False
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(str(row["label"]) if task is Task.CLASSIFY else "", []).append(row)
    train, val = [], []
    for name in sorted(groups):
        t, v = holdout(groups[name], val_fraction, salt=name)
        train += t
        val += v
    return train, val, False


def _to_clip(row: dict, task: Task, index: dict[str, int]) -> Clip:
    if task is Task.CLASSIFY:
        return Clip(row["_path"], label=index[str(row["label"])])
    if task is Task.CTC:
        return Clip(row["_path"], sequence=tuple(index[t] for t in _sequence_tokens(row["labels"])))
    return Clip(row["_path"], targets=row["_targets"])


def read_manifest(
    path: Path, val_fraction: float = 0.2, task: Task | None = None, group_by: re.Pattern | None = None
) -> DataSplits:
    """Read a CSV/JSONL manifest (see the module docstring); ``task`` None: inferred from the columns.

    Raises :class:`DataError` for an unusable manifest, missing files, or classes that differ between its splits.
    """
    path = Path(path)
    rows = _read_manifest_rows(path)
    task = task or _infer_task(rows, path)
    _resolve_paths(rows, path, task)
    names, num_outputs = _outputs(rows, path, task)
    index = {n: i for i, n in enumerate(names)}
    train_rows, val_rows, has_split = _split_rows(rows, path, task, val_fraction, group_by)
    train = [_to_clip(row, task, index) for row in train_rows]
    val = [_to_clip(row, task, index) for row in val_rows]
    if not train:
        raise DataError(f"manifest {path} has no training rows; mark some rows split=train")
    if task is Task.CLASSIFY and val and has_split:
        train_labels = {c.label for c in train}
        val_labels = {c.label for c in val}
        if train_labels != val_labels:
            only_val = sorted(names[i] for i in val_labels - train_labels)
            only_train = sorted(names[i] for i in train_labels - val_labels)
            raise DataError(
                f"classes differ between train and val rows of {path}: only in train {only_train}, only in val {only_val}"
            )
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
        raise DataError(
            f"target file {path} cannot be read ({str(error).splitlines()[0]}); write N x K numbers"
        ) from None
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise DataError(f"target file {path} has shape {tuple(array.shape)}; it must be 2-D, N frames x K values")
    return array.astype(np.float32, copy=False)


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
            raise DataError(
                f"targets {clip.targets} have {targets.shape[0]} rows but clip {clip.path} has {n} frames; give one row per frame (N x K)"
            )
