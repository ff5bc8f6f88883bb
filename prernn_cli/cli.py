"""The ``prernn`` command line: parse, call one library function, render.

Only this module imports typer and renders with rich. Library errors
(:class:`~prernn_cli.errors.PrernnError`) become one line on stderr and the
error's exit code; nothing else is caught, so a real bug still shows its
traceback.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer
from rich.console import Console

from prernn_cli import __version__
from prernn_cli.errors import PrernnError

app = typer.Typer(
    name="prernn",
    help="Make pretrained CNNs recurrent (PreRNN, CVPR 2018): inspect, convert, train, export.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)
stdout = Console(highlight=False)
stderr = Console(stderr=True, highlight=False)

# ---------------------------------------------------------------- shared options
CheckpointArg = Annotated[Path, typer.Argument(help="Checkpoint: state_dict (.pt/.pth), TorchScript, safetensors, or a prernn model.", show_default=False)]
ArchOption = Annotated[Optional[str], typer.Option("--arch", help="Architecture: a torchvision model name, c3d, digit_vgg/digit_resnet/digit_c3d, or package.module:callable. Identified from the weights when omitted.")]
TrustPickleOption = Annotated[bool, typer.Option("--trust-pickle", help="Allow loading a whole pickled nn.Module. Unpickling runs code from the file: only for files you trust.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout and nothing else.")]
LayerOption = Annotated[str, typer.Option("--layer", "-l", help="Layer(s) to convert, comma-separated: dotted names or paper aliases (fc6, fc7, res5c).")]
OutputOption = Annotated[Path, typer.Option("--output", "-o", help="Output file.")]


def _fail(error: PrernnError) -> None:
    message = str(error).splitlines()[0] if str(error) else type(error).__name__
    stderr.print(f"[bold red]error:[/] {message}", soft_wrap=True)
    raise typer.Exit(code=error.exit_code)


def handles_errors(command: Callable) -> Callable:
    """Turn known library errors into one line on stderr and their exit code."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except PrernnError as error:
            _fail(error)

    return wrapper


def print_json(document) -> None:
    """Print one JSON document on stdout, nothing else."""
    sys.stdout.write(json.dumps(document, indent=2, sort_keys=False, default=str) + "\n")


def _version_callback(value: bool) -> None:
    if value:
        stdout.print(f"prernn {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="Show the version and exit.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details on stderr.")] = False,
) -> None:
    """Make pretrained CNNs recurrent (PreRNN, CVPR 2018).

    Typical flow: [bold]inspect[/] a checkpoint, [bold]convert[/] a layer into a Pre-cell,
    [bold]train[/] on a folder of clips, [bold]export[/] to ONNX and [bold]stream[/] a video.
    """
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


# ---------------------------------------------------------------- inspect (issue 2)

# ---------------------------------------------------------------- params (issue 2)

OptionalCheckpointArg = Annotated[Optional[Path], typer.Argument(help="Checkpoint to size (any format `inspect` reads). Omit it and give --arch to size an architecture with random weights.", show_default=False)]
CellsOption = Annotated[Optional[list[str]], typer.Option("--cell", "-c", metavar="CELL", help="Cell(s) to account: vrnn, lstm, gru (repeat or comma-separate). Default: all three.", show_default=False)]
TraditionalLayersOption = Annotated[Optional[int], typer.Option("--traditional-layers", min=1, metavar="N", help="Traditional layers stacked on the feature vector, sized together to match PreRNN's count. Default 1, what `convert --traditional` builds; 2 sizes the paper's 2-layer TraRNN.", show_default=False)]


