"""``prernn evaluate``: a trained model's metrics on a split of clips (see :mod:`prernn_cli.metrics`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import numpy as np
from torch import nn
from torch.utils.data import DataLoader

from prernn_cli.choices import ClipPool, ErrorNorm
from prernn_cli.data import (
    ClipDataset,
    DataSplits,
    FrameCache,
    Sampling,
    check_targets,
    collate,
    dense_windows,
    discover,
)
from prernn_cli.devices import resolve_device
from prernn_cli.errors import DataError
from prernn_cli.files import atomic_path, finite_json, output_folder
from prernn_cli.metrics import Accumulator, MetricOptions, check_model_outputs, run_model
from prernn_cli.spec import InputSpec, ModelSpec, Task, TrainingRecord

logger = logging.getLogger(__name__)


@dataclass
class EvaluationResult:
    split: str
    task: Task
    metrics: dict
    class_names: tuple[str, ...]
    per_class_accuracy: dict[str, float | None]
    confusion: list[list[int]] | None
    skipped: list[tuple[str, str]]
    files: dict[str, str]
    settings: EvaluationSettings | None = None
    per_clip: list[ClipScores] | None = None  # classify: each clip's class probabilities

    def to_dict(self) -> dict:
        return {
            "split": self.split,
            "settings": self.settings.to_dict() if self.settings else None,
            "task": self.task.value,
            "metrics": self.metrics,
            "classes": list(self.class_names),
            "per_class_accuracy": self.per_class_accuracy,
            "confusion_matrix": self.confusion,
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
            "files": self.files,
            "per_clip": [clip.to_dict() for clip in self.per_clip] if self.per_clip is not None else None,
        }


@dataclass(frozen=True)
class ClipScores:
    """One clip's class probabilities: the softmax of its pooled clip score (see :mod:`prernn_cli.metrics`).

    With ``--clip-pool last`` they are the last step's softmax; with ``mean``, the softmax of the
    mean per-step log-probabilities (the normalised geometric mean of the steps' probabilities).
    ``clip`` is the clip's name (:func:`clip_name`; ``@<first frame>`` added for a dense window).
    """

    clip: str
    label: str
    probabilities: tuple[float, ...]

    def to_dict(self) -> dict:
        return {"clip": self.clip, "label": self.label, "probabilities": list(self.probabilities)}


def clip_name(clip, data: Path) -> str:
    """The name a clip is matched by across data folders: its path relative to ``data`` (a manifest's folder).

    A video file's suffix is dropped, so ``val/a/clip7.mp4`` in one stream matches the frame
    folder ``val/a/clip7`` in another.
    """
    root = Path(data) if Path(data).is_dir() else Path(data).parent
    path = Path(clip.path)
    if path.is_file():
        path = path.with_suffix("")
    name = path.relative_to(root).as_posix() if path.is_relative_to(root) else path.as_posix()
    return name if clip.start is None else f"{name}@{clip.start}"


def _per_clip(acc: Accumulator, clips: Sequence, class_names: Sequence[str], data: Path) -> list[ClipScores]:
    """Each scored clip's probabilities, in the loader's order (``acc.indices`` index ``clips``)."""
    scores = np.stack(acc.scores).astype(np.float64)
    probabilities = np.exp(scores - scores.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    return [
        ClipScores(clip_name(clips[index], data), class_names[label], tuple(float(p) for p in row))
        for index, label, row in zip(acc.indices, acc.labels, probabilities)
    ]


def plot_confusion(matrix: np.ndarray, class_names: Sequence[str], path: Path, title: str = "") -> None:
    """Write a confusion-matrix PNG (rows: true class, columns: predicted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(class_names)
    fig, ax = plt.subplots(figsize=(max(4, 0.5 * n + 2), max(3.5, 0.5 * n + 1.5)))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(n), class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "confusion matrix")
    peak = matrix.max() if matrix.size else 0
    for i in range(n):
        for j in range(n):
            ax.text(
                j,
                i,
                str(matrix[i, j]),
                ha="center",
                va="center",
                color="white" if matrix[i, j] > peak / 2 else "black",
                fontsize=8,
            )
    fig.tight_layout()
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def _split_clips(
    model: nn.Module,
    data: Path,
    split: str,
    val_fraction: float,
    task: Task | None,
    split_file: Path | None = None,
    group_by: str | None = None,
) -> tuple[DataSplits, list]:
    """The data's splits and the clips of ``split``, checked against what the model was trained on.

    Without ``split_file`` or ``group_by``, the val split is held out as training held it out
    (its recorded ``--group-by``, if any).
    """
    spec = model.spec
    task = task or (Task(spec.task) if spec.task else None)
    if group_by is None and split_file is None and spec.training is not None:
        group_by = spec.training.group_by
    splits = discover(Path(data), val_fraction=val_fraction, task=task, split_file=split_file, group_by=group_by)
    check_targets(splits)
    if spec.class_names and splits.task is not Task.REGRESS and tuple(spec.class_names) != tuple(splits.class_names):
        raise DataError(
            f"the model was trained on classes {list(spec.class_names)} but {data} has {list(splits.class_names)}; evaluate on data with the same classes"
        )
    check_model_outputs(model, splits.task, splits.num_outputs)
    clips = splits.split(split)
    if not clips:
        raise DataError(
            f"split {split!r} of {data} has no clips; use --split train, or add a val folder / --val-fraction"
        )
    return splits, clips


def _loader(
    spec: InputSpec,
    clips: list,
    task: Task,
    steps: int,
    batch_size: int,
    sampling: Sampling,
    workers: int,
    frame_cache: Path | None,
    skipped: list,
) -> DataLoader:
    """Clips in order, ``steps`` uniform steps each (every dense window with DENSE); too-short clips go to ``skipped``."""
    if sampling is Sampling.DENSE:
        clips, bad = dense_windows(clips, steps, spec.frames_per_step, spec=spec)
        skipped += [(str(p), r) for p, r in bad]
    cache = FrameCache.open(Path(frame_cache), spec) if frame_cache else None
    dataset = ClipDataset(
        clips,
        spec,
        task,
        steps=steps,
        sampling=Sampling.UNIFORM if sampling is Sampling.RANDOM else sampling,
        frame_cache=cache,
    )
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate)


def _per_class(acc: Accumulator, class_names: Sequence[str]) -> tuple[dict[str, float | None], np.ndarray]:
    """Accuracy of each class, and the confusion matrix (rows: true class)."""
    matrix = acc.confusion(len(class_names))
    per_class: dict[str, float | None] = {}
    for i, name in enumerate(class_names):
        total = matrix[i].sum()
        per_class[name] = float(matrix[i, i] / total) if total else None
    return per_class, matrix


def report_names(split: str) -> tuple[str, str]:
    """The files ``-o DIR`` receives: the confusion matrix PNG (classify) and the JSON report."""
    return f"confusion_{split}.png", f"evaluation_{split}.json"


def _write_report(result: EvaluationResult, matrix: np.ndarray | None, output_dir: Path) -> None:
    """``confusion_<split>.png`` (classify) and ``evaluation_<split>.json``; their paths go to ``result.files``."""
    png, report = (output_dir / name for name in report_names(result.split))
    with output_folder(output_dir, "report folder"):
        if matrix is not None:
            title = f"{result.split}: accuracy {result.metrics['accuracy']:.3f}"
            plot_confusion(matrix, result.class_names, png, title=title)
            result.files["confusion_png"] = str(png)
        result.files["report_json"] = str(report)
        with atomic_path(report) as tmp:
            tmp.write_text(finite_json(result.to_dict(), indent=2))


@dataclass(frozen=True)
class EvaluationSettings:
    """How clips are sampled and scored; by default what the model's training recorded."""

    steps: int
    sampling: Sampling
    val_fraction: float
    options: MetricOptions
    differences: tuple[str, ...] = ()  # the settings given that differ from training, as "--flag value (trained: x)"

    def to_dict(self) -> dict:
        return {
            "steps": self.steps,
            "sampling": self.sampling.value,
            "val_fraction": self.val_fraction,
            "clip_pool": self.options.clip_pool.value,
            "error_norm": self.options.error_norm.value,
            "norm_points": list(self.options.norm_points) if self.options.norm_points else None,
            "auc_threshold": self.options.auc_threshold,
            "differs_from_training": list(self.differences),
        }


def evaluation_settings(
    spec: ModelSpec,
    *,
    steps: int | None = None,
    sampling: Sampling | str | None = None,
    val_fraction: float | None = None,
    clip_pool: ClipPool | str | None = None,
    error_norm: ErrorNorm | str | None = None,
    norm_points: tuple[int, int] | None = None,
    auc_threshold: float | None = None,
) -> EvaluationSettings:
    """Settings given explicitly win; the rest come from the model's training record (defaults if untrained).

    Training validated with uniform steps (dense windows when it trained on dense ones), so
    that is the default sampling here.
    """
    record = spec.training or TrainingRecord(task=Task(spec.task) if spec.task else Task.CLASSIFY, steps=8)
    trained = {
        "--steps": record.steps,
        "--sampling": Sampling(record.eval_sampling),
        "--val-fraction": record.val_fraction,
        "--clip-pool": ClipPool(record.clip_pool),
        "--error-norm": ErrorNorm(record.error_norm),
        "--norm-points": record.norm_points,
        "--auc-threshold": record.auc_threshold,
    }
    given = {
        "--steps": steps,
        "--sampling": Sampling(sampling) if sampling is not None else None,
        "--val-fraction": val_fraction,
        "--clip-pool": ClipPool(clip_pool) if clip_pool is not None else None,
        "--error-norm": ErrorNorm(error_norm) if error_norm is not None else None,
        "--norm-points": tuple(norm_points) if norm_points is not None else None,
        "--auc-threshold": auc_threshold,
    }
    chosen = {flag: trained[flag] if value is None else value for flag, value in given.items()}
    differences = ()
    if spec.training is not None:
        differences = tuple(
            f"{flag} {_shown(chosen[flag])} (trained with {_shown(trained[flag])})"
            for flag in given
            if given[flag] is not None and given[flag] != trained[flag]
        )
    options = MetricOptions(
        chosen["--clip-pool"], chosen["--error-norm"], chosen["--norm-points"], chosen["--auc-threshold"]
    )
    return EvaluationSettings(chosen["--steps"], chosen["--sampling"], chosen["--val-fraction"], options, differences)


def _shown(value) -> str:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def evaluate(
    model: nn.Module,
    data: Path,
    split: str = "val",
    settings: EvaluationSettings | None = None,
    *,
    batch_size: int = 8,
    task: Task | None = None,
    workers: int = 0,
    device: str = "auto",
    output_dir: Path | None = None,
    strict: bool = False,
    amp: bool = True,
    frame_cache: Path | None = None,
    split_file: Path | None = None,
    group_by: str | None = None,
) -> EvaluationResult:
    """Metrics of ``model`` on ``split`` of ``data`` (clip folder, manifest, or the folder ``split_file`` lists).

    ``settings`` default to how the model was trained (:func:`evaluation_settings`), so a
    trained model's ``best`` checkpoint scores what training reported for it. Class names
    and the task come from the model's spec when it was trained with prernn; the data's
    classes must match them. With ``output_dir``, also writes the confusion matrix
    (classify) and the report there.
    """
    settings = settings or evaluation_settings(model.spec)
    splits, clips = _split_clips(model, data, split, settings.val_fraction, task, split_file, group_by)
    task = splits.task
    dev = resolve_device(device)
    model.to(dev)
    skipped: list[tuple[str, str]] = []
    loader = _loader(
        model.spec.input, clips, task, settings.steps, batch_size, settings.sampling, workers, frame_cache, skipped
    )
    acc = run_model(model, loader, task, dev, settings.options, amp=amp, skipped=skipped, strict=strict)
    if acc.clips == 0:
        raise DataError(
            f"no usable clips in split {split!r} of {data} ({len(skipped)} skipped); see the warnings for why"
        )
    metrics = acc.metrics()
    metrics["skipped"] = len(skipped)
    per_class, matrix = _per_class(acc, splits.class_names) if task is Task.CLASSIFY else ({}, None)
    confusion = matrix.tolist() if matrix is not None else None
    per_clip = _per_clip(acc, loader.dataset.clips, splits.class_names, data) if task is Task.CLASSIFY else None
    result = EvaluationResult(
        split, task, metrics, splits.class_names, per_class, confusion, skipped, {}, settings, per_clip
    )
    if output_dir is not None:
        _write_report(result, matrix, Path(output_dir))
    return result
