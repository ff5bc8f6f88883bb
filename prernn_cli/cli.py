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
CheckpointArg = Annotated[Path, typer.Argument(metavar="CHECKPOINT", help="Checkpoint: state_dict (.pt/.pth), TorchScript, safetensors, or a prernn model.", show_default=False)]
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

AllOption = Annotated[bool, typer.Option("--all", "-a", help="List every module, with the reason when it is not convertible (default: the fc and conv layers).")]


@app.command(
    "inspect",
    epilog=(
        "Examples:\n\n  prernn inspect sample_models/digit_vgg.pt\n\n  prernn inspect sample_models/digit_resnet.pt --all\n\n"
        "  prernn inspect my_c3d.pth --arch c3d --json\n\n  prernn inspect whole_model.pt --trust-pickle"
    ),
)
@handles_errors
def inspect_command(
    checkpoint: CheckpointArg,
    arch: ArchOption = None,
    trust_pickle: TrustPickleOption = False,
    show_all: AllOption = False,
    json_output: JsonOption = False,
) -> None:
    """Show a checkpoint's network and which layers can become recurrent.

    Above the table: format, architecture (identified from the weights when --arch is omitted), total/trainable parameters and the expected input (2D frame or 3D snippet). The table lists each layer's dotted name, paper alias (fc6, fc7, res5c), type, input → output shape, parameters, and whether it is convertible and as what: an fc layer, or a conv layer with its BatchNorm, residual shortcut and global pooling. For a converted prernn model, its recurrent structure.

    Example: [bold]prernn inspect sample_models/digit_vgg.pt[/]
    """
    from prernn_cli.inspection import inspect_checkpoint

    result = inspect_checkpoint(checkpoint, arch=arch, trust_pickle=trust_pickle)
    if json_output:
        print_json(result.to_json(show_all=show_all))
        return
    _render_inspection(result, show_all)


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
    return text + (" [yellow](assumed: unknown architecture)[/]" if not known else "")


def _convertible_text(layer, show_all: bool) -> str:
    if not layer.convertible:
        return f"[dim]no: {layer.reason}[/]" if show_all and layer.reason else "[dim]no[/]"
    if layer.kind is not None and layer.kind.value == "fc":
        return f"[green]yes[/]: fc, {layer.input_size}→{layer.hidden_size}" + (f", {layer.activation}" if layer.activation and layer.activation != "identity" else "")
    parts = [f"[green]yes[/]: conv, {layer.input_size}→{layer.hidden_size} ch"]
    if layer.batchnorm:
        parts.append(f"BN {layer.batchnorm}")
    if layer.shortcut:
        parts.append(f"shortcut {layer.shortcut}")
    if layer.activation and layer.activation != "identity":
        parts.append(layer.activation)
    if layer.pooling:
        parts.append(f"pool {layer.pooling}")
    return ", ".join(parts)


