"""Task losses and metrics, and ``prernn evaluate``: a trained model on a split of clips.

How predictions are formed
    classify — the model gives per-step logits ``[B, T, K]``. The loss is the
    paper's NLL applied at every step (every step carries the clip's label),
    averaged over steps and clips. The *clip* prediction averages the per-step
    log-probabilities over the T steps (:attr:`ClipPool.MEAN`, the default; the
    paper combines streams by "averaging softmax scores" and never says "last
    step") or takes the last step only (:attr:`ClipPool.LAST`, the state that
    has seen the whole clip). Clip accuracy, top-5 (when K > 5), per-class
    accuracy and the confusion matrix are computed from clip predictions.
    regress — l2 per frame: the loss is the mean squared error over the T×K
    outputs. The reported *error* of a frame is the mean point-to-point
    Euclidean distance (K values read as K/2 (x, y) points; as K 1-D points when
    K is odd), optionally divided by a normaliser (:class:`ErrorNorm`): the
    diagonal of the target points' bounding box, or the distance between two
    chosen points (the inter-ocular distance of 68 landmarks is points 36,45).
    ``auc`` is the area under the cumulative error distribution up to
    ``auc_threshold``, divided by the threshold (1.0 = every frame error-free),
    as for 300VW in the paper.
    ctc — ``torch.nn.CTCLoss`` over the T steps with class 0 the blank; greedy
    decoding (arg-max per step, merge repeats, drop blanks); ``sequence_accuracy``
    is the fraction of clips decoded exactly.
"""

from __future__ import annotations

import json
import logging
from contextlib import nullcontext
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prernn_cli.data import Task
from prernn_cli.errors import DataError, UserInputError

logger = logging.getLogger(__name__)


class ClipPool(str, Enum):
    """How per-step class scores become one clip prediction."""

    MEAN = "mean"  # mean of per-step log-probabilities
    LAST = "last"  # the last step's log-probabilities


class ErrorNorm(str, Enum):
    """Normaliser of the per-frame regression error."""

    NONE = "none"
    BBOX = "bbox"  # diagonal of the target points' bounding box
    POINTS = "points"  # distance between two target points (e.g. outer eye corners)


@dataclass(frozen=True)
class MetricOptions:
    clip_pool: ClipPool = ClipPool.MEAN
    error_norm: ErrorNorm = ErrorNorm.NONE
    norm_points: tuple[int, int] | None = None
    auc_threshold: float = 0.08


# ---------------------------------------------------------------- losses


def task_loss(task: Task, outputs: Tensor, batch: dict) -> Tensor:
    """The training objective on model outputs ``[B, T, K]`` (float32)."""
    if task is Task.CLASSIFY:
        b, t, k = outputs.shape
        labels = batch["label"].to(outputs.device)
        return F.cross_entropy(outputs.reshape(b * t, k), labels.repeat_interleave(t))
    if task is Task.REGRESS:
        targets = batch["targets"].to(outputs.device)
        if targets.shape != outputs.shape:
            raise DataError(f"targets have shape {tuple(targets.shape[1:])} per clip but the model gives {tuple(outputs.shape[1:])}; convert the model with K={targets.shape[-1]} outputs")
        return F.mse_loss(outputs, targets)
    log_probs = F.log_softmax(outputs, dim=-1).transpose(0, 1)  # T, B, K
    b = outputs.shape[0]
    input_lengths = torch.full((b,), outputs.shape[1], dtype=torch.long)
    return F.ctc_loss(log_probs, batch["sequence"].to(outputs.device), input_lengths, batch["sequence_lengths"], blank=0, reduction="mean", zero_infinity=True)


# ---------------------------------------------------------------- accumulating predictions


def greedy_decode(outputs: Tensor) -> list[tuple[int, ...]]:
    """Best-path CTC decoding of ``[B, T, K]`` scores: merge repeats, drop blank (0)."""
    best = outputs.argmax(dim=-1).tolist()
    decoded = []
    for path in best:
        seq, previous = [], None
        for symbol in path:
            if symbol != previous and symbol != 0:
                seq.append(symbol)
            previous = symbol
        decoded.append(tuple(seq))
    return decoded


