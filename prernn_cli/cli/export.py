"""``prernn export`` and ``prernn validate``: a converted model to ONNX, and the check of an ONNX file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich import box
from rich.table import Table

from prernn_cli.cli.app import app, handles_errors, literal, print_json, stdout
from prernn_cli.cli.options import (
    AtolOption,
    ClipOption,
    JsonOption,
    ModelArchOption,
    OnnxModelArg,
    ResizeOption,
    RtolOption,
)

ConvertedModelArg = Annotated[
    list[Path],
    typer.Argument(
        metavar="MODEL",
        help="A converted model (.safetensors written by `prernn convert` or `prernn train`); "
        "with --fuse, one trained classification model per stream.",
        show_default=False,
    ),
]
FuseOption = Annotated[
    bool,
    typer.Option(
        "--fuse",
        help="Export the MODELs as one late-fusion graph: inputs stream<i>.frames and stream<i>.h_0.*, outputs "
        "`probabilities` (the weighted mean of the streams' softmax per step) and stream<i>.h_n.*.",
    ),
]
FuseWeightsOption = Annotated[
    Optional[str],
    typer.Option(
        "--weights",
        help="With --fuse: one weight per MODEL, comma-separated (normalised to sum to 1). Default: equal weights.",
        show_default=False,
    ),
]
OnnxFormatOption = Annotated[
    bool, typer.Option("--onnx", help="Export to ONNX: the only format, and the default (accepted, not needed).")
]
OnnxOutputOption = Annotated[
    Optional[Path],
    typer.Option(
        "--output",
        "-o",
        help="Output .onnx file. Default: MODEL's name with .onnx (.step.onnx for --steps 1, .fp16 for --half); "
        "with --fuse, fused.onnx beside the first MODEL.",
        show_default=False,
    ),
]
UnrollStepsOption = Annotated[
    Optional[int],
    typer.Option(
        "--steps",
        "-T",
        min=1,
        help="Time steps unrolled in the graph (T); 1 gives the streaming step model. "
        "Default: the T the model was trained with (16 if untrained).",
        show_default=False,
    ),
]
OpsetOption = Annotated[
    Optional[int],
    typer.Option(
        "--opset",
        min=1,
        help="ONNX opset. Default: the newest both the installed exporter and onnxruntime support.",
        show_default=False,
    ),
]
HalfOption = Annotated[
    bool,
    typer.Option(
        "--half",
        help="fp16 weights and compute, for GPU runtimes "
        "(validated against the fp32 PyTorch model with a looser tolerance).",
    ),
]
BatchOption = Annotated[str, typer.Option("--batch", help="'dynamic' or a fixed batch size.")]
KeepInvalidOption = Annotated[
    bool,
    typer.Option("--keep-invalid", help="Keep the file even when validation fails (it is deleted otherwise)."),
]
AgainstOption = Annotated[
    Optional[Path],
    typer.Option(
        "--against",
        help="The converted model (.safetensors) it was exported from: compare outputs with PyTorch. "
        "Without it only structure and shapes are checked.",
        show_default=False,
    ),
]


@app.command(
    "export",
    help="Export a converted model to ONNX (frames and state in, outputs and state out), then validate it.\n\n"
    "The graph holds the trunk, the recurrent layers unrolled over T steps and the head. Inputs "
    "`frames` \\[batch, T, C, H, W] (3D: \\[batch, T, C, L, H, W]) and `h_0.i`/`c_0.i`; outputs "
    "`outputs` \\[batch, T, K] and `h_n.i`/`c_n.i`. After writing: onnx.checker, onnxruntime vs "
    "PyTorch on random inputs (and --clip), and two T-step chunks carrying the state vs one 2T-step "
    "PyTorch run. A failed validation leaves no file unless --keep-invalid.\n\n"
    "Example: [bold]prernn export model.safetensors --steps 16[/]",
    epilog="Examples:\n\n  prernn export model.safetensors --steps 16\n\n"
    "  prernn export model.safetensors --steps 1 -o model.step.onnx\n\n"
    "  prernn export model.safetensors --half --clip sample_models/clips/val/right/pair000_right",
)
@handles_errors
def export_command(
    model: ConvertedModelArg,
    onnx_format: OnnxFormatOption = False,  # accepted for the habit: ONNX is always written
    output: OnnxOutputOption = None,
    steps: UnrollStepsOption = None,
    opset: OpsetOption = None,
    half: HalfOption = False,
    batch: BatchOption = "dynamic",
    atol: AtolOption = None,
    rtol: RtolOption = None,
    clip: ClipOption = None,
    resize: ResizeOption = False,
    keep_invalid: KeepInvalidOption = False,
    arch: ModelArchOption = None,
    fuse: FuseOption = False,
    weights: FuseWeightsOption = None,
    json_output: JsonOption = False,
) -> None:
    from prernn_cli.export import export_file

    if fuse or len(model) > 1 or weights is not None:
        result = _export_fused(model, output, fuse, weights, steps=steps, opset=opset, batch=batch, atol=atol,
                               rtol=rtol, keep_invalid=keep_invalid, half=half, clip=clip, arch=arch)  # fmt: skip
    else:
        result = export_file(
            model[0], output, steps=steps, opset=opset, half=half, batch=batch, atol=atol, rtol=rtol,
            clip=clip, resize=resize, keep_invalid=keep_invalid, arch=arch,
        )  # fmt: skip
    if json_output:
        print_json(result.to_dict())
        return
    _render_export(result)
    if result.validation is not None:
        _render_validation(result.validation)


@app.command(
    "validate",
    help="Check an exported ONNX file: onnx.checker, SPEC §5 names, and onnxruntime vs PyTorch (--against).\n\n"
    "With --against: random inputs at a batch other than the export's, --clip frames, and the chunk "
    "property (two T-step chunks carrying h_n → h_0 equal one 2T-step PyTorch run). Tolerances "
    "default to those stored at export.\n\n"
    "Example: [bold]prernn validate model.onnx --against model.safetensors[/]",
    epilog="Examples:\n\n  prernn validate model.onnx --against model.safetensors\n\n"
    "  prernn validate model.onnx --against model.safetensors --clip sample_models/clips/val/left/pair000_left --json"
    "\n\n  prernn validate model.onnx",
)
@handles_errors
def validate_command(
    onnx_model: OnnxModelArg,
    against: AgainstOption = None,
    clip: ClipOption = None,
    resize: ResizeOption = False,
    atol: AtolOption = None,
    rtol: RtolOption = None,
    arch: ModelArchOption = None,
    json_output: JsonOption = False,
) -> None:
    from prernn_cli.export import validate_file

    report = validate_file(onnx_model, against, clip=clip, resize=resize, atol=atol, rtol=rtol, arch=arch)
    if json_output:
        print_json(report.to_dict())
        return
    stdout.print(
        f"[bold]{literal(report.path)}[/]   [bold]T[/] {report.steps}   [bold]batch[/] {report.batch or 'dynamic'}   "
        f"[bold]opset[/] {report.opset}   [bold]precision[/] {report.precision.value}",
        soft_wrap=True,
    )
    _render_validation(report)


def _export_fused(models, output, fuse, weights, *, half, clip, arch, **options):
    """``--fuse``: several models as one late-fusion graph (see :mod:`prernn_cli.export.fused`)."""
    from prernn_cli.errors import UserInputError
    from prernn_cli.export.fused import export_fused_files
    from prernn_cli.fusion import parse_weights

    if not fuse:
        what = "--weights" if len(models) == 1 else f"{len(models)} models"
        raise UserInputError(f"{what} given without --fuse; add --fuse to export one fused graph, or export one model")
    for flag, value in (("--half", half), ("--clip", clip), ("--arch", arch)):
        if value:
            raise UserInputError(f"{flag} is not supported with --fuse; export the fused models without it")
    return export_fused_files(models, output, parse_weights(weights, len(models)), **options)


def _render_export(result) -> None:
    """The file written and its graph's shape."""
    spec = result.spec
    external = ", external data" if result.external_data else ""
    stdout.print(
        f"[bold]wrote[/] {literal(result.path)} ({result.size_bytes / 1e6:.2f} MB{external}) in {result.export_seconds:.1f} s   "
        f"[bold]T[/] {spec.steps}   [bold]batch[/] {spec.batch or 'dynamic'}   [bold]opset[/] {spec.opset}   "
        f"[bold]precision[/] {spec.precision.value}",
        soft_wrap=True,
    )
    stdout.print(
        f"[bold]inputs[/] {literal(', '.join(spec.input_names))}   "
        f"[bold]outputs[/] {literal(', '.join(spec.output_names))}",
        soft_wrap=True,
    )