def _render_inspection(result, show_all: bool) -> None:
    from rich import box
    from rich.table import Table

    architecture = result.architecture or "unknown"
    if result.identified:
        architecture += " [dim](identified from the weights; pass --arch to choose another)[/]"
    classes = f"   [bold]outputs[/] {result.num_classes}" if result.num_classes else ""
    stdout.print(f"[bold]checkpoint[/]   {result.path}", soft_wrap=True)
    stdout.print(f"[bold]format[/]       {result.format.value}")
    stdout.print(f"[bold]architecture[/] {architecture}{classes}", soft_wrap=True)
    stdout.print(f"[bold]parameters[/]   {result.total_params:,} total, {result.trainable_params:,} trainable")
    stdout.print(f"[bold]input[/]        {_input_text(result.input_spec, result.input_known)}", soft_wrap=True)

    if result.spec is not None:
        spec = result.spec
        head = spec.head.value + (f" ({spec.outputs} outputs)" if spec.outputs else "")
        stdout.print(
            f"[bold]converted[/]    {spec.design.value} {spec.cell.value}"
            f"{' (SIH)' if spec.sih else ''}, head {head}, W_hh init {spec.init_hh.value}"
            + (f", task {spec.task}" if spec.task else ""),
            soft_wrap=True,
        )
        if spec.class_names:
            stdout.print(f"[bold]classes[/]      {', '.join(spec.class_names)}", soft_wrap=True)
        table = Table(title="Recurrent layers", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
        for column in ("#", "from layer", "kind", "input → hidden", "activation", "params"):
            table.add_column(column, justify="right" if column in ("#", "params") else "left")
        for row in result.recurrent:
            table.add_row(str(row.index), f"{row.alias} ({row.name})" if row.alias else row.name, row.kind, f"{row.input_size} → {row.hidden_size}", row.activation, f"{row.params:,}")
        stdout.print(table)
        return

    rows = result.rows(show_all)
    table = Table(title="Layers" if show_all else "fc and conv layers", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("name", overflow="fold")
    table.add_column("alias")
    table.add_column("type")
    table.add_column("input → output")
    table.add_column("params", justify="right")
    table.add_column("convertible", overflow="fold")
    for layer in rows:
        table.add_row(
            layer.name,
            layer.alias or "",
            layer.type,
            f"{_shape_text(layer.input_shape)} → {_shape_text(layer.output_shape)}",
            f"{layer.params:,}",
            _convertible_text(layer, show_all),
        )
    stdout.print(table)
    convertible = result.convertible()
    if convertible:
        stdout.print(f"[bold]convertible[/]  {', '.join(layer.label for layer in convertible)}", soft_wrap=True)
    else:
        stdout.print(f"[bold]convertible[/]  none: {result.why_none_convertible()}", soft_wrap=True)
    if not show_all:
        stdout.print("[dim]--all lists every module, with why it is not convertible.[/]")

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
    from prernn_cli.inspection import account_checkpoint
    from prernn_cli.params import parse_cells, parse_layer_names

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

CellOption = Annotated[str, typer.Option("--cell", "-c", help="Recurrent cell: vrnn, lstm or gru.", case_sensitive=False)]


@app.command(
    "convert",
    epilog=(
        "Examples:\n\n  prernn convert sample_models/digit_vgg.pt --layer fc6 --cell gru --sih -o pregru_sih.safetensors\n\n"
        "  prernn convert vgg16.pth --arch vgg16 --layer fc6,fc7 --cell lstm --num-classes 25 -o prelstm.safetensors\n\n"
        "  prernn convert sample_models/digit_vgg.pt --layer fc6 --cell gru --traditional -o tragru.safetensors"
    ),
)
@handles_errors
def convert_command(
    checkpoint: CheckpointArg,
    layer: LayerOption = ...,
    cell: CellOption = "gru",
    output: OutputOption = ...,
    sih: Annotated[bool, typer.Option("--sih", help="PreRNN-SIH: all gates share the one pretrained input-to-hidden state (LSTM, GRU).")] = False,
    traditional: Annotated[bool, typer.Option("--traditional", help="Build the traditional baseline instead: backbone untouched, a new recurrent layer on its features, hidden size matched to PreRNN's recurrent parameters for --layer.")] = False,
    num_classes: Annotated[Optional[int], typer.Option("--num-classes", help="Replace the output layer with a new K-class head.", show_default=False)] = None,
    outputs: Annotated[Optional[int], typer.Option("--outputs", help="Replace the output layer with a new head of K regression outputs.", show_default=False)] = None,
    init_hh: Annotated[str, typer.Option("--init-hh", help="Initialisation of the new hidden-to-hidden weights: uniform (torch.nn.RNN's), orthogonal, xavier or zeros.")] = "uniform",
    hidden_size: Annotated[Optional[int], typer.Option("--hidden-size", help="With --traditional: the new layer's hidden size instead of the matched one.", show_default=False)] = None,
    arch: ArchOption = None,
    trust_pickle: TrustPickleOption = False,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the new weights' initialisation (the same command writes the same file).")] = 0,
    json_output: JsonOption = False,
) -> None:
    """Rewrite pretrained fc/conv layers into Pre-cells (PreVRNN, PreLSTM, PreGRU; --sih), or build the traditional baseline.

    The pretrained weights become the input-to-hidden weights; only the hidden-to-hidden weights are new. Several layers (--layer fc6,fc7) stack. The result is one .safetensors file with the model spec in its metadata; loading it never unpickles anything.

    Example: [bold]prernn convert sample_models/digit_vgg.pt --layer fc6 --cell gru --sih -o pregru_sih.safetensors[/]
    """
    from prernn_cli.conversion import convert_checkpoint
    from prernn_cli.errors import UserInputError
    from prernn_cli.params import parse_layer_names
    from prernn_cli.spec import CellType, InitScheme

    try:
        cell_type = CellType(cell.lower())
    except ValueError:
        raise UserInputError(f"unknown cell {cell!r}; choose vrnn, lstm or gru") from None
    try:
        scheme = InitScheme(init_hh.lower())
    except ValueError:
        raise UserInputError(f"unknown --init-hh {init_hh!r}; choose uniform, orthogonal, xavier or zeros") from None
    result = convert_checkpoint(
        checkpoint, parse_layer_names(layer), cell_type, output, sih=sih, traditional=traditional,
        num_classes=num_classes, outputs=outputs, init_hh=scheme, hidden_size=hidden_size, arch=arch,
        trust_pickle=trust_pickle, seed=seed,
    )
    if json_output:
        print_json(result.to_json())
        return
    _render_conversion(result)


def _render_conversion(result) -> None:
    from rich.table import Table

    names = {"traditional": "traditional", "prernn": "PreRNN", "sih": "PreRNN-SIH"}
    design = f"{'Tra' if result.design.value == 'traditional' else 'Pre'}{result.cell.value.upper()}"
    if result.design.value == "sih":
        design += "-SIH"
    arch = result.architecture + (" (identified from the weights)" if result.identified else "")
    stdout.print(f"[bold]{design}[/] from {arch} → {result.output}")
    table = Table(show_header=True, header_style="bold")
    table.add_column("layers")
    table.add_column("hidden", justify="right")
    table.add_column("pretrained params", justify="right")
    table.add_column("new params", justify="right")
    table.add_column("total", justify="right")
    what = ", ".join(result.layers)
    if result.design.value == "traditional":
        what = f"new layer on the features (matched to {what})"
    table.add_row(what, ", ".join(map(str, result.hidden_sizes)), f"{result.pretrained_params:,}", f"{result.new_params:,}", f"{result.total_params:,}")
    stdout.print(table)
    if result.table3_ratio is not None:
        stdout.print(f"Table 3 for {', '.join(result.layers)} ({result.cell.value.upper()}): PreRNN-SIH ÷ PreRNN recurrent parameters = {result.table3_ratio:.2f}")
    head = "original output layer" if result.head.value == "original" else f"new {result.head.value} head with {result.outputs} outputs"
    stdout.print(f"Head: {head}. Design: {names[result.design.value]}.")


# ---------------------------------------------------------------- train / evaluate (issue 4)

SplitOption = Annotated[str, typer.Option("--split", help="Which split to use: val or train.")]
DataOption = Annotated[Path, typer.Option("--data", "-d", help="Clips: DIR/<class>/<clip> (video files or frame folders), DIR/{train,val}/<class>/<clip>, or a .csv/.jsonl manifest.", show_default=False)]
StepsOption = Annotated[int, typer.Option("--steps", "-T", min=1, help="Time steps sampled per clip (for 3D backbones each step is a snippet of L frames).")]
DeviceOption = Annotated[str, typer.Option("--device", help="auto (CUDA when available), cpu or cuda.")]
FrameCacheOption = Annotated[Optional[Path], typer.Option("--frame-cache", help="Keep every clip's decoded frames, resized for the model (uint8), in this folder: clips are decoded once and read from there afterwards (later epochs, later runs, evaluate). Costs frames × H × W × C bytes per clip.", show_default=False)]
WorkersOption = Annotated[int, typer.Option("--workers", min=0, help="DataLoader worker processes decoding clips (0: decode in the main process).")]
StrictOption = Annotated[bool, typer.Option("--strict", help="Stop at the first unreadable or too-short clip instead of skipping it.")]
ValFractionOption = Annotated[float, typer.Option("--val-fraction", help="Share of each class held out for validation when DIR has no train/val folders (deterministic).")]
TaskOption = Annotated[Optional[str], typer.Option("--task", help="classify (clip folders, label column), regress (targets column), ctc (labels column). Default: from the data / the model.", show_default=False)]


def _train_progress(json_mode: bool):
    """A progress callback drawing rich bars on stderr; returns (callback, finish)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from prernn_cli.train import EventKind

    if json_mode:
        return None, lambda: None
    bars = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[speed]} clips/s"),
        TimeElapsedColumn(), TimeRemainingColumn(), console=stderr, transient=False,
    )
    state: dict = {"task": None}

    def callback(event) -> None:
        if event.kind is EventKind.START:
            info = event.info or {}
            resumed = f", resumed at step {info['resumed_at_step']}" if info.get("resumed_at_step") is not None else ""
            stderr.print(f"training on {info.get('device')} (x{info.get('world_size')}): {info.get('train_clips')} train / {info.get('val_clips')} val clips, {info.get('steps_per_epoch')} steps per epoch{resumed}")
            bars.start()
        elif event.kind is EventKind.EPOCH_START:
            state["task"] = bars.add_task(f"epoch {event.epoch + 1}/{event.epochs}", total=event.steps_in_epoch, completed=event.step_in_epoch, loss="-", speed="-")
        elif event.kind is EventKind.STEP and state["task"] is not None:
            speed = f"{event.clips_per_s:.1f}" if event.clips_per_s else "-"
            bars.update(state["task"], completed=event.step_in_epoch, loss=f"{event.loss:.4f}", speed=speed)
        elif event.kind is EventKind.EPOCH_END and event.row:
            row = event.row
            parts = [f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items() if k.startswith(("train_", "val_")) and v is not None]
            bars.console.print(f"epoch {row['epoch']}: " + "  ".join(parts))

    return callback, bars.stop


def _epoch_table(history: list[dict], title: str):
    from rich.table import Table

    table = Table(title=title)
    keys = [k for k in history[0] if k not in ("seconds",)] if history else []
    for key in keys:
        table.add_column(key.replace("_", " "), justify="right")
    for row in history:
        table.add_row(*[(f"{row[k]:.4g}" if isinstance(row.get(k), float) else str(row.get(k, ""))) for k in keys])
    return table


@app.command(
    "train",
    help="Fine-tune a converted model on a folder of clips (or a manifest): classification, per-frame regression or CTC.\n\n"
    "Writes last/best .safetensors, last.state.pt (for --resume), metrics.jsonl and curves.png to -o DIR. "
    "Under `torchrun --nproc_per_node=N` the same command trains with DDP.\n\n"
    "Example: prernn train gru_sih.safetensors --data sample_models/clips -o runs/gru_sih --epochs 5 --steps 8",
)
@handles_errors
def train_command(
    model_path: Annotated[Path, typer.Argument(metavar="MODEL", help="A converted model (.safetensors written by prernn convert or train).", show_default=False)],
    data: DataOption,
    output_dir: Annotated[Path, typer.Option("--output", "-o", help="Run folder for checkpoints, metrics and plots.", show_default=False)],
    task: TaskOption = None,
    epochs: Annotated[int, typer.Option("--epochs", "-e", min=1, help="Passes over the training clips.")] = 10,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Clips per batch (per process under DDP).")] = 8,
    steps: StepsOption = 8,
    sampling: Annotated[str, typer.Option("--sampling", help="Training steps per clip: random (random stride and offset, in order), uniform, or dense (consecutive windows; also for validation).")] = "random",
    augment: Annotated[bool, typer.Option("--augment/--no-augment", help="Random translation crops at training time (label-safe).")] = True,
    flip: Annotated[bool, typer.Option("--flip", help="Random horizontal flips. Off by default: a flip turns left into right; use only when labels do not depend on it, or give --flip-pairs.")] = False,
    flip_pairs: Annotated[Optional[str], typer.Option("--flip-pairs", help="Classes swapped by a flip, e.g. left:right (implies --flip).", show_default=False)] = None,
    optimizer: Annotated[str, typer.Option("--optimizer", help="sgd (with momentum, as in the paper) or adamw.")] = "sgd",
    lr: Annotated[float, typer.Option("--lr", help="Learning rate of new weights (W_h·, new heads).")] = 0.01,
    pretrained_lr_mult: Annotated[float, typer.Option("--pretrained-lr-mult", help="Learning rate of pretrained weights = --lr x this.")] = 1.0,
    momentum: Annotated[float, typer.Option("--momentum", help="SGD momentum.")] = 0.9,
    weight_decay: Annotated[float, typer.Option("--weight-decay", help="Weight decay.")] = 5e-4,
    schedule: Annotated[str, typer.Option("--schedule", help="cosine, step (x --gamma every --step-epochs) or constant, after warm-up.")] = "cosine",
    warmup_steps: Annotated[int, typer.Option("--warmup-steps", min=0, help="Linear learning-rate warm-up, in optimiser steps.")] = 0,
    step_epochs: Annotated[int, typer.Option("--step-epochs", min=1, help="Step schedule: epochs between decays.")] = 10,
    gamma: Annotated[float, typer.Option("--gamma", help="Step schedule: decay factor.")] = 0.1,
    clip_grad: Annotated[float, typer.Option("--clip-grad", help="Clip the gradient norm to this (0: off).")] = 5.0,
    freeze_trunk: Annotated[bool, typer.Option("--freeze-trunk", help="Train only the recurrent layers and the head (trunk weights and BatchNorm statistics fixed).")] = False,
    seed: Annotated[int, typer.Option("--seed", help="Seed of sampling, augmentation and dropout.")] = 0,
    device: DeviceOption = "auto",
    amp: Annotated[bool, typer.Option("--amp/--no-amp", help="bf16 autocast on CUDA (ignored on CPU).")] = True,
    workers: WorkersOption = 2,
    frame_cache: FrameCacheOption = None,
    strict: StrictOption = False,
    val_fraction: ValFractionOption = 0.2,
    checkpoint_every: Annotated[int, typer.Option("--checkpoint-every", min=0, help="Also save `last` every N optimiser steps (0: at the end of each epoch only).")] = 0,
    max_steps: Annotated[Optional[int], typer.Option("--max-steps", min=1, help="Stop after N optimiser steps (saving `last`; --resume continues).", show_default=False)] = None,
    resume: Annotated[Optional[Path], typer.Option("--resume", help="Continue an interrupted run: its folder (or its last.safetensors).", show_default=False)] = None,
    clip_pool: Annotated[str, typer.Option("--clip-pool", help="classify: clip prediction from the mean of per-step log-probabilities (mean) or the last step (last).")] = "mean",
    error_norm: Annotated[str, typer.Option("--error-norm", help="regress: normalise the point error by none, bbox (target box diagonal) or points (distance of --norm-points).")] = "none",
    norm_points: Annotated[Optional[str], typer.Option("--norm-points", help="regress: two point indices I,J for --error-norm points (68 landmarks: 36,45).", show_default=False)] = None,
    auc_threshold: Annotated[float, typer.Option("--auc-threshold", help="regress: upper error limit of the cumulative error curve's AUC.")] = 0.08,
    json_output: JsonOption = False,
) -> None:
    import os

    from prernn_cli.checkpoint import load_converted
    from prernn_cli.data import Sampling, Task, check_targets, discover, parse_flip_pairs
    from prernn_cli.metrics import ClipPool, ErrorNorm
    from prernn_cli.errors import UserInputError
    from prernn_cli.train import OptimizerKind, ScheduleKind, TrainConfig, train

    def choice(enum, value: str, option: str):
        try:
            return enum(value)
        except ValueError:
            raise UserInputError(f"{option} {value!r} is not one of {', '.join(e.value for e in enum)}") from None

    points = None
    if norm_points:
        try:
            i, j = (int(v) for v in norm_points.split(","))
            points = (i, j)
        except ValueError:
            raise UserInputError(f"--norm-points {norm_points!r} must be two indices I,J, e.g. 36,45") from None
    task_enum = choice(Task, task, "--task") if task else None
    splits = discover(data, val_fraction=val_fraction, task=task_enum)
    check_targets(splits)
    model = load_converted(model_path)
    config = TrainConfig(
        task=splits.task, epochs=epochs, batch_size=batch_size, steps=steps, sampling=choice(Sampling, sampling, "--sampling"),
        augment=augment, flip=flip, flip_pairs=parse_flip_pairs(flip_pairs), optimizer=choice(OptimizerKind, optimizer, "--optimizer"),
        lr=lr, momentum=momentum, weight_decay=weight_decay, schedule=choice(ScheduleKind, schedule, "--schedule"),
        warmup_steps=warmup_steps, step_epochs=step_epochs, gamma=gamma, clip_grad=clip_grad or None,
        pretrained_lr_mult=pretrained_lr_mult, freeze_trunk=freeze_trunk, seed=seed, device=device, amp=amp, workers=workers,
        frame_cache=str(frame_cache) if frame_cache else None, strict=strict, checkpoint_every=checkpoint_every, max_steps=max_steps, clip_pool=choice(ClipPool, clip_pool, "--clip-pool"),
        error_norm=choice(ErrorNorm, error_norm, "--error-norm"), norm_points=points, auc_threshold=auc_threshold,
    )
    is_main = int(os.environ.get("RANK", "0")) == 0
    callback, finish = _train_progress(json_output or not is_main)
    try:
        result = train(model, splits, output_dir, config, resume=resume, progress=callback)
    finally:
        finish()
    if not is_main:
        return
    if json_output:
        print_json(result.to_dict())
        return
    if result.history:
        stdout.print(_epoch_table(result.history, f"{model_path.name} on {data}"))
    if result.skipped:
        stderr.print(f"[yellow]{len(result.skipped)} clip(s) skipped[/] (unreadable or too short): " + ", ".join(p for p, _ in result.skipped[:5]))
    if result.best:
        stdout.print(f"best {result.best['metric']} {result.best['score']:.4f} at epoch {result.best['epoch']} -> {result.files['best']}")
    if result.stopped_early:
        stdout.print(f"stopped after --max-steps; continue with --resume {output_dir}")
    stdout.print(f"last: {result.files['last']}  metrics: {result.files['metrics']}  curves: {result.files['curves']}")


@app.command(
    "evaluate",
    help="Metrics of a trained model on a split of clips: accuracy/top-5 (classify), mean error/AUC (regress) or sequence accuracy (ctc), "
    "per-class accuracy and a confusion matrix PNG (with -o).\n\n"
    "Example: prernn evaluate runs/gru_sih/best.safetensors --data sample_models/clips --split val -o runs/gru_sih",
)
@handles_errors
def evaluate_command(
    model_path: Annotated[Path, typer.Argument(metavar="MODEL", help="A converted or trained model (.safetensors).", show_default=False)],
    data: DataOption,
    split: SplitOption = "val",
    task: TaskOption = None,
    steps: StepsOption = 8,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Clips per batch.")] = 8,
    sampling: Annotated[str, typer.Option("--sampling", help="uniform (T steps spread over each clip) or dense (every window of T steps).")] = "uniform",
    output_dir: Annotated[Optional[Path], typer.Option("--output", "-o", help="Folder for confusion_<split>.png and evaluation_<split>.json.", show_default=False)] = None,
    clip_pool: Annotated[str, typer.Option("--clip-pool", help="classify: mean of per-step log-probabilities, or last step.")] = "mean",
    error_norm: Annotated[str, typer.Option("--error-norm", help="regress: none, bbox or points.")] = "none",
    auc_threshold: Annotated[float, typer.Option("--auc-threshold", help="regress: upper error limit of the AUC.")] = 0.08,
    device: DeviceOption = "auto",
    workers: WorkersOption = 0,
    frame_cache: FrameCacheOption = None,
    strict: StrictOption = False,
    val_fraction: ValFractionOption = 0.2,
    json_output: JsonOption = False,
) -> None:
    from prernn_cli.checkpoint import load_converted
    from prernn_cli.data import Task
    from prernn_cli.errors import UserInputError
    from prernn_cli.evaluate import evaluate
    from prernn_cli.metrics import ClipPool, ErrorNorm, MetricOptions

    try:
        options = MetricOptions(ClipPool(clip_pool), ErrorNorm(error_norm), None, auc_threshold)
        task_enum = Task(task) if task else None
    except ValueError as error:
        raise UserInputError(f"{error}; see prernn evaluate --help for the choices") from None
    if sampling not in ("uniform", "dense"):
        raise UserInputError(f"--sampling {sampling!r} is not one of uniform, dense")
    model = load_converted(model_path)
    result = evaluate(model, data, split=split, steps=steps, batch_size=batch_size, sampling=sampling, val_fraction=val_fraction,
                      task=task_enum, workers=workers, device=device, options=options, output_dir=output_dir, strict=strict,
                      frame_cache=frame_cache)
    if json_output:
        print_json(result.to_dict())
        return
    from rich.table import Table

    table = Table(title=f"{model_path.name} on {data} ({split})")
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
        stderr.print(f"[yellow]{len(result.skipped)} clip(s) skipped[/]: " + ", ".join(p for p, _ in result.skipped[:5]))
    for name, path in result.files.items():
        stdout.print(f"{name}: {path}")


# ---------------------------------------------------------------- export / validate / stream (issue 5)

ConvertedModelArg = Annotated[Path, typer.Argument(help="A converted model (.safetensors written by `prernn convert` or `prernn train`).", show_default=False)]
OnnxModelArg = Annotated[Path, typer.Argument(help="An ONNX file written by `prernn export`.", show_default=False)]
ClipOption = Annotated[Optional[Path], typer.Option("--clip", help="A clip (video file or folder of frames) to validate on real frames as well as random ones.", show_default=False)]
ResizeOption = Annotated[bool, typer.Option("--resize", help="Resize (shorter side) and centre-crop frames to the model's size, converting colour, as `prernn train` does. Without it, frames must already fit.")]
AtolOption = Annotated[Optional[float], typer.Option("--atol", help="Absolute tolerance vs PyTorch (default 1e-4 for fp32, 2e-2 for fp16); passes where |onnx - torch| <= atol + rtol·|torch|.", show_default=False)]
RtolOption = Annotated[Optional[float], typer.Option("--rtol", help="Relative tolerance vs PyTorch (default 1e-3 for fp32, 2e-2 for fp16).", show_default=False)]


@app.command(
    "export",
    epilog="Examples:\n\n  prernn export model.safetensors --onnx --steps 16\n\n  prernn export model.safetensors --onnx --steps 1 -o model.step.onnx\n\n  prernn export model.safetensors --onnx --half --clip sample_models/clips/val/right/pair000_right",
)
@handles_errors
def export_command(
    model: ConvertedModelArg,
    onnx_format: Annotated[bool, typer.Option("--onnx", help="Export to ONNX (the only format).")] = False,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Output .onnx file. Default: MODEL's name with .onnx (.step.onnx for --steps 1, .fp16 for --half).", show_default=False)] = None,
    steps: Annotated[int, typer.Option("--steps", "-T", help="Time steps unrolled in the graph (T); 1 gives the streaming step model.")] = 16,
    opset: Annotated[Optional[int], typer.Option("--opset", help="ONNX opset. Default: the newest both the installed exporter and onnxruntime support.", show_default=False)] = None,
    half: Annotated[bool, typer.Option("--half", help="fp16 weights and compute, for GPU runtimes (validated against the fp32 PyTorch model with a looser tolerance).")] = False,
    batch: Annotated[str, typer.Option("--batch", help="'dynamic' or a fixed batch size.")] = "dynamic",
    atol: AtolOption = None,
    rtol: RtolOption = None,
    clip: ClipOption = None,
    resize: ResizeOption = False,
    keep_invalid: Annotated[bool, typer.Option("--keep-invalid", help="Keep the file even when validation fails (it is deleted otherwise).")] = False,
    json_output: JsonOption = False,
) -> None:
    """Export a converted model to ONNX (frames and state in, outputs and state out), then validate it.

    The graph holds the trunk, the recurrent layers unrolled over T steps and the head. Inputs `frames` \\[batch, T, C, H, W] (3D: \\[batch, T, C, L, H, W]) and `h_0.i`/`c_0.i`; outputs `outputs` \\[batch, T, K] and `h_n.i`/`c_n.i`. After writing: onnx.checker, onnxruntime vs PyTorch on random inputs (and --clip), and two T-step chunks carrying the state vs one 2T-step PyTorch run. A failed validation leaves no file unless --keep-invalid.

    Example: [bold]prernn export model.safetensors --onnx --steps 16[/]
    """
    from prernn_cli.errors import ExportError
    from prernn_cli.export import export_file

    if not onnx_format:
        raise ExportError(f"say which format to export: ONNX is the only one, e.g. prernn export {model} --onnx")
    result = export_file(
        model, output, steps=steps, opset=opset, half=half, batch=batch, atol=atol, rtol=rtol,
        clip=clip, resize=resize, keep_invalid=keep_invalid,
    )
    if json_output:
        print_json(result.to_dict())
        return
    spec = result.spec
    stdout.print(
        f"[bold]wrote[/] {result.path} ({result.size_bytes / 1e6:.2f} MB{', external data' if result.external_data else ''}) in {result.export_seconds:.1f} s   "
        f"[bold]T[/] {spec.steps}   [bold]batch[/] {spec.batch or 'dynamic'}   [bold]opset[/] {spec.opset}   [bold]precision[/] {spec.precision.value}",
        soft_wrap=True,
    )
    stdout.print(f"[bold]inputs[/] {', '.join(spec.input_names)}   [bold]outputs[/] {', '.join(spec.output_names)}", soft_wrap=True)
    if result.validation is not None:
        _render_validation(result.validation)


@app.command(
    "validate",
    epilog="Examples:\n\n  prernn validate model.onnx --against model.safetensors\n\n  prernn validate model.onnx --against model.safetensors --clip sample_models/clips/val/left/pair000_left --json\n\n  prernn validate model.onnx",
)
@handles_errors
def validate_command(
    onnx_model: OnnxModelArg,
    against: Annotated[Optional[Path], typer.Option("--against", help="The converted model (.safetensors) it was exported from: compare outputs with PyTorch. Without it only structure and shapes are checked.", show_default=False)] = None,
    clip: ClipOption = None,
    resize: ResizeOption = False,
    atol: AtolOption = None,
    rtol: RtolOption = None,
    json_output: JsonOption = False,
) -> None:
    """Check an exported ONNX file: onnx.checker, SPEC §5 names, and onnxruntime vs PyTorch (--against).

    With --against: random inputs at a batch other than the export's, --clip frames, and the chunk property (two T-step chunks carrying h_n → h_0 equal one 2T-step PyTorch run). Tolerances default to those stored at export.

    Example: [bold]prernn validate model.onnx --against model.safetensors[/]
    """
    from prernn_cli.export import validate_file

    report = validate_file(onnx_model, against, clip=clip, resize=resize, atol=atol, rtol=rtol)
    if json_output:
        print_json(report.to_dict())
        return
    stdout.print(f"[bold]{report.path}[/]   [bold]T[/] {report.steps}   [bold]batch[/] {report.batch or 'dynamic'}   [bold]opset[/] {report.opset}   [bold]precision[/] {report.precision.value}", soft_wrap=True)
    _render_validation(report)


def _render_validation(report) -> None:
    from rich import box
    from rich.table import Table

    stdout.print("[green]onnx.checker passed[/]" if report.checker else "[red]onnx.checker failed[/]")
    if report.comparisons:
        table = Table(title="onnxruntime vs PyTorch", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
        for column in ("check", "output", "shape"):
            table.add_column(column, no_wrap=True)
        for column in ("max abs", "max rel", "tolerance"):
            table.add_column(column, justify="right", no_wrap=True)
        table.add_column("", no_wrap=True)
        for c in report.comparisons:
            table.add_row(
                c.check, c.output, "×".join(map(str, c.shape)), f"{c.max_abs:.2e}", f"{c.max_rel:.2e}",
                f"{c.atol:g} + {c.rtol:g}·|t|", "[green]ok[/]" if c.passed else "[red]FAIL[/]",
            )
        stdout.print(table)
    for note in report.notes:
        stdout.print(f"[dim]{note}[/]", soft_wrap=True)
    stdout.print("[bold green]valid[/]" if report.passed else "[bold red]invalid[/]")


@app.command(
    "stream",
    epilog="Examples:\n\n  prernn stream model.step.onnx sample_models/clips/val/right/pair000_right\n\n  prernn stream model.onnx video.mp4 --provider cuda --json\n\n  prernn stream model.onnx big_video.mp4 --resize",
)
@handles_errors
def stream_command(
    onnx_model: OnnxModelArg,
    clip: Annotated[Path, typer.Argument(help="A video file or a folder of frame images.", show_default=False)],
    provider: Annotated[str, typer.Option("--provider", help="onnxruntime provider: auto (CUDA when a GPU is really usable, else CPU), cuda, tensorrt, cpu.")] = "auto",
    resize: ResizeOption = False,
    io_binding: Annotated[bool, typer.Option("--io-binding/--no-io-binding", help="Keep the state on the provider's device between calls (onnxruntime IO binding).")] = True,
    json_output: Annotated[bool, typer.Option("--json", help="JSON Lines on stdout: one record per step ({step, frames, class, index, score}); the provider goes to stderr.")] = False,
) -> None:
    """Stream a clip through an exported model with onnxruntime, carrying the state, printing a prediction per step.

    A step model (--steps 1 at export) takes one frame (one snippet for a 3D model) per call; a chunk model takes T steps per call (the last chunk is padded). Frames are preprocessed as the model's metadata says.

    Example: [bold]prernn stream model.step.onnx clip_folder/[/]
    """
    from prernn_cli.errors import UserInputError
    from prernn_cli.stream import Provider, stream_clip

    try:
        chosen = Provider(provider.lower())
    except ValueError:
        raise UserInputError(f"--provider must be one of auto, cuda, tensorrt, cpu, not {provider!r}") from None
    result = stream_clip(onnx_model, clip, chosen, resize=resize, io_binding=io_binding)
    provider_line = f"provider: {result.provider.provider.value} ({result.provider.reason})"
    if json_output:
        stderr.print(provider_line, soft_wrap=True, highlight=False)
        for prediction in result.predictions:
            sys.stdout.write(json.dumps(prediction.to_dict()) + "\n")
        return
    stdout.print(f"[bold]{provider_line}[/]", soft_wrap=True)
    for p in result.predictions:
        first, last = p.frames
        where = f"frame {first}" if first == last else f"frames {first}-{last}"
        if p.values is not None:
            stdout.print(f"step {p.step:4d}  {where:>14}  {', '.join(f'{v:.4g}' for v in p.values)}", soft_wrap=True)
        else:
            stdout.print(f"step {p.step:4d}  {where:>14}  {p.label}  {p.score:.3f}", soft_wrap=True)
    note = f", {result.dropped_frames} trailing frames dropped (less than a snippet)" if result.dropped_frames else ""
    stdout.print(f"[dim]{len(result.predictions)} steps from {result.num_frames} frames, {result.steps_per_call} per call, {result.ms_per_step:.2f} ms per step{note}[/]", soft_wrap=True)


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
    stdout.print(table)
    for analysis in report.models:
        skipped = f", {len(analysis.skipped)} skipped" if analysis.skipped else ""
        stdout.print(f"[bold]{analysis.label}[/] ({analysis.clips} clips, {analysis.steps} steps{skipped}): {analysis.reading}", soft_wrap=True)
    stdout.print(f"wrote {report.figure} and {report.summary}", soft_wrap=True)
