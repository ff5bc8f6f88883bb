"""``prernn analyze``: gate saturation of a converted LSTM/GRU model on clips (the paper's Figure 2)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from prernn_cli.cli.app import app, handles_errors, print_json, stdout
from prernn_cli.cli.options import JsonOption

ModelArg = Annotated[
    Path,
    typer.Argument(
        help="A converted model (.safetensors saved by prernn convert or train) with LSTM or GRU layers.",
        show_default=False,
    ),
]
ClipsOption = Annotated[
    Path,
    typer.Option(
        "--data",
        "-d",
        help="Clips: DIR/<class>/<clip>, DIR/{train,val}/... (val is used) or a manifest.",
        show_default=False,
    ),
]
ReportFolderOption = Annotated[
    Optional[Path],
    typer.Option(
        "--output",
        "-o",
        help="Report folder for gates.png and summary.json. Default: <MODEL stem>_analysis.",
        show_default=False,
    ),
]
CompareOption = Annotated[
    Optional[Path],
    typer.Option(
        "--compare",
        help="A second model (e.g. TraLSTM vs PreLSTM) analyzed on the same clips and drawn beside the first.",
        show_default=False,
    ),
]
MaxClipsOption = Annotated[
    Optional[int],
    typer.Option(
        "--max-clips", min=1, help="Analyze at most N clips, spread over the classes. Default: all.", show_default=False
    ),
]
SampledStepsOption = Annotated[
    Optional[int],
    typer.Option(
        "--steps",
        min=1,
        help="Sample T evenly spread steps per clip (clips batched). Default: every step of each whole clip.",
        show_default=False,
    ),
]
TorchDeviceOption = Annotated[str, typer.Option("--device", help="Torch device to run on: cpu, cuda, cuda:N.")]


@app.command(
    "analyze",
    help="Gate saturation of a converted LSTM/GRU model on clips: the paper's Figure 2 and its reading.\n\n"
    "A gate unit is left-saturated when its activation is < 0.1, right-saturated when > 0.9. Writes "
    "gates.png (LSTM: per-unit saturation plots of gates i, f, o with the diagonal x + y = 1; GRU: "
    "10-bin histograms of r and z; one row per layer, --compare models side by side) and "
    "summary.json, prints the per-layer/gate table and a one-line reading.\n\n"
    "Example: [bold]prernn analyze pre_lstm.safetensors --data sample_models/clips/val -o report[/]",
    epilog=(
        "Examples:\n\n  prernn analyze pre_lstm.safetensors --data sample_models/clips/val -o report\n\n"
        "  prernn analyze pre_gru.safetensors --compare tra_gru.safetensors --data clips/ --max-clips 50\n\n"
        "  prernn analyze pre_lstm.safetensors --data clips/ --json > summary.json"
    ),
)
@handles_errors
def analyze_command(
    model: ModelArg,
    data: ClipsOption,
    report_dir: ReportFolderOption = None,
    compare: CompareOption = None,
    max_clips: MaxClipsOption = None,
    steps: SampledStepsOption = None,
    device: TorchDeviceOption = "cpu",
    json_output: JsonOption = False,
) -> None:
    from prernn_cli.analyze import analyze

    report = analyze(
        model, data, report_dir=report_dir, compare=compare, max_clips=max_clips, steps=steps, device=device
    )
    if json_output:
        print_json(report.to_dict())
        return
    stdout.print(_saturation_table(report))
    for analysis in report.models:
        skipped = f", {len(analysis.skipped)} skipped" if analysis.skipped else ""
        stdout.print(
            f"[bold]{analysis.label}[/] ({analysis.clips} clips, {analysis.steps} steps{skipped}): {analysis.reading}",
            soft_wrap=True,
        )
    stdout.print(f"wrote {report.figure} and {report.summary}", soft_wrap=True)


def _saturation_table(report) -> Table:
    """One section per model, one row per layer and gate."""
    table = Table(title="Gate saturation (left < 0.1, right > 0.9)", title_justify="left")
    table.add_column("model")
    table.add_column("layer", justify="right")
    table.add_column("gate")
    for column in ("left-sat %", "right-sat %", "unsaturated %"):
        table.add_column(column, justify="right")
    for analysis in report.models:
        for gate in analysis.gates:
            layer = analysis.spec.layers[gate.layer - 1]
            table.add_row(
                analysis.label,
                f"{gate.layer} ({'new' if layer.kind.value == 'new' else layer.name})",
                gate.gate,
                f"{gate.left_pct:.1f}",
                f"{gate.right_pct:.1f}",
                f"{gate.unsaturated_pct:.1f}",
                end_section=gate is analysis.gates[-1],
            )
    return table