@dataclass
class Accumulator:
    """Per-clip results of a pass over a loader; merged across DDP ranks with :meth:`merge`."""

    task: Task
    options: MetricOptions = field(default_factory=MetricOptions)
    loss_sum: float = 0.0
    clips: int = 0
    indices: list[int] = field(default_factory=list)
    scores: list[np.ndarray] = field(default_factory=list)  # classify: clip log-probs [K]
    labels: list[int] = field(default_factory=list)
    errors: list[np.ndarray] = field(default_factory=list)  # regress: per-frame errors [T]
    decoded: list[tuple[int, ...]] = field(default_factory=list)  # ctc
    truths: list[tuple[int, ...]] = field(default_factory=list)

    def add(self, outputs: Tensor, batch: dict, loss: float) -> None:
        outputs = outputs.detach().float().cpu()
        n = outputs.shape[0]
        self.loss_sum += loss * n
        self.clips += n
        self.indices += batch["index"].tolist()
        if self.task is Task.CLASSIFY:
            log_probs = F.log_softmax(outputs, dim=-1)
            pooled = log_probs.mean(dim=1) if self.options.clip_pool is ClipPool.MEAN else log_probs[:, -1]
            self.scores += list(pooled.numpy())
            self.labels += batch["label"].tolist()
        elif self.task is Task.REGRESS:
            self.errors += list(frame_errors(outputs, batch["targets"].float(), self.options).numpy())
        else:
            self.decoded += greedy_decode(outputs)
            lengths = batch["sequence_lengths"].tolist()
            flat = batch["sequence"].tolist()
            start = 0
            for length in lengths:
                self.truths.append(tuple(flat[start : start + length]))
                start += length

    def to_json(self) -> str:
        """Partial results as JSON (kept in the training state so a resumed epoch reports the whole epoch)."""
        return json.dumps({
            "loss_sum": self.loss_sum, "clips": self.clips, "indices": self.indices,
            "scores": [s.tolist() for s in self.scores], "labels": self.labels,
            "errors": [e.tolist() for e in self.errors], "decoded": self.decoded, "truths": self.truths,
        })

    def load_json(self, text: str) -> None:
        data = json.loads(text)
        self.loss_sum, self.clips, self.indices, self.labels = data["loss_sum"], data["clips"], data["indices"], data["labels"]
        self.scores = [np.asarray(s, dtype=np.float32) for s in data["scores"]]
        self.errors = [np.asarray(e, dtype=np.float32) for e in data["errors"]]
        self.decoded = [tuple(d) for d in data["decoded"]]
        self.truths = [tuple(t) for t in data["truths"]]

    def merge(self, others: Sequence["Accumulator"]) -> "Accumulator":
        out = Accumulator(self.task, self.options)
        for acc in others:
            out.loss_sum += acc.loss_sum
            out.clips += acc.clips
            for name in ("indices", "scores", "labels", "errors", "decoded", "truths"):
                getattr(out, name).extend(getattr(acc, name))
        return out

    def metrics(self, num_classes: int | None = None) -> dict:
        """Loss and the task's metrics (see the module docstring)."""
        result: dict = {"loss": self.loss_sum / self.clips if self.clips else float("nan"), "clips": self.clips}
        if not self.clips:
            return result
        if self.task is Task.CLASSIFY:
            scores = np.stack(self.scores)
            labels = np.asarray(self.labels)
            result["accuracy"] = float((scores.argmax(axis=1) == labels).mean())
            if scores.shape[1] > 5:
                top5 = np.argsort(-scores, axis=1)[:, :5]
                result["top5"] = float((top5 == labels[:, None]).any(axis=1).mean())
        elif self.task is Task.REGRESS:
            errors = np.concatenate([np.atleast_1d(e) for e in self.errors])
            result["mean_error"] = float(errors.mean())
            result["auc"] = cumulative_error_auc(errors, self.options.auc_threshold)
        else:
            result["sequence_accuracy"] = float(np.mean([d == t for d, t in zip(self.decoded, self.truths)]))
        return result

    def confusion(self, num_classes: int) -> np.ndarray:
        matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
        if self.scores:
            predicted = np.stack(self.scores).argmax(axis=1)
            for truth, guess in zip(self.labels, predicted):
                matrix[truth, guess] += 1
        return matrix


MAIN_METRIC = {Task.CLASSIFY: "accuracy", Task.REGRESS: "auc", Task.CTC: "sequence_accuracy"}