@app.command(
    "params",
    epilog="Examples:\n\n  prernn params --arch vgg16 --layer fc6,fc7\n\n  prernn params --arch resnet50 --layer res5c --cell lstm --json\n\n  prernn params sample_models/digit_vgg.pt --layer fc6",
)
@handles_errors
def params_command(
    checkpoint: OptionalCheckpointArg = None,
    layer: LayerOption = ...,
    arch: ArchOption = None,
    cell: CellsOption = None,
    traditional_layers: TraditionalLayersOption = None,
    trust_pickle: TrustPickleOption = False,
    json_output: JsonOption = False,
) -> None:
    """Count recurrent parameters of traditional, PreRNN and PreRNN-SIH designs (the paper's Table 3).

    For every cell (VRNN, LSTM, GRU) × design: recurrent parameters (weights only, Table 3's definition, and with biases), total model parameters, the SIH÷PreRNN ratio, and the hidden size a traditional layer needs to match PreRNN's count. Without a CHECKPOINT, --arch NAME is sized with random weights (nothing is downloaded).

    Example: [bold]prernn params --arch vgg16 --layer fc6,fc7[/]
    """
    from prernn_cli.params import account_checkpoint, parse_cells, parse_layer_names

    report = account_checkpoint(
        checkpoint,
        parse_layer_names(layer),
        arch=arch,
        cells=parse_cells(cell),
        traditional_layers=traditional_layers,
        trust_pickle=trust_pickle,
    )
    if json_output:
        print_json(report.to_dict())
        return
    _render_params(report)


