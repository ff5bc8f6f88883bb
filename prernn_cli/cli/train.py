"""``prernn train``: fine-tune a converted model on clips, with progress bars on stderr."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich import box
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Column, Table

from prernn_cli.choices import ClipPool, ErrorNorm, FeatureDtype, OptimizerKind, Sampling, ScheduleKind
from prernn_cli.cli.app import app, handles_errors, literal, print_json, stderr, stdout
from prernn_cli.cli.options import (
    MAX_SEED,
    DataOption,
    DeviceOption,
    EarlyStopOption,
    FloatRange,
    FrameCacheOption,
    GroupByOption,
    InputSizeOption,
    JsonOption,
    ModelArchOption,
    SnippetLengthOption,
    SplitFileOption,
    StrictOption,
    TaskOption,
    TrainStepsOption,
    ValFractionOption,
    WorkersOption,
    float_option,
    parse_norm_points,
)
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
LrOption = Annotated[
    float,
    float_option(
        "--lr", allowed=FloatRange(0.0, low_open=True), help="Learning rate of new weights (W_h·, new heads)."
    ),
]
PretrainedLrMultOption = Annotated[
    float,
    float_option(
        "--pretrained-lr-mult",
        allowed=FloatRange(0.0),
        help="Learning rate of pretrained weights = --lr x this (0: pretrained weights stay fixed).",
    ),
]
MomentumOption = Annotated[
    float, float_option("--momentum", allowed=FloatRange(0.0, 1.0, high_open=True), help="SGD momentum.")
]
WeightDecayOption = Annotated[float, float_option("--weight-decay", allowed=FloatRange(0.0), help="Weight decay.")]
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
GammaOption = Annotated[
    float, float_option("--gamma", allowed=FloatRange(0.0, 1.0, low_open=True), help="Step schedule: decay factor.")
]
ClipGradOption = Annotated[
    float, float_option("--clip-grad", allowed=FloatRange(0.0), help="Clip the gradient norm to this (0: off).")
]
FreezeTrunkOption = Annotated[
    bool,
    typer.Option(
        "--freeze-trunk",
        help="Train only the recurrent layers and the head (trunk weights and BatchNorm statistics fixed).",
    ),
]
TrunkCacheOption = Annotated[
    Optional[Path],
    typer.Option(
        "--trunk-cache",
        help="With --freeze-trunk: compute the trunk's outputs (the first converted layer's input) once per clip and "
        "keep them in this folder; epochs then run only the recurrent layers and above. Spatial augmentation is off "
        "(one centre-cropped view per clip; random temporal sampling stays) unless --trunk-cache-views K.",
        show_default=False,
    ),
]
TrunkCacheDtypeOption = Annotated[
    FeatureDtype,
    typer.Option(
        "--trunk-cache-dtype",
        case_sensitive=False,
        help="How the trunk cache stores outputs: float16 (half the disk) or float32 (training exactly as without it).",
    ),
]
TrunkCacheViewsOption = Annotated[
    int,
    typer.Option(
        "--trunk-cache-views",
        min=0,
        help="Augmented views per clip in the trunk cache: view k's crop (and flip) is fixed by (seed, clip, k), each "
        "epoch picks one view per clip (0: the centre view only).",
    ),
]
SeedOption = Annotated[
    int, typer.Option("--seed", min=0, max=MAX_SEED, help="Seed of sampling, augmentation and dropout.")
]
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
OverwriteOption = Annotated[
    bool,
    typer.Option("--overwrite", help="Replace the run already in -o DIR (its checkpoints and records) with a new one."),
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
    float,
    float_option(
        "--auc-threshold",
        allowed=FloatRange(0.0, low_open=True),
        help="regress: upper error limit of the cumulative error curve's AUC.",
    ),
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
    steps: TrainStepsOption = 8,
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
    trunk_cache: TrunkCacheOption = None,
    trunk_cache_dtype: TrunkCacheDtypeOption = FeatureDtype.FLOAT16,
    trunk_cache_views: TrunkCacheViewsOption = 0,
    strict: StrictOption = False,
    val_fraction: ValFractionOption = 0.2,
    split_file: SplitFileOption = None,
    group_by: GroupByOption = None,
    checkpoint_every: CheckpointEveryOption = 0,
    max_steps: MaxStepsOption = None,
    early_stop: EarlyStopOption = 0,
    resume: ResumeOption = None,
    overwrite: OverwriteOption = False,
    clip_pool: ClipPoolOption = ClipPool.MEAN,
    error_norm: ErrorNormOption = ErrorNorm.NONE,
    norm_points: NormPointsOption = None,
    auc_threshold: AucThresholdOption = 0.08,
    arch: ModelArchOption = None,
    input_size: InputSizeOption = None,
    snippet_length: SnippetLengthOption = None,
    json_output: JsonOption = False,
) -> None:
    _train(**locals())


def _train(
    model_path: Path, data: Path, output_dir: Path, *, task, val_fraction, split_file, group_by, arch, input_size,
    snippet_length, trunk_cache, trunk_cache_dtype, trunk_cache_views, norm_points, flip_pairs, clip_grad,
    frame_cache, resume, overwrite, json_output, **settings,
) -> None:  # fmt: skip
    """Load the data and the model (resized when asked), build the run's config, train, report."""
    from prernn_cli.data import parse_flip_pairs
    from prernn_cli.files import refuse_folder_over_inputs
    from prernn_cli.input_size import resize_model
    from prernn_cli.train import RUN_FILE_NAMES, TrainConfig

    refuse_folder_over_inputs(output_dir, RUN_FILE_NAMES, model_path, data)
    cache = _trunk_cache_settings(trunk_cache, trunk_cache_dtype, trunk_cache_views, model_path, data)
    points = parse_norm_points(norm_points)
    model, splits = _load(model_path, data, val_fraction, task, arch, split_file, group_by)
    model = resize_model(model, input_size, snippet_length, user_class=arch)  # exit 2 where the network can't
    config = TrainConfig(
        task=splits.task, flip_pairs=parse_flip_pairs(flip_pairs), clip_grad=clip_grad or None,
        frame_cache=str(frame_cache) if frame_cache else None, **cache, norm_points=points,
        val_fraction=val_fraction, group_by=group_by if split_file is None else None, **settings,
    )  # fmt: skip
    result = _train_with_progress(model, splits, output_dir, config, resume, overwrite, quiet=json_output)
    if result is not None:  # None: a DDP process other than the main one, which reports
        _report(result, json_output, f"{model_path.name} on {data}", output_dir)