def frame_errors(outputs: Tensor, targets: Tensor, options: MetricOptions) -> Tensor:
    """Per-clip, per-frame point-to-point error ``[B, T]`` (see :class:`ErrorNorm`)."""
    b, t, k = outputs.shape
    dim = 2 if k % 2 == 0 else 1
    pred = outputs.reshape(b, t, k // dim, dim)
    true = targets.reshape(b, t, k // dim, dim)
    error = (pred - true).norm(dim=-1).mean(dim=-1)
    if options.error_norm is ErrorNorm.BBOX:
        extent = true.amax(dim=2) - true.amin(dim=2)
        error = error / extent.norm(dim=-1).clamp_min(1e-8)
    elif options.error_norm is ErrorNorm.POINTS:
        i, j = options.norm_points or (0, 1)
        if max(i, j) >= k // dim:
            raise UserInputError(f"--norm-points {i},{j} is out of range: targets have {k // dim} points")
        error = error / (true[:, :, i] - true[:, :, j]).norm(dim=-1).clamp_min(1e-8)
    return error


def cumulative_error_auc(errors: np.ndarray, threshold: float, bins: int = 1000) -> float:
    """Area under the cumulative error distribution on [0, threshold], divided by threshold."""
    grid = np.linspace(0.0, threshold, bins + 1)
    ced = np.searchsorted(np.sort(errors), grid, side="right") / len(errors)
    return float(np.trapezoid(ced, grid) / threshold) if hasattr(np, "trapezoid") else float(np.trapz(ced, grid) / threshold)


# ---------------------------------------------------------------- running a model over a loader


def autocast_context(device: torch.device, amp: bool):
    """bf16 autocast on CUDA only; full precision on CPU."""
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


@torch.no_grad()
def run_model(model: nn.Module, loader, task: Task, device: torch.device, options: MetricOptions, amp: bool = False, skipped: list | None = None, strict: bool = False) -> Accumulator:
    """Forward every batch of ``loader``; collect per-clip results."""
    model.eval()
    acc = Accumulator(task, options)
    for batch in loader:
        report_skips(batch, skipped, strict)
        if batch["size"] == 0:
            continue
        frames = batch["frames"].to(device, non_blocking=True)
        with autocast_context(device, amp):
            outputs, _ = model(frames)
        outputs = outputs.float()
        loss = task_loss(task, outputs, batch)
        acc.add(outputs, batch, float(loss))
    return acc


def report_skips(batch: dict, skipped: list | None, strict: bool) -> None:
    """Log clips that could not be used; under ``strict`` stop with a one-line error."""
    for path, reason in batch.get("skipped", ()):
        if strict:
            raise DataError(f"clip {path}: {reason}; fix or remove it (or drop --strict to skip such clips)")
        if skipped is not None and (path, reason) not in skipped:
            skipped.append((path, reason))
            logger.warning("skipping clip %s: %s", path, reason)


# ---------------------------------------------------------------- evaluate command


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

    from prernn_cli.files import atomic_path

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
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center", color="white" if matrix[i, j] > peak / 2 else "black", fontsize=8)
    fig.tight_layout()
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


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
    with prernn; the data's classes must match them.
    """
    from torch.utils.data import DataLoader

    from prernn_cli.data import ClipDataset, Sampling, check_targets, dense_windows, discover
    from prernn_cli.frame_cache import FrameCache
    from prernn_cli.train import check_model_outputs, resolve_device

    spec = model.spec
    task = task or (Task(spec.task) if spec.task else None)
    splits = discover(Path(data), val_fraction=val_fraction, task=task)
    check_targets(splits)
    task = splits.task
    if spec.class_names and task is not Task.REGRESS and tuple(spec.class_names) != tuple(splits.class_names):
        raise DataError(f"the model was trained on classes {list(spec.class_names)} but {data} has {list(splits.class_names)}; evaluate on data with the same classes")
    check_model_outputs(model, splits)
    clips = splits.split(split)
    if not clips:
        raise DataError(f"split {split!r} of {data} has no clips; use --split train, or add a val folder / --val-fraction")
    options = options or MetricOptions()
    dev = resolve_device(device)
    model.to(dev)
    skipped: list[tuple[str, str]] = []
    sampling = Sampling(sampling) if sampling else Sampling.UNIFORM
    snippet = (spec.input.snippet_length or 16) if spec.input.frame_kind.value == "3d" else 1
    if sampling is Sampling.DENSE:
        clips, bad = dense_windows(clips, steps, snippet)
        skipped += [(str(p), r) for p, r in bad]
    cache = FrameCache.open(Path(frame_cache), spec.input) if frame_cache else None
    dataset = ClipDataset(clips, spec.input, task, steps=steps, sampling=Sampling.UNIFORM if sampling is Sampling.RANDOM else sampling, frame_cache=cache)
    from prernn_cli.data import collate

    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate)
    acc = run_model(model, loader, task, dev, options, amp=amp, skipped=skipped, strict=strict)
    if acc.clips == 0:
        raise DataError(f"no usable clips in split {split!r} of {data} ({len(skipped)} skipped); see the warnings for why")
    metrics = acc.metrics()
    metrics["skipped"] = len(skipped)
    names = splits.class_names
    per_class: dict[str, float | None] = {}
    confusion = None
    files: dict[str, str] = {}
    if task is Task.CLASSIFY:
        matrix = acc.confusion(len(names))
        confusion = matrix.tolist()
        for i, name in enumerate(names):
            total = matrix[i].sum()
            per_class[name] = float(matrix[i, i] / total) if total else None
        if output_dir is not None:
            output_dir = Path(output_dir)
            output_dir.mkdir(parents=True, exist_ok=True)
            png = output_dir / f"confusion_{split}.png"
            plot_confusion(matrix, names, png, title=f"{split}: accuracy {metrics['accuracy']:.3f}")
            files["confusion_png"] = str(png)
    if output_dir is not None:
        import json

        from prernn_cli.files import atomic_path

        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        result = EvaluationResult(split, task, metrics, names, per_class, confusion, skipped, files)
        report = output_dir / f"evaluation_{split}.json"
        files["report_json"] = str(report)
        with atomic_path(report) as tmp:
            tmp.write_text(json.dumps(result.to_dict(), indent=2))
    return EvaluationResult(split, task, metrics, names, per_class, confusion, skipped, files)