def _render_params(report) -> None:
    from rich import box
    from rich.table import Table

    from prernn_cli.params import HUMAN_COUNTING_NOTE as PARAMS_NOTE

    stdout.print(
        f"[bold]architecture[/] {report.architecture or 'unknown'}   [bold]base parameters[/] {report.base_params:,}   "
        f"[bold]feature size[/] {report.feature_size}"
    )
    for shape in report.layers:
        bias = "bias" if shape.bias else "no bias"
        if shape.batchnorm_params:
            bias += f", BatchNorm ({shape.batchnorm_params:,})"
        stdout.print(f"  {shape.label}: {shape.kind.value} {shape.input_size} → {shape.hidden_size}, |W| = {shape.weight_numel:,}, {bias}", soft_wrap=True)
    table = Table(title="Recurrent parameters (Table 3)", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("cell", no_wrap=True)
    table.add_column("design", no_wrap=True)
    table.add_column("hidden", justify="right", no_wrap=True)
    table.add_column("recurrent\n(weights)", justify="right", no_wrap=True)
    table.add_column("recurrent\n(+biases)", justify="right", no_wrap=True)
    table.add_column("total\nmodel", justify="right", no_wrap=True)
    table.add_column("SIH ÷\nPreRNN", justify="right", no_wrap=True)
    for accounting in report.cells:
        for count in accounting.designs:
            if not count.available:
                table.add_row(accounting.cell.value, count.design.value, "n/a", "n/a", "n/a", "n/a", "n/a", style="dim")
                continue
            hidden = ", ".join(str(h) for h in dict.fromkeys(count.hidden_sizes))
            if count.num_layers and count.num_layers > 1 and len(set(count.hidden_sizes)) == 1:
                hidden = f"{count.num_layers}×{hidden}"
            ratio = ""
            if count.design.value == "sih" and accounting.sih_over_prernn is not None:
                ratio = f"{accounting.sih_over_prernn:.2f}×"
            table.add_row(
                accounting.cell.value,
                count.design.value,
                hidden,
                f"{count.recurrent_params:,}",
                f"{count.recurrent_params_with_biases:,}",
                f"{count.total_params:,}",
                ratio,
                end_section=count is accounting.designs[-1],
            )
    stdout.print(table)
    stdout.print(f"[dim]{report.traditional_note}.[/]", soft_wrap=True)
    stdout.print(f"[dim]{PARAMS_NOTE}[/]", soft_wrap=True)

# ---------------------------------------------------------------- convert (issue 3)

# ---------------------------------------------------------------- train / evaluate (issue 4)

# ---------------------------------------------------------------- export / validate / stream (issue 5)

# ---------------------------------------------------------------- analyze (issue 6)

AnalyzeModelArg = Annotated[Path, typer.Argument(help="A converted model (.safetensors saved by prernn convert or train) with LSTM or GRU layers.", show_default=False)]


@app.command(
    "analyze",
    epilog=(
        "Examples:\n\n  prernn analyze pre_lstm.safetensors --data sample_models/clips/val -o report\n\n"
        "  prernn analyze pre_gru.safetensors --compare tra_gru.safetensors --data clips/ --max-clips 50\n\n"
        "  prernn analyze pre_lstm.safetensors --data clips/ --json > summary.json"
    ),
)
@handles_errors
def analyze_command(
    model: AnalyzeModelArg,
    data: Annotated[Path, typer.Option("--data", "-d", help="Clips: DIR/<class>/<clip>, DIR/{train,val}/... (val is used) or a manifest.", show_default=False)],
    report_dir: Annotated[Optional[Path], typer.Option("--output", "-o", help="Report folder for gates.png and summary.json. Default: <MODEL stem>_analysis.", show_default=False)] = None,
    compare: Annotated[Optional[Path], typer.Option("--compare", help="A second model (e.g. TraLSTM vs PreLSTM) analyzed on the same clips and drawn beside the first.", show_default=False)] = None,
    max_clips: Annotated[Optional[int], typer.Option("--max-clips", min=1, help="Analyze at most N clips, spread over the classes. Default: all.", show_default=False)] = None,
    steps: Annotated[Optional[int], typer.Option("--steps", min=1, help="Sample T evenly spread steps per clip (clips batched). Default: every step of each whole clip.", show_default=False)] = None,
    device: Annotated[str, typer.Option("--device", help="Torch device to run on: cpu, cuda, cuda:N.")] = "cpu",
    json_output: JsonOption = False,
) -> None:
    """Gate saturation of a converted LSTM/GRU model on clips: the paper's Figure 2 and its reading.

    A gate unit is left-saturated when its activation is < 0.1, right-saturated when > 0.9. Writes gates.png (LSTM: per-unit saturation plots of gates i, f, o with the diagonal x + y = 1; GRU: 10-bin histograms of r and z; one row per layer, --compare models side by side) and summary.json, prints the per-layer/gate table and a one-line reading.

    Example: [bold]prernn analyze pre_lstm.safetensors --data sample_models/clips/val -o report[/]
    """
    from prernn_cli.analyze import analyze

    report = analyze(model, data, report_dir=report_dir, compare=compare, max_clips=max_clips, steps=steps, device=device)
    if json_output:
        print_json(report.to_dict())
        return
    _render_analysis(report)


def _render_analysis(report) -> None:
    from rich.table import Table

    table = Table(title="Gate saturation (left < 0.1, right > 0.9)", title_justify="left")
    for column, justify in (("model", "left"), ("layer", "right"), ("gate", "left"), ("left-sat %", "right"), ("right-sat %", "right"), ("unsaturated %", "right")):
        table.add_column(column, justify=justify)
    for analysis in report.models:
        for gate in analysis.gates:
            name = analysis.spec.layers[gate.layer - 1].name
            table.add_row(
                analysis.label,
                f"{gate.layer} ({name})",
                gate.gate,
                f"{gate.left_pct:.1f}",
                f"{gate.right_pct:.1f}",
                f"{gate.unsaturated_pct:.1f}",
                end_section=gate is analysis.gates[-1],
            )
    stdout.print(table)
    for analysis in report.models:
        skipped = f", {len(analysis.skipped)} skipped" if analysis.skipped else ""
        stdout.print(f"[bold]{analysis.label}[/] ({analysis.clips} clips, {analysis.steps} steps{skipped}): {analysis.reading}", soft_wrap=True)
    stdout.print(f"wrote {report.figure} and {report.summary}", soft_wrap=True)
