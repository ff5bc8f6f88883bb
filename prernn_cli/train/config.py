"""What shapes a training run: :class:`TrainConfig`, the optimiser and its parameter groups, the learning-rate schedule."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from enum import Enum

import torch
from torch import nn

from prernn_cli.choices import FeatureDtype, OptimizerKind, ScheduleKind
from prernn_cli.data import Sampling
from prernn_cli.errors import UserInputError
from prernn_cli.metrics import ClipPool, ErrorNorm, MetricOptions
from prernn_cli.spec import Task, TrainingRecord


@dataclass
class TrainConfig:
    """Everything that shapes a run (recorded in the state file; see ``prernn train --help``)."""

    task: Task = Task.CLASSIFY
    epochs: int = 10
    batch_size: int = 8
    steps: int = 8  # T steps per clip
    sampling: Sampling = Sampling.RANDOM  # for training; validation is uniform (or dense when dense)
    augment: bool = True
    flip: bool = False
    flip_pairs: dict = field(default_factory=dict)
    optimizer: OptimizerKind = OptimizerKind.SGD
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: ScheduleKind = ScheduleKind.COSINE
    warmup_steps: int = 0
    step_epochs: int = 10  # STEP schedule: multiply by gamma every step_epochs epochs
    gamma: float = 0.1
    clip_grad: float | None = 5.0
    pretrained_lr_mult: float = 1.0  # LR of pretrained weights = lr * this; new weights use lr
    freeze_trunk: bool = False
    seed: int = 0
    device: str = "auto"
    amp: bool = True  # bf16 autocast, CUDA only
    workers: int = 2
    frame_cache: str | None = None  # folder of decoded, resized clips (FrameCache); None: decode every epoch
    trunk_cache: str | None = None  # folder of a frozen trunk's outputs (TrunkCache); None: run the trunk every step
    trunk_cache_dtype: FeatureDtype = FeatureDtype.FLOAT16
    trunk_cache_views: int = 0  # augmented views per clip in the trunk cache; 0: the centre view only
    strict: bool = False
    checkpoint_every: int = 0  # also save `last` every N optimiser steps (0: once per epoch)
    max_steps: int | None = None  # stop after this many optimiser steps (saves `last`)
    early_stop: int = 0  # stop when the val metric has not improved for N epochs (0: off; train/stopping.py)
    clip_pool: ClipPool = ClipPool.MEAN
    error_norm: ErrorNorm = ErrorNorm.NONE
    norm_points: tuple[int, int] | None = None
    auc_threshold: float = 0.08
    val_fraction: float = 0.2  # how the data's val split was held out (recorded for evaluate)
    group_by: str | None = None  # --group-by regex of that holdout (recorded for evaluate)

    def to_dict(self) -> dict:
        data = asdict(self)
        return {k: (v.value if isinstance(v, Enum) else v) for k, v in data.items()}

    def metric_options(self) -> MetricOptions:
        return MetricOptions(self.clip_pool, self.error_norm, self.norm_points, self.auc_threshold)

    def record(self) -> TrainingRecord:
        """What a trained model's spec keeps of this run, so evaluation can measure it the same way."""
        return TrainingRecord(
            task=self.task,
            steps=self.steps,
            sampling=self.sampling.value,
            clip_pool=self.clip_pool.value,
            error_norm=self.error_norm.value,
            norm_points=tuple(self.norm_points) if self.norm_points else None,
            auc_threshold=self.auc_threshold,
            val_fraction=self.val_fraction,
            group_by=self.group_by,
        )


def schedule_factor(config: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """The learning-rate factor of each optimiser step (for ``LambdaLR``): linear warm-up, then the schedule."""
    total = max(1, config.epochs * steps_per_epoch)
    warmup = config.warmup_steps

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if config.schedule is ScheduleKind.COSINE:
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        if config.schedule is ScheduleKind.STEP:
            return config.gamma ** ((step // max(1, steps_per_epoch)) // max(1, config.step_epochs))
        return 1.0

    return factor


def param_groups(model: nn.Module, config: TrainConfig) -> list[dict]:
    """Pretrained weights at ``lr * pretrained_lr_mult``, new weights (W_h·, new heads) at ``lr``."""
    new = model.new_parameter_names()
    pretrained, fresh = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (fresh if name in new else pretrained).append(param)
    groups = []
    if pretrained:
        groups.append({"params": pretrained, "lr": config.lr * config.pretrained_lr_mult, "name": "pretrained"})
    if fresh:
        groups.append({"params": fresh, "lr": config.lr, "name": "new"})
    if not groups:
        raise UserInputError("no trainable parameters (everything is frozen); drop --freeze-trunk or convert a layer")
    return groups


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD with momentum (as in the paper) or AdamW over :func:`param_groups`."""
    groups = param_groups(model, config)
    if config.optimizer is OptimizerKind.SGD:
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
