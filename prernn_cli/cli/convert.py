"""``prernn convert``: pretrained layers into Pre-cells, or the traditional baseline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from prernn_cli.cli.app import app, handles_errors, literal, print_json, stdout
from prernn_cli.cli.options import (
    MAX_SEED,
    ArchOption,
    CheckpointArg,
    EmaOption,
    FlowBoundOption,
    FlowStackOption,
    InputSizeOption,
    JsonOption,
    LayerOption,
    ModalityOption,
    SnippetLengthOption,
    TrustPickleOption,
    parse_layer_names,
)
from prernn_cli.spec import CellType, InitScheme, Modality

CellOption = Annotated[
    CellType, typer.Option("--cell", "-c", case_sensitive=False, help="Recurrent cell: vrnn, lstm or gru.")
]
OutputOption = Annotated[Path, typer.Option("--output", "-o", help="The converted model's .safetensors file.")]
SihOption = Annotated[
    bool,
    typer.Option("--sih", help="PreRNN-SIH: all gates share the one pretrained input-to-hidden state (LSTM, GRU)."),
]
TraditionalOption = Annotated[
    bool,
    typer.Option(
        "--traditional",
        help="Build the traditional baseline instead: backbone untouched, a new recurrent layer on its features, "
        "hidden size matched to PreRNN's recurrent parameters for --layer.",
    ),
]
NumClassesOption = Annotated[
    Optional[int],
    typer.Option("--num-classes", min=1, help="Replace the output layer with a new K-class head.", show_default=False),
]
OutputsOption = Annotated[
    Optional[int],
    typer.Option(
        "--outputs", min=1, help="Replace the output layer with a new head of K regression outputs.", show_default=False
    ),
]
InitHhOption = Annotated[
    InitScheme,
    typer.Option(
        "--init-hh",
        case_sensitive=False,
        help="Initialisation of the new hidden-to-hidden weights: uniform (torch.nn.RNN's), orthogonal, xavier "
        "or zeros.",
    ),
]
HiddenSizeOption = Annotated[
    Optional[int],
    typer.Option(
        "--hidden-size",
        min=1,
        help="With --traditional: the new layer's hidden size instead of the matched one.",
        show_default=False,
    ),
]
SeedOption = Annotated[
    int,
    typer.Option(
        "--seed",
        min=0,
        max=MAX_SEED,
        help="Seed of the new weights' initialisation (the same command writes the same file).",
    ),
]
DESIGN_NAMES = {"traditional": "traditional", "prernn": "PreRNN", "sih": "PreRNN-SIH"}


@app.command(
    "convert",
    help="Rewrite pretrained fc/conv layers into Pre-cells (PreVRNN, PreLSTM, PreGRU; --sih), "
    "or build the traditional baseline.\n\n"
    "The pretrained weights become the input-to-hidden weights; only the hidden-to-hidden weights "
    "are new. Several layers (--layer fc6,fc7) stack. The result is one .safetensors file with the "
    "model spec in its metadata; loading it never unpickles anything.\n\n"
    "Example: [bold]prernn convert sample_models/digit_vgg.pt --layer fc6 --cell gru --sih"
    " -o pregru_sih.safetensors[/]",
    epilog=(
        "Examples:\n\n"
        "  prernn convert sample_models/digit_vgg.pt --layer fc6 --cell gru --sih -o pregru_sih.safetensors\n\n"
        "  prernn convert vgg16.pth --arch vgg16 --layer fc6,fc7 --cell lstm --num-classes 25"
        " -o prelstm.safetensors\n\n"
        "  prernn convert sample_models/digit_vgg.pt --layer fc6 --cell gru --traditional -o tragru.safetensors\n\n"
        "  prernn convert mobilenet_v2.pth --layer features.18.0 --cell gru --sih --num-classes 2 --input-size 112"
        " -o pregru_112.safetensors"
    ),
)
@handles_errors
def convert_command(
    checkpoint: CheckpointArg,
    layer: LayerOption = ...,
    cell: CellOption = CellType.GRU,
    output: OutputOption = ...,
    sih: SihOption = False,
    traditional: TraditionalOption = False,
    num_classes: NumClassesOption = None,
    outputs: OutputsOption = None,
    init_hh: InitHhOption = InitScheme.UNIFORM,
    hidden_size: HiddenSizeOption = None,
    arch: ArchOption = None,
    trust_pickle: TrustPickleOption = False,
    ema: EmaOption = False,
    seed: SeedOption = 0,
    input_size: InputSizeOption = None,
    snippet_length: SnippetLengthOption = None,
    modality: ModalityOption = Modality.RGB,
    flow_stack: FlowStackOption = None,
    flow_bound: FlowBoundOption = None,
    json_output: JsonOption = False,
) -> None:
    from prernn_cli.archives import refuse_hostile_archive

    refuse_hostile_archive(checkpoint)  # before torch is imported: a hostile archive costs next to nothing
    from prernn_cli.conversion import convert_checkpoint
    from prernn_cli.modality import ModalityChoice

    result = convert_checkpoint(
        checkpoint, parse_layer_names(layer), cell, output, sih=sih, traditional=traditional,
        num_classes=num_classes, outputs=outputs, init_hh=init_hh, hidden_size=hidden_size, arch=arch,
        trust_pickle=trust_pickle, seed=seed, input_size=input_size, snippet_length=snippet_length, ema=ema,
        modality=ModalityChoice(modality, flow_stack, flow_bound),
    )  # fmt: skip
    if json_output:
        print_json(result.to_dict())
        return
    _render_conversion(result)


def _design_label(result) -> str:
    """PreGRU, PreLSTM-SIH, TraVRNN, ..."""
    label = f"{'Tra' if result.design.value == 'traditional' else 'Pre'}{result.cell.value.upper()}"
    return label + ("-SIH" if result.design.value == "sih" else "")


def _render_conversion(result) -> None:
    arch = result.architecture + (" (identified from the weights)" if result.identified else "")
    stdout.print(f"[bold]{_design_label(result)}[/] from {literal(arch)} → {literal(result.output)}", soft_wrap=True)
    table = Table(show_header=True, header_style="bold")
    table.add_column("layers")
    for column in ("hidden", "pretrained params", "new params", "total"):
        table.add_column(column, justify="right")
    what = literal(", ".join(result.layers))
    if result.design.value == "traditional":
        what = f"new layer on the features (matched to {what})"
    table.add_row(
        what,
        ", ".join(map(str, result.hidden_sizes)),
        f"{result.pretrained_params:,}",
        f"{result.new_params:,}",
        f"{result.total_params:,}",
    )
    stdout.print(table)
    if result.table3_ratio is not None:
        stdout.print(
            f"Table 3 for {literal(', '.join(result.layers))} ({result.cell.value.upper()}): "
            f"PreRNN-SIH ÷ PreRNN recurrent parameters = {result.table3_ratio:.2f}"
        )
    if result.head.value == "original":
        head = "original output layer"
    else:
        head = f"new {result.head.value} head with {result.outputs} outputs"
    stdout.print(f"Head: {head}. Design: {DESIGN_NAMES[result.design.value]}.")
    if result.input is not None:
        step = "×".join(str(size) for size in result.input.step_shape())
        stream = "" if result.input.modality.value == "rgb" else f", {result.input.modality.value}"
        stream += f" (a stack of {result.input.flow_stack} flow frames)" if result.input.flow_stack else ""
        stdout.print(f"Input: {step} per step (C×{'L×' if result.input.frame_kind.value == '3d' else ''}H×W){stream}.")
