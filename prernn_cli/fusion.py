"""``prernn fuse``: late fusion of streams (colour + depth, colour + flow) by averaging class probabilities.

Each stream is a trained classification model with its own data folder (its modality). Every
stream is evaluated as ``prernn evaluate`` evaluates it (:func:`prernn_cli.evaluate.evaluate`,
with the settings its training recorded), which gives every clip's class probabilities: the
softmax of its pooled clip score (:class:`prernn_cli.evaluate.ClipScores`). Clips are matched
across folders by their path relative to the folder; the fused probabilities of a clip are
the weighted mean of its streams' probabilities, weights normalised to sum to 1 (equal by
default), as the paper fuses its two streams by averaging softmax scores.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch import nn

from prernn_cli.errors import DataError, UserInputError
from prernn_cli.evaluate import ClipScores, EvaluationResult, evaluate
from prernn_cli.files import atomic_path, finite_json, output_folder
from prernn_cli.spec import Task

logger = logging.getLogger(__name__)


def normalise_weights(weights: Sequence[float] | None, count: int) -> tuple[float, ...]:
    """``weights`` scaled to sum to 1 (equal weights when None); one per stream, none negative, not all zero."""
    if weights is None:
        return tuple(1.0 / count for _ in range(count))
    weights = tuple(float(w) for w in weights)
    if len(weights) != count:
        raise UserInputError(f"--weights has {len(weights)} values for {count} models; give one weight per model")
    if any(not np.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
        raise UserInputError(f"--weights must be non-negative numbers, not all zero; got {list(weights)}")
    total = sum(weights)
    return tuple(w / total for w in weights)


def parse_weights(text: str | None, count: int) -> tuple[float, ...]:
    """``"2,1"`` → ``(2/3, 1/3)``; None → equal weights (see :func:`normalise_weights`)."""
    if text is None:
        return normalise_weights(None, count)
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        raise UserInputError(f"--weights must be numbers separated by commas, e.g. 1,1; got {text!r}") from None
    return normalise_weights(values, count)


def check_fusable(models: Sequence[nn.Module], names: Sequence[str]) -> tuple[str, ...]:
    """At least two classification models with the same class names; those class names.

    Raises:
        UserInputError: fewer than two models, a model that does not classify, or different classes.
    """
    if len(models) < 2:
        raise UserInputError("fusion needs at least two models (one per stream); give MODEL MODEL ...")
    classes = None
    for model, name in zip(models, names):
        spec = model.spec
        task = Task(spec.task) if spec.task else None
        if task not in (None, Task.CLASSIFY) or not spec.class_names:
            what = f"a {task.value} model" if task else "a model without class names (never trained)"
            raise UserInputError(
                f"{name} is {what}; late fusion averages class probabilities, so give classification models trained with `prernn train`"
            )
        if classes is None:
            classes = tuple(spec.class_names)
        elif tuple(spec.class_names) != classes:
            raise UserInputError(
                f"{name} has classes {list(spec.class_names)} but {names[0]} has {list(classes)}; fuse models trained on the same classes"
            )
    return classes


@dataclass(frozen=True)
class FusedClip:
    """One clip's fused probabilities and each stream's, in stream order."""

    clip: str
    label: str
    probabilities: tuple[float, ...]
    streams: tuple[tuple[float, ...], ...]

    def to_dict(self, class_names: Sequence[str]) -> dict:
        return {
            "clip": self.clip,
            "label": self.label,
            "predicted": class_names[int(np.argmax(self.probabilities))],
            "probabilities": list(self.probabilities),
            "stream_probabilities": [list(p) for p in self.streams],
        }


def _by_name(clips: Sequence[ClipScores], where: str) -> dict[str, ClipScores]:
    named: dict[str, ClipScores] = {}
    for clip in clips:
        if clip.clip in named:
            raise DataError(f"clip {clip.clip} appears twice in {where}; every clip name must be unique per stream")
        named[clip.clip] = clip
    return named


def _missing(names: set[str], others: set[str]) -> str:
    shown = sorted(names - others)
    more = f" and {len(shown) - 5} more" if len(shown) > 5 else ""
    return ", ".join(shown[:5]) + more


def fuse_scores(
    streams: Sequence[Sequence[ClipScores]], weights: Sequence[float], where: Sequence[str]
) -> list[FusedClip]:
    """Per clip name, the weighted mean of the streams' probabilities (``weights`` already normalised).

    Raises:
        DataError: the streams scored different sets of clip names, or one clip has different labels.
    """
    named = [_by_name(clips, w) for clips, w in zip(streams, where)]
    first = set(named[0])
    for other, name in zip(named[1:], where[1:]):
        if set(other) != first:
            parts = []
            if first - set(other):
                parts.append(f"missing from {name}: {_missing(first, set(other))}")
            if set(other) - first:
                parts.append(f"missing from {where[0]}: {_missing(set(other), first)}")
            raise DataError(
                f"the streams do not score the same clips ({'; '.join(parts)}); give folders holding the same clip names"
            )
    fused = []
    for name in sorted(first):
        clips = [stream[name] for stream in named]
        labels = {clip.label for clip in clips}
        if len(labels) > 1:
            raise DataError(f"clip {name} has different labels across the streams ({sorted(labels)}); fix the data")
        probabilities = sum(w * np.asarray(c.probabilities, dtype=np.float64) for w, c in zip(weights, clips))
        fused.append(FusedClip(name, clips[0].label, tuple(float(p) for p in probabilities),
                               tuple(c.probabilities for c in clips)))  # fmt: skip
    return fused


def fused_metrics(clips: Sequence[FusedClip], class_names: Sequence[str]) -> dict:
    """Accuracy (and top-5 with more than 5 classes) of the fused probabilities, and the clips counted."""
    scores = np.asarray([c.probabilities for c in clips])
    labels = np.asarray([class_names.index(c.label) for c in clips])
    metrics: dict = {"clips": len(clips), "accuracy": float((scores.argmax(axis=1) == labels).mean())}
    if scores.shape[1] > 5:
        top5 = np.argsort(-scores, axis=1)[:, :5]
        metrics["top5"] = float((top5 == labels[:, None]).any(axis=1).mean())
    return metrics


@dataclass
class FusionResult:
    """Each stream's evaluation, the weights, and the fused metrics and per-clip probabilities."""

    split: str
    class_names: tuple[str, ...]
    weights: tuple[float, ...]
    names: tuple[str, ...]  # the models' paths, in stream order
    data: tuple[str, ...]
    streams: list[EvaluationResult]
    metrics: dict
    clips: list[FusedClip]
    files: dict[str, str] = field(default_factory=dict)

    def to_dict(self, per_clip: bool = True) -> dict:
        document = {
            "split": self.split,
            "classes": list(self.class_names),
            "fusion": "weighted mean of the streams' clip class probabilities (softmax of each clip's pooled score)",
            "weights": list(self.weights),
            "streams": [
                {
                    "model": model,
                    "data": data,
                    "weight": weight,
                    "metrics": result.metrics,
                    "settings": result.settings.to_dict() if result.settings else None,
                }
                for model, data, weight, result in zip(self.names, self.data, self.weights, self.streams)
            ],  # fmt: skip
            "fused": self.metrics,
            "files": self.files,
        }
        if per_clip:
            document["per_clip"] = [clip.to_dict(self.class_names) for clip in self.clips]
        return document