def _trunk_cache_settings(folder: Path | None, dtype: FeatureDtype, views: int, *inputs: Path) -> dict:
    """The trunk cache's settings of the run's config; a cache folder inside an input folder is refused."""
    if folder is not None:
        from prernn_cli.files import refuse_overwriting

        refuse_overwriting(folder, *inputs, option="--trunk-cache")
    return {"trunk_cache": str(folder) if folder else None, "trunk_cache_dtype": dtype, "trunk_cache_views": views}


def _report(result, json_output: bool, title: str, output_dir: Path) -> None:
    """The run's result on stdout: one JSON document, or the epoch table and the files written."""
    if json_output:
        print_json(result.to_dict())
    else:
        _render_training(result, title, output_dir)


def _load(
    model_path: Path,
    data: Path,
    val_fraction: float,
    task: Task | None,
    arch: str | None,
    split_file: Path | None = None,
    group_by: str | None = None,
):
    """The clips (regression targets checked up front), then the model (``arch``: the user class it may need)."""
    from prernn_cli.checkpoint import load_converted
    from prernn_cli.data import check_targets, discover

    splits = discover(data, val_fraction=val_fraction, task=task, split_file=split_file, group_by=group_by)
    check_targets(splits)
    return load_converted(model_path, user_class=arch), splits


def _train_with_progress(model, splits, output_dir: Path, config, resume: Path | None, overwrite: bool, quiet: bool):
    """Run ``train`` with progress bars (none when quiet); the result on the main process, None on the others."""
    from prernn_cli.train import train

    is_main = int(os.environ.get("RANK", "0")) == 0
    progress = None if quiet or not is_main else _TrainProgress()
    try:
        result = train(model, splits, output_dir, config, resume=resume, progress=progress, overwrite=overwrite)
    finally:
        if progress is not None:
            progress.stop()
    return result if is_main else None


