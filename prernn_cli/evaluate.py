"""``prernn evaluate``: a trained model's metrics on a split of clips (see :mod:`prernn_cli.metrics`)."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn
from torch.utils.data import DataLoader

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
from prernn_cli.files import atomic_path
from prernn_cli.metrics import Accumulator, MetricOptions, check_model_outputs, run_model
from prernn_cli.spec import InputSpec, Task

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

    def to_dict(self) -> dict:
        return {
            "split": self.split,
            "task": self.task.value,
            "metrics": self.metrics,
            "classes": list(self.class_names),
            "per_class_accuracy": self.per_class_accuracy,
            "confusion_matrix": self.confusion,
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
            "files": self.files,
        }


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
    model: nn.Module, data: Path, split: str, val_fraction: float, task: Task | None
) -> tuple[DataSplits, list]:
    """The data's splits and the clips of ``split``, checked against what the model was trained on."""
    spec = model.spec
    task = task or (Task(spec.task) if spec.task else None)
    splits = discover(Path(data), val_fraction=val_fraction, task=task)
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
        clips, bad = dense_windows(clips, steps, spec.frames_per_step)
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


def _write_report(result: EvaluationResult, matrix: np.ndarray | None, output_dir: Path) -> None:
    """``confusion_<split>.png`` (classify) and ``evaluation_<split>.json``; their paths go to ``result.files``."""
    output_dir.mkdir(parents=True, exist_ok=True)
    if matrix is not None:
        png = output_dir / f"confusion_{result.split}.png"
        plot_confusion(
            matrix, result.class_names, png, title=f"{result.split}: accuracy {result.metrics['accuracy']:.3f}"
        )
        result.files["confusion_png"] = str(png)
    report = output_dir / f"evaluation_{result.split}.json"
    result.files["report_json"] = str(report)
    with atomic_path(report) as tmp:
        tmp.write_text(json.dumps(result.to_dict(), indent=2))


def evaluate(
    model: nn.Module,
    data: Path,
    split: str = "val",
    steps: int = 8,
    batch_size: int = 8,
    sampling=None,
    val_fraction: float = 0.2,
    task: Task | None = None,
    workers: int = 0,
    device: str = "auto",
    options: MetricOptions | None = None,
    output_dir: Path | None = None,
    strict: bool = False,
    amp: bool = True,
    frame_cache: Path | None = None,
) -> EvaluationResult:
    """Metrics of ``model`` on ``split`` of ``data`` (clip folder or manifest).

    Class names and the task come from the model's spec when it was trained
    with prernn; the data's classes must match them. With ``output_dir``, also
    writes the confusion matrix (classify) and the report there.
    """
    splits, clips = _split_clips(model, data, split, val_fraction, task)
    task = splits.task
    dev = resolve_device(device)
    model.to(dev)
    skipped: list[tuple[str, str]] = []
    sampling = Sampling(sampling) if sampling else Sampling.UNIFORM
    loader = _loader(model.spec.input, clips, task, steps, batch_size, sampling, workers, frame_cache, skipped)
    acc = run_model(model, loader, task, dev, options or MetricOptions(), amp=amp, skipped=skipped, strict=strict)
    if acc.clips == 0:
        raise DataError(
            f"no usable clips in split {split!r} of {data} ({len(skipped)} skipped); see the warnings for why"
        )
    metrics = acc.metrics()
    metrics["skipped"] = len(skipped)
    per_class, matrix = _per_class(acc, splits.class_names) if task is Task.CLASSIFY else ({}, None)
    confusion = matrix.tolist() if matrix is not None else None
    result = EvaluationResult(split, task, metrics, splits.class_names, per_class, confusion, skipped, {})
    if output_dir is not None:
        _write_report(result, matrix, Path(output_dir))
    return result
