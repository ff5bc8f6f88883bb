"""How well a model does on the clips it is analysed on, and whether that beats chance.

A gate reading says something about a model's memory only when the model has learnt
the task on those clips: a model at chance can have saturated or unsaturated gates for
reasons that have nothing to do with memory. So ``analyze`` scores every model in the
same pass that counts its gates, from the same outputs, and judges the score:

* classify — clip accuracy, each clip's prediction pooled over its steps the way the
  model was trained (its recorded ``clip_pool``: the mean of the per-step
  log-probabilities, or the last step); ctc — the share of clips whose greedy
  decoding is exactly the label sequence. *Chance* is the score of the best constant
  prediction on these clips: the share of the most frequent class (sequence), which
  is 1/K for K balanced classes. The model is **no better than chance** when its
  number of correct clips ``c`` of ``N`` lies at or below the upper end of the
  central 95% interval of Binomial(N, chance), i.e. when ``P(X >= c) > 0.025`` for a
  predictor at chance (an exact one-sided binomial test at 2.5%).
* regress — the cumulative-error AUC (as in training); the baseline is the constant
  prediction of the mean target of these clips. The model is **no better** than it
  unless its per-clip mean error is lower by more than the 95% interval of the
  paired differences: ``mean(d) - 1.96·sd(d)/√N > 0`` with ``d`` = constant's error
  − model's error per clip.

A model no better than chance gets the reading "no better than chance on these N clips
(accuracy a): the gate reading says nothing about its memory" and no verdict on its
memory. The score is not measured (and says why) when the clips' task or classes are
not the model's, or its head does not have one output per class.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from prernn_cli.choices import ClipPool, ErrorNorm
from prernn_cli.data import DataSplits
from prernn_cli.metrics import MAIN_METRIC, MetricOptions, cumulative_error_auc, frame_errors, greedy_decode
from prernn_cli.spec import HeadKind, ModelSpec, Task

#: one-sided level of the binomial test against chance (the upper end of a central 95% interval)
CHANCE_TAIL = 0.025
#: the normal quantile of the paired interval used for regression
Z_95 = 1.96


@dataclass(frozen=True)
class Performance:
    """A model's task metric on the analysed clips, judged against chance (see the module docstring)."""

    metric: str  # accuracy, sequence_accuracy, auc
    value: float | None  # None: not measured
    clips: int
    chance: float | None = None  # the best constant prediction's score
    better_than_chance: bool | None = None
    note: str = ""  # why it was not measured

    @property
    def measured(self) -> bool:
        return self.value is not None

    def sentence(self) -> str:
        """How the model did, in words (the start of its reading)."""
        if not self.measured:
            return f"{self.metric} not measured ({self.note})"
        name = self.metric.replace("_", " ")
        if self.better_than_chance is False:
            baseline = "chance" if self.metric != "auc" else "a constant prediction"
            return f"no better than {baseline} on these {self.clips} clips ({name} {self.value:.3f})"
        return f"{name} {self.value:.3f} on {self.clips} clips (chance {self.chance:.3f})"

    def to_dict(self) -> dict:
        return {
            "metric": self.metric,
            "value": self.value,
            "clips": self.clips,
            "chance": self.chance,
            "better_than_chance": self.better_than_chance,
            "note": self.note or None,
        }


def chance_upper(clips: int, chance: float, tail: float = CHANCE_TAIL) -> int:
    """The upper end of the central ``1 - 2·tail`` interval of Binomial(clips, chance): the smallest ``k`` with ``P(X > k) <= tail``."""
    if chance >= 1.0:
        return clips
    if chance <= 0.0:
        return 0
    log_p, log_q = math.log(chance), math.log1p(-chance)
    above = 0.0  # P(X > k), summed from the top
    for k in range(clips, -1, -1):
        pmf = math.exp(
            math.lgamma(clips + 1) - math.lgamma(k + 1) - math.lgamma(clips - k + 1) + k * log_p + (clips - k) * log_q
        )
        if above + pmf > tail:
            return k
        above += pmf
    return 0


def better_than_chance(correct: int, clips: int, chance: float) -> bool:
    """The binomial rule of the module docstring."""
    return correct > chance_upper(clips, chance)


def _not_measured(task: Task, clips: int, note: str) -> Performance:
    return Performance(MAIN_METRIC[task], None, clips, note=note)


def _model_outputs(spec: ModelSpec) -> int | None:
    if spec.head is HeadKind.ORIGINAL and not spec.traditional:
        return spec.base_num_classes
    return spec.outputs


def unmeasurable(spec: ModelSpec, splits: DataSplits) -> str:
    """Why the model's task metric cannot be measured on these clips ("" when it can)."""
    if spec.task is not None and spec.task != splits.task.value:
        return f"the model was trained for {spec.task}, the clips are labelled for {splits.task.value}"
    if splits.task is not Task.REGRESS and spec.class_names and tuple(spec.class_names) != tuple(splits.class_names):
        return f"the model's classes {list(spec.class_names)} are not the clips' {list(splits.class_names)}"
    outputs = _model_outputs(spec)
    if outputs is not None and outputs != splits.num_outputs:
        return f"the model has {outputs} outputs, the clips need {splits.num_outputs}"
    return ""


