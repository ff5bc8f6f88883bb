"""``prernn fuse``: late fusion of streams, each model on its own data folder, class probabilities averaged."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich import box
from rich.table import Table

from prernn_cli.cli.app import app, handles_errors, literal, print_json, stdout
from prernn_cli.cli.options import DeviceOption, JsonOption, StrictOption, WorkersOption

ModelsArg = Annotated[
    list[Path],
    typer.Argument(
        metavar="MODEL",
        help="Two or more trained classification models (.safetensors written by `prernn train`), one per stream.",
        show_default=False,
    ),
]
StreamDataOption = Annotated[
    list[Path],
    typer.Option(
        "--data",
        "-d",
        metavar="DIR",
        help="Each stream's clips, once per MODEL in the same order (its modality: colour, depth, flow...). "
        "Folders hold the same clip names; clips are matched by their path inside the folder.",
        show_default=False,
    ),
]
WeightsOption = Annotated[
    Optional[str],
    typer.Option(
        "--weights",
        "-w",
        help="One weight per MODEL, comma-separated, e.g. 2,1 (normalised to sum to 1). Default: equal weights.",
        show_default=False,
    ),
]
SplitOption = Annotated[str, typer.Option("--split", help="Which split to use: val or train.")]
BatchSizeOption = Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Clips per batch.")]
OutputOption = Annotated[
    Optional[Path],
    typer.Option(
        "--output",
        "-o",
        help="Folder for fusion_<split>.json (per-clip fused and stream probabilities). Default: none, the metrics are "
        "only printed.",
        show_default=False,
    ),
]


@app.command(
    "fuse",
    help="Late fusion: evaluate each MODEL on its own --data (as `prernn evaluate` does, with the settings its "
    "training recorded), then average the streams' clip class probabilities (softmax of each clip's pooled "
    "score), weighted by --weights. Prints each stream's metrics beside the fused ones.\n\n"
    "Example: prernn fuse rgb/best.safetensors depth/best.safetensors --data clips_rgb --data clips_depth",
)
@handles_errors
def fuse_command(
    models: ModelsArg,
    data: StreamDataOption,
    weights: WeightsOption = None,
    split: SplitOption = "val",
    batch_size: BatchSizeOption = 8,
    output_dir: OutputOption = None,
    device: DeviceOption = "auto",
    workers: WorkersOption = 0,
    strict: StrictOption = False,
    json_output: JsonOption = False,
) -> None:
    from prernn_cli.checkpoint import load_converted
    from prernn_cli.files import refuse_folder_over_inputs
    from prernn_cli.fusion import fuse, parse_weights, report_name

    stream_weights = parse_weights(weights, len(models))  # before loading anything: the cheapest mistake
    if output_dir is not None:
        refuse_folder_over_inputs(output_dir, [report_name(split)], *models, *data)
    loaded = [load_converted(path) for path in models]
    result = fuse(
        loaded, data, stream_weights, names=[str(m) for m in models], split=split, output_dir=output_dir,
        batch_size=batch_size, device=device, workers=workers, strict=strict,
    )  # fmt: skip
    if json_output:
        print_json(result.to_dict(per_clip=False))
        return
    _render_fusion(result)


def _render_fusion(result) -> None:
    stdout.print(
        f"[bold]late fusion ({result.split})[/]: weighted mean of the streams' clip class probabilities", soft_wrap=True
    )
    for index, (model, data) in enumerate(zip(result.names, result.data), start=1):
        stdout.print(f"stream {index}: {literal(model)} on {literal(data)}", soft_wrap=True)
    metrics = [key for key in ("accuracy", "top5") if key in result.metrics]
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("stream")
    for column in ("weight", "clips", *metrics):
        table.add_column(column, justify="right")
    for index, (weight, stream) in enumerate(zip(result.weights, result.streams), start=1):
        values = [f"{stream.metrics[key]:.4f}" for key in metrics]
        table.add_row(str(index), f"{weight:.3f}", str(stream.metrics["clips"]), *values)
    fused = [f"{result.metrics[key]:.4f}" for key in metrics]
    table.add_row("[bold]fused[/]", "", str(result.metrics["clips"]), *fused)
    stdout.print(table)
    for name, path in result.files.items():
        stdout.print(f"{name}: {literal(path)}", soft_wrap=True)
