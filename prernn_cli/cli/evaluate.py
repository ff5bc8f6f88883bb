"""``prernn evaluate``: metrics of a trained model on a split of clips."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional

import typer
from rich.table import Table

from prernn_cli.choices import ClipPool, ErrorNorm
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

ModelArg = Annotated[
    Path,
    typer.Argument(metavar="MODEL", help="A converted or trained model (.safetensors).", show_default=False),
]
SplitOption = Annotated[str, typer.Option("--split", help="Which split to use: val or train.")]
BatchSizeOption = Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Clips per batch.")]
# Evaluation takes no random steps: of data.Sampling, only uniform and dense apply.
SamplingOption = Annotated[
    Literal["uniform", "dense"],
    typer.Option(
        "--sampling",
        case_sensitive=False,
        help="uniform (T steps spread over each clip) or dense (every window of T steps).",
    ),
]
OutputOption = Annotated[
    Optional[Path],
    typer.Option(
        "--output", "-o", help="Folder for confusion_<split>.png and evaluation_<split>.json.", show_default=False
    ),
]
ClipPoolOption = Annotated[
    ClipPool,
    typer.Option(
        "--clip-pool", case_sensitive=False, help="classify: mean of per-step log-probabilities, or last step."
    ),
]
ErrorNormOption = Annotated[
    ErrorNorm, typer.Option("--error-norm", case_sensitive=False, help="regress: none, bbox or points.")
]
AucThresholdOption = Annotated[float, typer.Option("--auc-threshold", help="regress: upper error limit of the AUC.")]


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
    steps: StepsOption = 8,
    batch_size: BatchSizeOption = 8,
    sampling: SamplingOption = "uniform",
    output_dir: OutputOption = None,
    clip_pool: ClipPoolOption = ClipPool.MEAN,
    error_norm: ErrorNormOption = ErrorNorm.NONE,
    auc_threshold: AucThresholdOption = 0.08,
    device: DeviceOption = "auto",
    workers: WorkersOption = 0,
    frame_cache: FrameCacheOption = None,
    strict: StrictOption = False,
    val_fraction: ValFractionOption = 0.2,
    json_output: JsonOption = False,
) -> None:
    from prernn_cli.checkpoint import load_converted
    from prernn_cli.evaluate import evaluate
    from prernn_cli.metrics import MetricOptions

    model = load_converted(model_path)
    result = evaluate(
        model, data, split=split, steps=steps, batch_size=batch_size, sampling=sampling, val_fraction=val_fraction,
        task=task, workers=workers, device=device, options=MetricOptions(clip_pool, error_norm, None, auc_threshold),
        output_dir=output_dir, strict=strict, frame_cache=frame_cache,
    )  # fmt: skip
    if json_output:
        print_json(result.to_dict())
        return
    _render_evaluation(result, f"{model_path.name} on {data} ({split})")


def _render_evaluation(result, title: str) -> None:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in result.metrics.items():
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    stdout.print(table)
    if result.per_class_accuracy:
        per_class = Table(title="per-class accuracy")
        per_class.add_column("class")
        per_class.add_column("accuracy", justify="right")
        for name, value in result.per_class_accuracy.items():
            per_class.add_row(name, "-" if value is None else f"{value:.3f}")
        stdout.print(per_class)
    if result.skipped:
        stderr.print(
            f"[yellow]{len(result.skipped)} clip(s) skipped[/]: " + ", ".join(p for p, _ in result.skipped[:5])
        )
    for name, path in result.files.items():
        stdout.print(f"{name}: {path}")