@dataclass
class PerformanceMeter:
    """Per-clip results gathered window by window (a clip may span several windows), then judged."""

    task: Task
    options: MetricOptions = field(default_factory=MetricOptions)
    reason: str = ""  # not measured, and why
    _open: list[dict] = field(default_factory=list)  # the clips of the current batch, still receiving steps
    _done: list[dict] = field(default_factory=list)

    @classmethod
    def for_model(cls, spec: ModelSpec, splits: DataSplits) -> PerformanceMeter:
        record = spec.training
        options = MetricOptions()
        if record is not None:
            options = MetricOptions(
                ClipPool(record.clip_pool), ErrorNorm(record.error_norm), record.norm_points, record.auc_threshold
            )
        return cls(splits.task, options, reason=unmeasurable(spec, splits))

    def add(self, outputs: Tensor, target: dict | None, first: bool) -> None:
        """The outputs ``[B, t, K]`` of one window and its targets; ``first``: it starts new clips."""
        if self.reason:
            return
        if target is None:
            self.reason = "the clips carry no targets"
            return
        if first:
            self._done += self._open
            self._open = [self._new_clip(target, b) for b in range(outputs.shape[0])]
        outputs = outputs.detach().float().cpu()
        for b, clip in enumerate(self._open):
            self._add_steps(clip, outputs[b], target, b)

    def _new_clip(self, target: dict, b: int) -> dict:
        if self.task is Task.CLASSIFY:
            return {"label": int(target["label"][b]), "sum": None, "last": None, "steps": 0}
        if self.task is Task.CTC:
            lengths = target["sequence_lengths"].tolist()
            start = sum(lengths[:b])
            return {"truth": tuple(target["sequence"][start : start + lengths[b]].tolist()), "path": []}
        return {"errors": [], "targets": [], "outputs": []}

    def _add_steps(self, clip: dict, outputs: Tensor, target: dict, b: int) -> None:
        if self.task is Task.CLASSIFY:
            log_probs = F.log_softmax(outputs, dim=-1)
            clip["sum"] = log_probs.sum(0) if clip["sum"] is None else clip["sum"] + log_probs.sum(0)
            clip["last"], clip["steps"] = log_probs[-1], clip["steps"] + outputs.shape[0]
        elif self.task is Task.CTC:
            clip["path"].append(outputs)
        else:
            clip["targets"].append(target["targets"][b].float())
            clip["outputs"].append(outputs)

    def result(self) -> Performance:
        clips = self._done + self._open
        if self.reason:
            return _not_measured(self.task, len(clips), self.reason)
        if not clips:
            return _not_measured(self.task, 0, "no clips were scored")
        if self.task is Task.CLASSIFY:
            return self._classify(clips)
        if self.task is Task.CTC:
            return self._ctc(clips)
        return self._regress(clips)

    def _judged(self, correct: list[bool], truths: list) -> Performance:
        n = len(correct)
        chance = Counter(truths).most_common(1)[0][1] / n
        value = sum(correct) / n
        metric = MAIN_METRIC[self.task]
        return Performance(metric, value, n, chance, better_than_chance(sum(correct), n, chance))

    def _classify(self, clips: list[dict]) -> Performance:
        last = self.options.clip_pool is ClipPool.LAST
        guesses = [int((c["last"] if last else c["sum"] / c["steps"]).argmax()) for c in clips]
        labels = [c["label"] for c in clips]
        return self._judged([g == y for g, y in zip(guesses, labels)], labels)

    def _ctc(self, clips: list[dict]) -> Performance:
        decoded = [greedy_decode(torch.cat(c["path"]).unsqueeze(0))[0] for c in clips]
        truths = [c["truth"] for c in clips]
        return self._judged([d == t for d, t in zip(decoded, truths)], truths)

    def _regress(self, clips: list[dict]) -> Performance:
        targets = [torch.cat(c["targets"]).unsqueeze(0) for c in clips]
        outputs = [torch.cat(c["outputs"]).unsqueeze(0) for c in clips]
        mean = torch.cat([t.flatten(0, 1) for t in targets]).mean(0)
        model_errors = [frame_errors(o, t, self.options)[0].numpy() for o, t in zip(outputs, targets)]
        constant_errors = [frame_errors(mean.expand_as(t), t, self.options)[0].numpy() for t in targets]
        threshold = self.options.auc_threshold
        value = cumulative_error_auc(np.concatenate(model_errors), threshold)
        chance = cumulative_error_auc(np.concatenate(constant_errors), threshold)
        diffs = np.asarray([c.mean() - m.mean() for c, m in zip(constant_errors, model_errors)])
        spread = Z_95 * diffs.std(ddof=1) / math.sqrt(len(diffs)) if len(diffs) > 1 else math.inf
        return Performance("auc", value, len(clips), chance, bool(diffs.mean() - spread > 0))
