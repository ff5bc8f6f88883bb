"""``prernn train``: fine-tune a converted model on clips, with progress bars on stderr."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from prernn_cli.choices import ClipPool, ErrorNorm, OptimizerKind, Sampling, ScheduleKind
from prernn_cli.cli.app import app, handles_errors, print_json, stderr, stdout
from prernn_cli.cli.options import (
    DataOption,
    DeviceOption,
    FrameCacheOption,
    JsonOption,
    StepsOption,
    StrictOption,
    TaskOption,
    ValFractionOption,
    WorkersOption,
)
from prernn_cli.errors import UserInputError
from prernn_cli.spec import Task

ModelArg = Annotated[
    Path,
    typer.Argument(
        metavar="MODEL", help="A converted model (.safetensors written by prernn convert or train).", show_default=False
    ),
]
RunFolderOption = Annotated[
    Path, typer.Option("--output", "-o", help="Run folder for checkpoints, metrics and plots.", show_default=False)
]
EpochsOption = Annotated[int, typer.Option("--epochs", "-e", min=1, help="Passes over the training clips.")]
BatchSizeOption = Annotated[
    int, typer.Option("--batch-size", "-b", min=1, help="Clips per batch (per process under DDP).")
]
SamplingOption = Annotated[
    Sampling,
    typer.Option(
        "--sampling",
        case_sensitive=False,
        help="Training steps per clip: random (random stride and offset, in order), uniform, "
        "or dense (consecutive windows; also for validation).",
    ),
]
AugmentOption = Annotated[
    bool, typer.Option("--augment/--no-augment", help="Random translation crops at training time (label-safe).")
]
FlipOption = Annotated[
    bool,
    typer.Option(
        "--flip",
        help="Random horizontal flips. Off by default: a flip turns left into right; use only when labels do not "
        "depend on it, or give --flip-pairs.",
    ),
]
FlipPairsOption = Annotated[
    Optional[str],
    typer.Option(
        "--flip-pairs", help="Classes swapped by a flip, e.g. left:right (implies --flip).", show_default=False
    ),
]
OptimizerOption = Annotated[
    OptimizerKind,
    typer.Option("--optimizer", case_sensitive=False, help="sgd (with momentum, as in the paper) or adamw."),
]
LrOption = Annotated[float, typer.Option("--lr", help="Learning rate of new weights (W_h·, new heads).")]
PretrainedLrMultOption = Annotated[
    float, typer.Option("--pretrained-lr-mult", help="Learning rate of pretrained weights = --lr x this.")
]
MomentumOption = Annotated[float, typer.Option("--momentum", help="SGD momentum.")]
WeightDecayOption = Annotated[float, typer.Option("--weight-decay", help="Weight decay.")]
ScheduleOption = Annotated[
    ScheduleKind,
    typer.Option(
        "--schedule",
        case_sensitive=False,
        help="cosine, step (x --gamma every --step-epochs) or constant, after warm-up.",
    ),
]
WarmupStepsOption = Annotated[
    int, typer.Option("--warmup-steps", min=0, help="Linear learning-rate warm-up, in optimiser steps.")
]
StepEpochsOption = Annotated[int, typer.Option("--step-epochs", min=1, help="Step schedule: epochs between decays.")]
GammaOption = Annotated[float, typer.Option("--gamma", help="Step schedule: decay factor.")]
ClipGradOption = Annotated[float, typer.Option("--clip-grad", help="Clip the gradient norm to this (0: off).")]
FreezeTrunkOption = Annotated[
    bool,
    typer.Option(
        "--freeze-trunk",
        help="Train only the recurrent layers and the head (trunk weights and BatchNorm statistics fixed).",
    ),
]
SeedOption = Annotated[int, typer.Option("--seed", help="Seed of sampling, augmentation and dropout.")]
AmpOption = Annotated[bool, typer.Option("--amp/--no-amp", help="bf16 autocast on CUDA (ignored on CPU).")]
CheckpointEveryOption = Annotated[
    int,
    typer.Option(
        "--checkpoint-every",
        min=0,
        help="Also save `last` every N optimiser steps (0: at the end of each epoch only).",
    ),
]
MaxStepsOption = Annotated[
    Optional[int],
    typer.Option(
        "--max-steps",
        min=1,
        help="Stop after N optimiser steps (saving `last`; --resume continues).",
        show_default=False,
    ),
]
ResumeOption = Annotated[
    Optional[Path],
    typer.Option(
        "--resume",
        help="Continue an interrupted run: its folder (or its last.safetensors).",
        show_default=False,
    ),
]
ClipPoolOption = Annotated[
    ClipPool,
    typer.Option(
        "--clip-pool",
        case_sensitive=False,
        help="classify: clip prediction from the mean of per-step log-probabilities (mean) or the last step (last).",
    ),
]
ErrorNormOption = Annotated[
    ErrorNorm,
    typer.Option(
        "--error-norm",
        case_sensitive=False,
        help="regress: normalise the point error by none, bbox (target box diagonal) "
        "or points (distance of --norm-points).",
    ),
]
NormPointsOption = Annotated[
    Optional[str],
    typer.Option(
        "--norm-points",
        help="regress: two point indices I,J for --error-norm points (68 landmarks: 36,45).",
        show_default=False,
    ),
]
AucThresholdOption = Annotated[
    float, typer.Option("--auc-threshold", help="regress: upper error limit of the cumulative error curve's AUC.")
]


@app.command(
    "train",
    help="Fine-tune a converted model on a folder of clips (or a manifest): classification, per-frame regression "
    "or CTC.\n\n"
    "Writes last/best .safetensors, last.state.pt (for --resume), metrics.jsonl and curves.png to -o DIR. "
    "Under `torchrun --nproc_per_node=N` the same command trains with DDP.\n\n"
    "Example: prernn train gru_sih.safetensors --data sample_models/clips -o runs/gru_sih --epochs 5 --steps 8",
)
@handles_errors
def train_command(
    model_path: ModelArg,
    data: DataOption,
    output_dir: RunFolderOption,
    task: TaskOption = None,
    epochs: EpochsOption = 10,
    batch_size: BatchSizeOption = 8,
    steps: StepsOption = 8,
    sampling: SamplingOption = Sampling.RANDOM,
    augment: AugmentOption = True,
    flip: FlipOption = False,
    flip_pairs: FlipPairsOption = None,
    optimizer: OptimizerOption = OptimizerKind.SGD,
    lr: LrOption = 0.01,
    pretrained_lr_mult: PretrainedLrMultOption = 1.0,
    momentum: MomentumOption = 0.9,
    weight_decay: WeightDecayOption = 5e-4,
    schedule: ScheduleOption = ScheduleKind.COSINE,
    warmup_steps: WarmupStepsOption = 0,
    step_epochs: StepEpochsOption = 10,
    gamma: GammaOption = 0.1,
    clip_grad: ClipGradOption = 5.0,
    freeze_trunk: FreezeTrunkOption = False,
    seed: SeedOption = 0,
    device: DeviceOption = "auto",
    amp: AmpOption = True,
    workers: WorkersOption = 2,
    frame_cache: FrameCacheOption = None,
    strict: StrictOption = False,
    val_fraction: ValFractionOption = 0.2,
    checkpoint_every: CheckpointEveryOption = 0,
    max_steps: MaxStepsOption = None,
    resume: ResumeOption = None,
    clip_pool: ClipPoolOption = ClipPool.MEAN,
    error_norm: ErrorNormOption = ErrorNorm.NONE,
    norm_points: NormPointsOption = None,
    auc_threshold: AucThresholdOption = 0.08,
    json_output: JsonOption = False,
) -> None:
    from prernn_cli.data import parse_flip_pairs
    from prernn_cli.train import TrainConfig

    points = _parse_norm_points(norm_points)
    model, splits = _load(model_path, data, val_fraction, task)
    config = TrainConfig(
        task=splits.task, epochs=epochs, batch_size=batch_size, steps=steps, sampling=sampling, augment=augment,
        flip=flip, flip_pairs=parse_flip_pairs(flip_pairs), optimizer=optimizer, lr=lr, momentum=momentum,
        weight_decay=weight_decay, schedule=schedule, warmup_steps=warmup_steps, step_epochs=step_epochs, gamma=gamma,
        clip_grad=clip_grad or None, pretrained_lr_mult=pretrained_lr_mult, freeze_trunk=freeze_trunk, seed=seed,
        device=device, amp=amp, workers=workers, frame_cache=str(frame_cache) if frame_cache else None, strict=strict,
        checkpoint_every=checkpoint_every, max_steps=max_steps, clip_pool=clip_pool, error_norm=error_norm,
        norm_points=points, auc_threshold=auc_threshold,
    )  # fmt: skip
    result = _train_with_progress(model, splits, output_dir, config, resume, quiet=json_output)
    if result is None:  # a DDP process other than the main one: the main one reports
        return
    if json_output:
        print_json(result.to_dict())
        return
    _render_training(result, f"{model_path.name} on {data}", output_dir)


def _parse_norm_points(text: str | None) -> tuple[int, int] | None:
    """``--norm-points 36,45`` as two point indices."""
    if not text:
        return None
    try:
        i, j = (int(v) for v in text.split(","))
    except ValueError:
        raise UserInputError(f"--norm-points {text!r} must be two indices I,J, e.g. 36,45") from None
    return i, j


def _load(model_path: Path, data: Path, val_fraction: float, task: Task | None):
    """The clips (regression targets checked up front), then the model."""
    from prernn_cli.checkpoint import load_converted
    from prernn_cli.data import check_targets, discover

    splits = discover(data, val_fraction=val_fraction, task=task)
    check_targets(splits)
    return load_converted(model_path), splits


def _train_with_progress(model, splits, output_dir: Path, config, resume: Path | None, quiet: bool):
    """Run ``train`` with progress bars (none when quiet); the result on the main process, None on the others."""
    from prernn_cli.train import train

    is_main = int(os.environ.get("RANK", "0")) == 0
    progress = None if quiet or not is_main else _TrainProgress()
    try:
        result = train(model, splits, output_dir, config, resume=resume, progress=progress)
    finally:
        if progress is not None:
            progress.stop()
    return result if is_main else None


class _TrainProgress:
    """A progress callback for ``train``: rich bars on stderr, one per epoch, and one line per finished epoch."""

    def __init__(self) -> None:
        self.bars = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[speed]} clips/s"),
            TimeElapsedColumn(), TimeRemainingColumn(), console=stderr, transient=False,
        )  # fmt: skip
        self.task = None

    def __call__(self, event) -> None:
        from prernn_cli.train import EventKind

        if event.kind is EventKind.START:
            self._start(event.info or {})
        elif event.kind is EventKind.EPOCH_START:
            self.task = self.bars.add_task(
                f"epoch {event.epoch + 1}/{event.epochs}",
                total=event.steps_in_epoch, completed=event.step_in_epoch, loss="-", speed="-",
            )  # fmt: skip
        elif event.kind is EventKind.STEP and self.task is not None:
            speed = f"{event.clips_per_s:.1f}" if event.clips_per_s else "-"
            self.bars.update(self.task, completed=event.step_in_epoch, loss=f"{event.loss:.4f}", speed=speed)
        elif event.kind is EventKind.EPOCH_END and event.row:
            self._epoch_line(event.row)

    def _start(self, info: dict) -> None:
        resumed = f", resumed at step {info['resumed_at_step']}" if info.get("resumed_at_step") is not None else ""
        stderr.print(
            f"training on {info.get('device')} (x{info.get('world_size')}): {info.get('train_clips')} train / "
            f"{info.get('val_clips')} val clips, {info.get('steps_per_epoch')} steps per epoch{resumed}"
        )
        self.bars.start()

    def _epoch_line(self, row: dict) -> None:
        parts = [
            f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
            for k, v in row.items()
            if k.startswith(("train_", "val_")) and v is not None
        ]
        self.bars.console.print(f"epoch {row['epoch']}: " + "  ".join(parts))

    def stop(self) -> None:
        self.bars.stop()


def _epoch_table(history: list[dict], title: str) -> Table:
    table = Table(title=title)
    keys = [k for k in history[0] if k not in ("seconds",)] if history else []
    for key in keys:
        table.add_column(key.replace("_", " "), justify="right")
    for row in history:
        table.add_row(*[(f"{row[k]:.4g}" if isinstance(row.get(k), float) else str(row.get(k, ""))) for k in keys])
    return table


def _render_training(result, title: str, output_dir: Path) -> None:
    if result.history:
        stdout.print(_epoch_table(result.history, title))
    if result.skipped:
        stderr.print(
            f"[yellow]{len(result.skipped)} clip(s) skipped[/] (unreadable or too short): "
            + ", ".join(p for p, _ in result.skipped[:5])
        )
    if result.best:
        best = result.best
        stdout.print(f"best {best['metric']} {best['score']:.4f} at epoch {best['epoch']} -> {result.files['best']}")
    if result.stopped_early:
        stdout.print(f"stopped after --max-steps; continue with --resume {output_dir}")
    stdout.print(f"last: {result.files['last']}  metrics: {result.files['metrics']}  curves: {result.files['curves']}")
