"""``prernn params``: recurrent parameters of the three designs (the paper's Table 3)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich import box
from rich.table import Table

from prernn_cli.cli.app import app, handles_errors, literal, print_json, stdout
from prernn_cli.cli.options import (
    ArchOption,
    EmaOption,
    InputSizeOption,
    JsonOption,
    LayerOption,
    SnippetLengthOption,
    TrustPickleOption,
    parse_cells,
    parse_layer_names,
)
from prernn_cli.params import HUMAN_COUNTING_NOTE

OptionalCheckpointArg = Annotated[
    Optional[Path],
    typer.Argument(
        metavar="CHECKPOINT",
        help="Checkpoint to size (any format `inspect` reads). Omit it and give --arch to size an architecture "
        "with random weights.",
        show_default=False,
    ),
]
# parse_cells turns the values into a tuple of CellType: that is what the command receives.
CellsOption = Annotated[
    Optional[list[str]],
    typer.Option(
        "--cell",
        "-c",
        metavar="CELL",
        callback=parse_cells,
        help="Cell(s) to account: vrnn, lstm, gru (repeat or comma-separate). Default: all three.",
        show_default=False,
    ),
]
TraditionalLayersOption = Annotated[
    Optional[int],
    typer.Option(
        "--traditional-layers",
        min=1,
        metavar="N",
        help="Traditional layers stacked on the feature vector, sized together to match PreRNN's count. "
        "Default 1, what `convert --traditional` builds; 2 sizes the paper's 2-layer TraRNN.",
        show_default=False,
    ),
]


@app.command(
    "params",
    help="Count recurrent parameters of traditional, PreRNN and PreRNN-SIH designs (the paper's Table 3).\n\n"
    "For every cell (VRNN, LSTM, GRU) × design: recurrent parameters (weights only, Table 3's "
    "definition, and with biases), total model parameters, the SIH÷PreRNN ratio, and the hidden size "
    "a traditional layer needs to match PreRNN's count. Without a CHECKPOINT, --arch NAME is sized "
    "with random weights (nothing is downloaded).\n\n"
    "Example: [bold]prernn params --arch vgg16 --layer fc6,fc7[/]",
    epilog="Examples:\n\n  prernn params --arch vgg16 --layer fc6,fc7\n\n"
    "  prernn params --arch resnet50 --layer res5c --cell lstm --json\n\n"
    "  prernn params sample_models/digit_vgg.pt --layer fc6",
)
@handles_errors
def params_command(
    checkpoint: OptionalCheckpointArg = None,
    layer: LayerOption = ...,
    arch: ArchOption = None,
    cell: CellsOption = None,
    traditional_layers: TraditionalLayersOption = None,
    trust_pickle: TrustPickleOption = False,
    ema: EmaOption = False,
    input_size: InputSizeOption = None,
    snippet_length: SnippetLengthOption = None,
    json_output: JsonOption = False,
) -> None:
    from prernn_cli.archives import refuse_hostile_archive

    if checkpoint is not None:
        refuse_hostile_archive(checkpoint)  # before torch is imported: a hostile archive costs next to nothing
    from prernn_cli.inspection import account_checkpoint

    report = account_checkpoint(
        checkpoint,
        parse_layer_names(layer),
        arch=arch,
        cells=cell,
        traditional_layers=traditional_layers,
        trust_pickle=trust_pickle,
        input_size=input_size,
        snippet_length=snippet_length,
        ema=ema,
    )
    if json_output:
        print_json(report.to_dict())
        return
    _render_layers(report)
    stdout.print(_cells_table(report))
    stdout.print(f"[dim]{literal(report.traditional_note)}.[/]", soft_wrap=True)
    stdout.print(f"[dim]{HUMAN_COUNTING_NOTE}[/]", soft_wrap=True)


def _render_layers(report) -> None:
    """The base network and the shape of each converted layer."""
    stdout.print(
        f"[bold]architecture[/] {literal(report.architecture or 'unknown')}   "
        f"[bold]base parameters[/] {report.base_params:,}   [bold]feature size[/] {report.feature_size}"
    )
    for shape in report.layers:
        bias = "bias" if shape.bias else "no bias"
        if shape.batchnorm_params:
            bias += f", BatchNorm ({shape.batchnorm_params:,})"
        stdout.print(
            f"  {literal(shape.label)}: {shape.kind.value} {shape.input_size} → {shape.hidden_size}, "
            f"|W| = {shape.weight_numel:,}, {bias}",
            soft_wrap=True,
        )


def _hidden_text(count) -> str:
    hidden = ", ".join(str(h) for h in dict.fromkeys(count.hidden_sizes))
    if count.num_layers and count.num_layers > 1 and len(set(count.hidden_sizes)) == 1:
        hidden = f"{count.num_layers}×{hidden}"
    return hidden


def _cells_table(report) -> Table:
    """One section per cell, one row per design."""
    table = Table(title="Recurrent parameters (Table 3)", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("cell", no_wrap=True)
    table.add_column("design", no_wrap=True)
    for column in ("hidden", "recurrent\n(weights)", "recurrent\n(+biases)", "total\nmodel", "SIH ÷\nPreRNN"):
        table.add_column(column, justify="right", no_wrap=True)
    for accounting in report.cells:
        for count in accounting.designs:
            if not count.available:
                table.add_row(
                    accounting.cell.value, count.design.value, "n/a", "n/a", "n/a", "n/a", "n/a",
                    style="dim", end_section=count is accounting.designs[-1],
                )  # fmt: skip
                continue
            ratio = ""
            if count.design.value == "sih" and accounting.sih_over_prernn is not None:
                ratio = f"{accounting.sih_over_prernn:.2f}×"
            table.add_row(
                accounting.cell.value,
                count.design.value,
                _hidden_text(count),
                f"{count.recurrent_params:,}",
                f"{count.recurrent_params_with_biases:,}",
                f"{count.total_params:,}",
                ratio,
                end_section=count is accounting.designs[-1],
            )
    return table