def _render_validation(report) -> None:
    stdout.print("[green]onnx.checker passed[/]" if report.checker else "[red]onnx.checker failed[/]")
    if report.comparisons:
        first = report.comparisons[0]
        rule = f"max abs ≤ {_short(first.atol)} + {_short(first.rtol)}·max|t|"  # max|t|: the output's largest |torch|
        table = Table(
            title=f"onnxruntime vs PyTorch (ok where {rule})",
            title_justify="left",
            box=box.SIMPLE_HEAD,
            pad_edge=False,
            # a fused graph's long output names (stream<i>.h_n.*) fit 80 columns only with narrower gaps
            collapse_padding=any(len(c.output) > 8 for c in report.comparisons),
        )
        for column in ("check", "output", "shape"):
            table.add_column(column, no_wrap=True)
        for column in ("max abs", "max|t|", "max rel", "tolerance"):
            table.add_column(column, justify="right", no_wrap=True)
        table.add_column("", no_wrap=True)
        for c in report.comparisons:
            table.add_row(
                c.check, c.output, "×".join(map(str, c.shape)), f"{c.max_abs:.2e}", f"{c.scale:.3g}",
                f"{c.max_rel:.2e}", f"{c.tolerance:.2e}", "[green]ok[/]" if c.passed else "[red]FAIL[/]",
            )  # fmt: skip
        stdout.print(table)
    for note in report.notes:
        stdout.print(f"[dim]{literal(note)}[/]", soft_wrap=True)
    stdout.print("[bold green]valid[/]" if report.passed else "[bold red]invalid[/]")


def _short(value: float) -> str:
    """``1e-4`` rather than ``0.0001``: tolerances read best in powers of ten."""
    mantissa, exponent = f"{value:.3e}".split("e")
    if -2 <= int(exponent) <= 3:
        return f"{value:g}"
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