class _TrainProgress:
    """A progress callback for ``train``: rich bars on stderr, one per epoch, and one line per finished epoch."""

    def __init__(self) -> None:
        wraps = {"table_column": Column(overflow="fold")}  # at 80 columns the figures wrap rather than being cut
        self.bars = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}", **wraps), TextColumn("{task.fields[speed]} clips/s", **wraps),
            TextColumn("step {task.fields[step]}", **wraps),
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
                step=event.global_step,
            )  # fmt: skip
        elif event.kind is EventKind.STEP and self.task is not None:
            speed = f"{event.clips_per_s:.1f}" if event.clips_per_s else "-"
            self.bars.update(
                self.task, completed=event.step_in_epoch, loss=f"{event.loss:.4f}", speed=speed, step=event.global_step,
            )  # fmt: skip
        elif event.kind is EventKind.EPOCH_END and event.row:
            self._epoch_line(event.row)

    def _start(self, info: dict) -> None:
        resumed = f", resumed at step {info['resumed_at_step']}" if info.get("resumed_at_step") is not None else ""
        stderr.print(
            f"training on {info.get('device')} (x{info.get('world_size')}): {info.get('train_clips')} train / "
            f"{info.get('val_clips')} val clips, {info.get('steps_per_epoch')} steps per epoch{resumed}"
        )
        if info.get("trunk_cache"):
            stderr.print(literal(info["trunk_cache"]), soft_wrap=True)
        self.bars.start()

    def _epoch_line(self, row: dict) -> None:
        parts = [
            f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
            for k, v in row.items()
            if k.startswith(("train_", "val_")) and v is not None
        ]
        seen = f" (step {row.get('step')}, {row.get('clips_seen')} clips seen)" if "clips_seen" in row else ""
        self.bars.console.print(f"epoch {row['epoch']}{seen}: " + "  ".join(parts))
        if row.get("stopped"):
            self.bars.console.print(literal(row["stopped"]))

    def stop(self) -> None:
        self.bars.stop()


# Counts the lines around the epoch table already give: left out so that it fits 80 columns.
_NOT_IN_EPOCH_TABLE = ("seconds", "train_clips", "val_clips", "skipped", "clips_seen", "stopped")


def _epoch_table(history: list[dict], title: str) -> Table:
    """One row per epoch; headers on two lines (``train`` / ``loss``) and cells folded, never cut."""
    table = Table(title=literal(title), title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    keys = [k for k in history[0] if k not in _NOT_IN_EPOCH_TABLE] if history else []
    for key in keys:
        header = "clips/s" if key == "clips_per_s" else key.replace("_", "\n", 1).replace("_", " ")
        table.add_column(header, justify="right", overflow="fold")
    for row in history:
        table.add_row(*[(f"{row[k]:.4g}" if isinstance(row.get(k), float) else str(row.get(k, ""))) for k in keys])
    return table


def _render_training(result, title: str, output_dir: Path) -> None:
    if result.history:
        stdout.print(_epoch_table(result.history, title))
    if result.skipped:
        stderr.print(
            f"[yellow]{len(result.skipped)} clip(s) skipped[/] (unreadable or too short): "
            + literal(", ".join(p for p, _ in result.skipped[:5]))
        )
    if result.best:
        best = result.best
        stdout.print(
            f"best {best['metric']} {best['score']:.4f} at epoch {best['epoch']} -> {literal(result.files['best'])}"
        )
    if result.stopped_early:
        stdout.print(f"stopped after --max-steps; continue with --resume {literal(output_dir)}")
    elif result.stop_reason.startswith("early stop"):
        stdout.print(literal(result.stop_reason), soft_wrap=True)
    files = {name: literal(path) for name, path in result.files.items()}
    stdout.print(f"last: {files['last']}  metrics: {files['metrics']}  curves: {files['curves']}", soft_wrap=True)
