"""``prernn analyze``: gate saturation of a converted LSTM/GRU model on clips (the paper's Figure 2)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich import box
from rich.table import Table

from prernn_cli.cli.app import app, handles_errors, literal, print_json, stdout
from prernn_cli.cli.options import DeviceOption, JsonOption, ModelArchOption, SplitFileOption

ModelArg = Annotated[
    Path,
    typer.Argument(
        metavar="MODEL",
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
CompareArchOption = Annotated[
    Optional[str],
    typer.Option(
        "--compare-arch",
        metavar="PACKAGE.MODULE:CALLABLE",
        help="--arch for the --compare model: only for a model built on your own class.",
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
        "-T",
        min=1,
        help="Sample T evenly spread steps per clip (clips batched). Default: every step of each whole clip.",
        show_default=False,
    ),
]


@app.command(
    "analyze",
    help="Gate saturation of a converted LSTM/GRU model on clips: the paper's Figure 2 and its reading.\n\n"
    "A gate unit is left-saturated when its activation is < 0.1, right-saturated when > 0.9. Writes "
    "gates.png (LSTM: per-unit saturation plots of gates i, f, o with the diagonal x + y = 1; GRU: "
    "10-bin histograms of r and z; one row per layer, --compare models side by side) and "
    "summary.json, prints the per-layer/gate table, each model's task metric on the same clips, and a one-line "
    "reading (none on memory for a model no better than chance there).\n\n"
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
    device: DeviceOption = "auto",
    arch: ModelArchOption = None,
    compare_arch: CompareArchOption = None,
    split_file: SplitFileOption = None,
    json_output: JsonOption = False,
) -> None:
    from prernn_cli.analyze import analyze

    report = analyze(
        model, data, report_dir=report_dir, compare=compare, max_clips=max_clips, steps=steps, device=device,
        arch=arch, compare_arch=compare_arch, split_file=split_file,
    )  # fmt: skip
    if json_output:
        print_json(report.to_dict())
        return
    stdout.print(_saturation_table(report))
    stdout.print(_performance_table(report))
    for analysis in report.models:
        skipped = f", {len(analysis.skipped)} skipped" if analysis.skipped else ""
        stdout.print(
            f"[bold]{literal(analysis.label)}[/] ({analysis.clips} clips, {analysis.steps} steps{skipped}): "
            f"{literal(analysis.reading)}",
            soft_wrap=True,
        )
    stdout.print(f"wrote {literal(report.figure)} and {literal(report.summary)}", soft_wrap=True)


def _saturation_table(report) -> Table:
    """One section per model, one row per layer and gate; at 80 columns a long name wraps, it is never cut."""
    table = Table(
        title="Gate saturation (left < 0.1, right > 0.9)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        show_edge=False,
    )
    table.add_column("model", overflow="fold")
    table.add_column("layer", overflow="fold")
    table.add_column("gate", overflow="fold")
    for column in ("left-sat %", "right-sat %", "unsaturated %"):
        table.add_column(column, justify="right", overflow="fold")
    for analysis in report.models:
        for gate in analysis.gates:
            layer = analysis.spec.layers[gate.layer - 1]
            table.add_row(
                literal(analysis.label),
                literal(f"{gate.layer} ({'new' if layer.kind.value == 'new' else layer.name})"),
                gate.gate,
                f"{gate.left_pct:.1f}",
                f"{gate.right_pct:.1f}",
                f"{gate.unsaturated_pct:.1f}",
                end_section=gate is analysis.gates[-1],
            )
    return table


def _performance_table(report) -> Table:
    """Each model's task metric on the analysed clips beside chance, and whether its gate reading holds."""
    title = "Task metric on the same clips (chance: the best constant prediction)"
    table = Table(
        title=title,
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        show_edge=False,
        min_width=len(title),  # the title stays one line however narrow the values make the table
    )
    for column in ("model", "clips", "metric", "value", "chance", "gate reading"):
        table.add_column(column, justify="left" if column in ("model", "metric", "gate reading") else "right")
    for analysis in report.models:
        performance = analysis.performance
        if performance is None or not performance.measured:
            note = performance.note if performance is not None else "not measured"
            table.add_row(literal(analysis.label), str(analysis.clips), "-", "-", "-", literal(f"unchecked: {note}"))
            continue
        holds = "holds" if analysis.memory_reading_holds else "none: at chance"
        table.add_row(
            literal(analysis.label),
            str(performance.clips),
            performance.metric,
            f"{performance.value:.3f}",
            f"{performance.chance:.3f}",
            holds,
        )
    return table
