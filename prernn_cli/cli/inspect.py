"""``prernn inspect``: a checkpoint's network and which layers can become recurrent."""

from __future__ import annotations

from typing import Annotated

import typer
from rich import box
from rich.table import Table

from prernn_cli.cli.app import app, handles_errors, literal, print_json, stdout
from prernn_cli.cli.options import (
    ArchOption,
    CheckpointArg,
    EmaOption,
    InputSizeOption,
    JsonOption,
    SnippetLengthOption,
    TrustPickleOption,
)

AllOption = Annotated[
    bool,
    typer.Option(
        "--all",
        "-a",
        help="List every module, with the reason when it is not convertible (default: the fc and conv layers).",
    ),
]


@app.command(
    "inspect",
    help="Show a checkpoint's network and which layers can become recurrent.\n\n"
    "Above the table: format, architecture (identified from the weights when --arch is omitted), "
    "total/trainable parameters and the expected input (2D frame or 3D snippet). The table lists "
    "each layer's dotted name, paper alias (fc6, fc7, res5c), type, input → output shape, "
    "parameters, and whether it is convertible and as what: an fc layer, or a conv layer with its "
    "BatchNorm, residual shortcut and global pooling. For a converted prernn model, its recurrent "
    "structure.\n\n"
    "Example: [bold]prernn inspect sample_models/digit_vgg.pt[/]",
    epilog=(
        "Examples:\n\n  prernn inspect sample_models/digit_vgg.pt\n\n"
        "  prernn inspect sample_models/digit_resnet.pt --all\n\n"
        "  prernn inspect my_c3d.pth --arch c3d --json\n\n  prernn inspect whole_model.pt --trust-pickle\n\n"
        "  prernn inspect mobilenet_v2.pth --input-size 112"
    ),
)
@handles_errors
def inspect_command(
    checkpoint: CheckpointArg,
    arch: ArchOption = None,
    trust_pickle: TrustPickleOption = False,
    ema: EmaOption = False,
    show_all: AllOption = False,
    input_size: InputSizeOption = None,
    snippet_length: SnippetLengthOption = None,
    json_output: JsonOption = False,
) -> None:
    from prernn_cli.archives import refuse_hostile_archive

    refuse_hostile_archive(checkpoint)  # before torch is imported: a hostile archive costs next to nothing
    from prernn_cli.inspection import inspect_checkpoint

    result = inspect_checkpoint(
        checkpoint, arch=arch, trust_pickle=trust_pickle, input_size=input_size, snippet_length=snippet_length, ema=ema
    )
    if json_output:
        print_json(result.to_dict(show_all=show_all))
        return
    _render_summary(result)
    if result.spec is not None:
        _render_converted(result)
    else:
        _render_layers(result, show_all)


def _shape_text(shape) -> str:
    if shape is None:
        return "?"
    return "×".join(str(size) for size in shape) if shape else "scalar"


def _input_text(spec, known: bool) -> str:
    step = "×".join(str(size) for size in spec.step_shape())
    kind = f"3D snippet of {spec.frames_per_step} frames" if spec.frame_kind.value == "3d" else "2D frame"
    mean = ", ".join(f"{value:.3g}" for value in spec.mean)
    std = ", ".join(f"{value:.3g}" for value in spec.std)
    text = f"{kind}, {step} per step (mean {mean}; std {std})"
    modality = spec.modality.value
    if modality == "flow":
        stack = f"{spec.flow_stack} stacked x,y flow frames" if spec.stacks_frames else "x,y flow per frame"
        text = f"flow ({stack}, bound {spec.flow_bound:g} px): {text}"
    elif modality != "rgb":
        text = f"{modality}: {text}"
    return text + (" [yellow](assumed: unknown architecture)[/]" if not known else "")


def _convertible_text(layer, show_all: bool) -> str:
    if not layer.convertible:
        return f"[dim]no: {literal(layer.reason)}[/]" if show_all and layer.reason else "[dim]no[/]"
    activation = layer.activation if layer.activation and layer.activation != "identity" else None
    if layer.kind is not None and layer.kind.value == "fc":
        text = f"[green]yes[/]: fc, {layer.input_size}→{layer.hidden_size}"
        return text + (f", {activation}" if activation else "")
    parts = [f"[green]yes[/]: conv, {layer.input_size}→{layer.hidden_size} ch"]
    if layer.batchnorm:
        parts.append(f"BN {layer.batchnorm}")
    if layer.shortcut:
        parts.append(f"shortcut {layer.shortcut}")
    if activation:
        parts.append(activation)
    if layer.pooling:
        parts.append(f"pool {layer.pooling}")
    return ", ".join(parts)