def report_name(split: str) -> str:
    """The file ``-o DIR`` receives."""
    return f"fusion_{split}.json"


def fuse(
    models: Sequence[nn.Module],
    data: Sequence[Path],
    weights: Sequence[float] | None = None,
    *,
    names: Sequence[str] | None = None,
    split: str = "val",
    output_dir: Path | None = None,
    **evaluate_options,
) -> FusionResult:
    """Evaluate every model on its own data folder, then fuse the clips' class probabilities.

    ``evaluate_options`` go to :func:`prernn_cli.evaluate.evaluate` for every stream (``batch_size``,
    ``device``, ``workers``, ``strict``...); each stream's settings come from its own training record.
    With ``output_dir``, writes ``fusion_<split>.json`` there (per-clip fused and stream probabilities).
    """
    names = tuple(str(n) for n in names) if names is not None else tuple(f"stream {i}" for i in range(len(models)))
    if len(data) != len(models):
        raise UserInputError(
            f"got {len(models)} models and {len(data)} --data folders; give one --data per model, in the same order"
        )
    class_names = check_fusable(models, names)
    weights = normalise_weights(weights, len(models))
    streams = []
    for model, folder, name in zip(models, data, names):
        logger.info("evaluating %s on %s (%s)", name, folder, split)
        streams.append(evaluate(model, Path(folder), split=split, **evaluate_options))
    where = [f"{folder} ({name})" for folder, name in zip(data, names)]
    try:
        clips = fuse_scores([result.per_clip for result in streams], weights, where)
    except DataError as error:
        skipped = sum(len(result.skipped) for result in streams)
        if skipped:  # a clip one stream could not read is missing from its scores
            raise DataError(f"{error} ({skipped} clip(s) were skipped as unusable; see the warnings)") from None
        raise
    result = FusionResult(split, class_names, weights, names, tuple(str(d) for d in data), streams,
                          fused_metrics(clips, class_names), clips)  # fmt: skip
    if output_dir is not None:
        report = Path(output_dir) / report_name(split)
        with output_folder(Path(output_dir), "report folder"):
            result.files["report_json"] = str(report)
            with atomic_path(report) as tmp:
                tmp.write_text(finite_json(result.to_dict(), indent=2))
    return result
