"""``prernn evaluate``: metrics of a trained model on a split of clips."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional

import typer
from rich import box
from rich.table import Table

from prernn_cli.choices import ClipPool, ErrorNorm
from prernn_cli.cli.app import app, handles_errors, literal, print_json, stderr, stdout
from prernn_cli.cli.options import (
    DataOption,
    DeviceOption,
    FloatRange,
    FrameCacheOption,
    GroupByOption,
    JsonOption,
    ModelArchOption,
    SplitFileOption,
    StrictOption,
    TaskOption,
    WorkersOption,
    float_option,
    parse_norm_points,
)

ModelArg = Annotated[
    Path,
    typer.Argument(metavar="MODEL", help="A converted or trained model (.safetensors).", show_default=False),
]
SplitOption = Annotated[str, typer.Option("--split", help="Which split to use: val or train.")]
BatchSizeOption = Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Clips per batch.")]
FROM_TRAINING = "Default: as the model was trained (see `prernn inspect MODEL`)."
EvalStepsOption = Annotated[
    Optional[int],
    typer.Option("--steps", "-T", min=1, help=f"Time steps per clip. {FROM_TRAINING}", show_default=False),
]
# Evaluation takes no random steps: of the samplings, only uniform and dense apply.
SamplingOption = Annotated[
    Optional[Literal["uniform", "dense"]],
    typer.Option(
        "--sampling",
        case_sensitive=False,
        help=f"uniform (T steps spread over each clip) or dense (every window of T steps). {FROM_TRAINING}",
        show_default=False,
    ),
]
EvalValFractionOption = Annotated[
    Optional[float],
    float_option(
        "--val-fraction",
        allowed=FloatRange(0.0, 1.0, high_open=True),
        help=f"Share of each class held out as val when DIR has no train/val folders. {FROM_TRAINING}",
        show_default=False,
    ),
]
NormPointsOption = Annotated[
    Optional[str],
    typer.Option("--norm-points", help=f"regress: two point indices I,J for --error-norm points. {FROM_TRAINING}",
                 show_default=False),
]  # fmt: skip
OutputOption = Annotated[
    Optional[Path],
    typer.Option(
        "--output",
        "-o",
        help="Folder for confusion_<split>.png and evaluation_<split>.json. Default: none, the metrics are only printed.",
        show_default=False,
    ),
]
ClipPoolOption = Annotated[
    Optional[ClipPool],
    typer.Option(
        "--clip-pool",
        case_sensitive=False,
        help=f"classify: mean of per-step log-probabilities, or last step. {FROM_TRAINING}",
        show_default=False,
    ),
]
ErrorNormOption = Annotated[
    Optional[ErrorNorm],
    typer.Option("--error-norm", case_sensitive=False, help=f"regress: none, bbox or points. {FROM_TRAINING}",
                 show_default=False),
]  # fmt: skip
AucThresholdOption = Annotated[
    Optional[float],
    float_option("--auc-threshold", allowed=FloatRange(0.0, low_open=True),
                 help=f"regress: upper error limit of the AUC. {FROM_TRAINING}", show_default=False),
]  # fmt: skip


@app.command(
    "evaluate",
    help="Metrics of a trained model on a split of clips: accuracy/top-5 (classify), mean error/AUC (regress) "
    "or sequence accuracy (ctc), per-class accuracy and a confusion matrix PNG (with -o).\n\n"
    "Example: prernn evaluate runs/gru_sih/best.safetensors --data sample_models/clips --split val -o runs/gru_sih",
)
@handles_errors
def evaluate_command(
    model_path: ModelArg,
    data: DataOption,
    split: SplitOption = "val",
    task: TaskOption = None,
    steps: EvalStepsOption = None,
    batch_size: BatchSizeOption = 8,
    sampling: SamplingOption = None,
    output_dir: OutputOption = None,
    clip_pool: ClipPoolOption = None,
    error_norm: ErrorNormOption = None,
    norm_points: NormPointsOption = None,
    auc_threshold: AucThresholdOption = None,
    device: DeviceOption = "auto",
    workers: WorkersOption = 0,
    frame_cache: FrameCacheOption = None,
    strict: StrictOption = False,
    val_fraction: EvalValFractionOption = None,
    split_file: SplitFileOption = None,
    group_by: GroupByOption = None,
    arch: ModelArchOption = None,
    json_output: JsonOption = False,
) -> None:
    from prernn_cli.checkpoint import load_converted
    from prernn_cli.evaluate import evaluate, evaluation_settings, report_names
    from prernn_cli.files import refuse_folder_over_inputs

    if output_dir is not None:
        refuse_folder_over_inputs(output_dir, report_names(split), model_path, data)
    model = load_converted(model_path, user_class=arch)
    settings = evaluation_settings(
        model.spec, steps=steps, sampling=sampling, val_fraction=val_fraction, clip_pool=clip_pool,
        error_norm=error_norm, norm_points=parse_norm_points(norm_points), auc_threshold=auc_threshold,
    )  # fmt: skip
    for difference in settings.differences:
        stderr.print(f"note: evaluating with {literal(difference)}", soft_wrap=True)
    result = evaluate(
        model, data, split=split, settings=settings, batch_size=batch_size, task=task, workers=workers,
        device=device, output_dir=output_dir, strict=strict, frame_cache=frame_cache, split_file=split_file,
        group_by=group_by,
    )  # fmt: skip
    if json_output:
        print_json(result.to_dict())
        return
    _render_evaluation(result, f"{model_path.name} on {data} ({split})")


def _render_evaluation(result, title: str) -> None:
    stdout.print(f"[bold]{literal(title)}[/]", soft_wrap=True)  # above the table: the table's width would wrap it
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("metric", overflow="fold")
    table.add_column("value", justify="right")
    for key, value in result.metrics.items():
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    stdout.print(table)
    if result.per_class_accuracy:
        per_class = Table(title="per-class accuracy", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
        per_class.add_column("class", overflow="fold")
        per_class.add_column("accuracy", justify="right")
        for name, value in result.per_class_accuracy.items():
            per_class.add_row(literal(name), "-" if value is None else f"{value:.3f}")
        stdout.print(per_class)
    if result.skipped:
        stderr.print(
            f"[yellow]{len(result.skipped)} clip(s) skipped[/]: " + literal(", ".join(p for p, _ in result.skipped[:5]))
        )
    for name, path in result.files.items():
        stdout.print(f"{name}: {literal(path)}", soft_wrap=True)