def _render_summary(result) -> None:
    """The lines above the table: file, format, architecture, parameters, expected input."""
    architecture = literal(result.architecture or "unknown")
    if result.identified:
        architecture += " [dim](identified from the weights; pass --arch to choose another)[/]"
    classes = f"   [bold]outputs[/] {result.num_classes}" if result.num_classes else ""
    stdout.print(f"[bold]checkpoint[/]   {literal(result.path)}", soft_wrap=True)
    stdout.print(f"[bold]format[/]       {result.format.value}")
    stdout.print(f"[bold]architecture[/] {architecture}{classes}", soft_wrap=True)
    if result.weights:  # a training checkpoint: which of its weights were loaded
        other = ""
        if result.other_weights == "state_dict_ema":
            other = " (the file also holds EMA weights: pass --ema for them)"
        elif result.other_weights:
            other = f" (the file also holds its plain {result.other_weights}: drop --ema for it)"
        stdout.print(f"[bold]weights[/]      {result.weights}{other}", soft_wrap=True)
    stdout.print(f"[bold]parameters[/]   {result.total_params:,} total, {result.trainable_params:,} trainable")
    stdout.print(f"[bold]input[/]        {_input_text(result.input_spec, result.input_known)}", soft_wrap=True)


def _render_converted(result) -> None:
    """A converted prernn model: its design and its recurrent layers."""
    spec = result.spec
    head = spec.head.value + (f" ({spec.outputs} outputs)" if spec.outputs else "")
    stdout.print(
        f"[bold]converted[/]    {spec.design.value} {spec.cell.value}"
        f"{' (SIH)' if spec.sih else ''}, head {head}, W_hh init {spec.init_hh.value}"
        + (f", task {literal(spec.task)}" if spec.task else ""),
        soft_wrap=True,
    )
    if spec.class_names:
        stdout.print(f"[bold]classes[/]      {literal(', '.join(spec.class_names))}", soft_wrap=True)
    if spec.training is not None:
        stdout.print(f"[bold]trained[/]      {literal(_training_text(spec.training))}", soft_wrap=True)
    table = Table(title="Recurrent layers", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for column in ("#", "from layer", "kind", "input → hidden", "activation", "params"):
        table.add_column(column, justify="right" if column in ("#", "params") else "left")
    for row in result.recurrent:
        table.add_row(
            str(row.index),
            literal(f"{row.alias} ({row.name})" if row.alias else row.name),
            literal(row.kind),
            f"{row.input_size} → {row.hidden_size}",
            literal(row.activation),
            f"{row.params:,}",
        )
    stdout.print(table)


def _render_layers(result, show_all: bool) -> None:
    """A plain network: its fc and conv layers (every module with --all) and the convertible ones."""
    title = "Layers" if show_all else "fc and conv layers"
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("name", overflow="fold")
    table.add_column("alias")
    table.add_column("type")
    table.add_column("input → output")
    table.add_column("params", justify="right")
    table.add_column("convertible", overflow="fold")
    for layer in result.rows(show_all):
        table.add_row(
            literal(layer.name),
            literal(layer.alias or ""),
            literal(layer.type),
            f"{_shape_text(layer.input_shape)} → {_shape_text(layer.output_shape)}",
            f"{layer.params:,}",
            _convertible_text(layer, show_all),
        )
    stdout.print(table)
    convertible = result.convertible()
    if convertible:
        stdout.print(
            f"[bold]convertible[/]  {literal(', '.join(layer.label for layer in convertible))}", soft_wrap=True
        )
    else:
        stdout.print(f"[bold]convertible[/]  none: {literal(result.why_none_convertible())}", soft_wrap=True)
    if not show_all:
        stdout.print("[dim]--all lists every module, with why it is not convertible.[/]")


def _training_text(record) -> str:
    """How the model was trained and evaluated: the defaults of evaluate, analyze and export."""
    parts = [f"task {record.task.value}", f"T {record.steps}", f"sampling {record.sampling}"]
    if record.task.value == "classify":
        parts.append(f"clip pool {record.clip_pool}")
    if record.task.value == "regress":
        parts.append(f"error norm {record.error_norm}, AUC up to {record.auc_threshold:g}")
    parts.append(f"val fraction {record.val_fraction:g}")
    return ", ".join(parts)
