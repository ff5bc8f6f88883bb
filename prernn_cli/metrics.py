"""Losses, metrics and clip pooling of the three tasks, shared by train, evaluate and analyze.

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
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prernn_cli.choices import ClipPool, ErrorNorm
from prernn_cli.devices import autocast_context
from prernn_cli.errors import DataError, UserInputError
from prernn_cli.files import finite_json
from prernn_cli.spec import HeadKind, Task

logger = logging.getLogger(__name__)


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
            raise DataError(
                f"targets have shape {tuple(targets.shape[1:])} per clip but the model gives {tuple(outputs.shape[1:])}; convert the model with K={targets.shape[-1]} outputs"
            )
        return F.mse_loss(outputs, targets)
    log_probs = F.log_softmax(outputs, dim=-1).transpose(0, 1)  # T, B, K
    b = outputs.shape[0]
    input_lengths = torch.full((b,), outputs.shape[1], dtype=torch.long)
    return F.ctc_loss(
        log_probs,
        batch["sequence"].to(outputs.device),
        input_lengths,
        batch["sequence_lengths"],
        blank=0,
        reduction="mean",
        zero_infinity=True,
    )


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
        return finite_json(
            {
                "loss_sum": self.loss_sum,
                "clips": self.clips,
                "indices": self.indices,
                "scores": [s.tolist() for s in self.scores],
                "labels": self.labels,
                "errors": [e.tolist() for e in self.errors],
                "decoded": self.decoded,
                "truths": self.truths,
            }
        )

    def load_json(self, text: str) -> None:
        data = json.loads(text)
        self.loss_sum, self.clips, self.indices, self.labels = (
            float("nan") if data["loss_sum"] is None else data["loss_sum"],
            data["clips"],
            data["indices"],
            data["labels"],
        )
        self.scores = [np.asarray(s, dtype=np.float32) for s in data["scores"]]
        self.errors = [np.asarray(e, dtype=np.float32) for e in data["errors"]]
        self.decoded = [tuple(d) for d in data["decoded"]]
        self.truths = [tuple(t) for t in data["truths"]]

    def merge(self, others: Sequence[Accumulator]) -> Accumulator:
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
    return (
        float(np.trapezoid(ced, grid) / threshold)
        if hasattr(np, "trapezoid")
        else float(np.trapz(ced, grid) / threshold)
    )


# ---------------------------------------------------------------- running a model over a loader


@torch.no_grad()
def run_model(
    model: nn.Module,
    loader,
    task: Task,
    device: torch.device,
    options: MetricOptions,
    amp: bool = False,
    skipped: list | None = None,
    strict: bool = False,
) -> Accumulator:
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


# ---------------------------------------------------------------- what the head predicts vs what the data needs


def model_outputs(model: nn.Module) -> int | None:
    """K, the outputs of a converted model's head (None when unknown)."""
    spec = model.spec
    if spec.head is HeadKind.ORIGINAL and not spec.traditional:
        return spec.base_num_classes
    return spec.outputs


def check_model_outputs(model: nn.Module, task: Task, num_outputs: int) -> None:
    """The head must have as many outputs as the data has classes (or target values)."""
    k = model_outputs(model)
    if k is not None and k != num_outputs:
        what = {
            Task.CLASSIFY: f"{num_outputs} classes",
            Task.CTC: f"{num_outputs} classes (with the CTC blank)",
            Task.REGRESS: f"{num_outputs} target values per frame",
        }[task]
        raise UserInputError(
            f"the model has {k} outputs but the data has {what}; convert the base model again with `prernn convert ... --num-classes {num_outputs}`"
        )
