"""``prernn stream``: a clip through an exported model with onnxruntime, one prediction per step."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from prernn_cli.choices import Provider
from prernn_cli.cli.app import app, handles_errors, literal, print_json, stdout
from prernn_cli.cli.options import JsonOption, OnnxModelArg, ResizeOption

ClipArg = Annotated[
    Path, typer.Argument(metavar="CLIP", help="A video file or a folder of frame images.", show_default=False)
]
ProviderOption = Annotated[
    Provider,
    typer.Option(
        "--provider",
        case_sensitive=False,
        help="onnxruntime provider: auto (CUDA when a GPU is really usable, else CPU), cuda, tensorrt, cpu.",
    ),
]
IoBindingOption = Annotated[
    bool,
    typer.Option(
        "--io-binding/--no-io-binding",
        help="Keep the state on the provider's device between calls (onnxruntime IO binding).",
    ),
]


@app.command(
    "stream",
    help="Stream a clip through an exported model with onnxruntime, carrying the state, "
    "printing a prediction per step.\n\n"
    "A step model (--steps 1 at export) takes one frame (one snippet for a 3D model) per call; a "
    "chunk model takes T steps per call (the last chunk is padded). Frames are preprocessed as the "
    "model's metadata says.\n\n"
    "Example: [bold]prernn stream model.step.onnx clip_folder/[/]",
    epilog="Examples:\n\n  prernn stream model.step.onnx sample_models/clips/val/right/pair000_right\n\n"
    "  prernn stream model.onnx video.mp4 --provider cuda --json\n\n  prernn stream model.onnx big_video.mp4 --resize",
)
@handles_errors
def stream_command(
    onnx_model: OnnxModelArg,
    clip: ClipArg,
    provider: ProviderOption = Provider.AUTO,
    resize: ResizeOption = False,
    io_binding: IoBindingOption = True,
    json_output: JsonOption = False,
) -> None:
    from prernn_cli.stream import stream_clip

    result = stream_clip(onnx_model, clip, provider, resize=resize, io_binding=io_binding)
    provider_line = literal(f"provider: {result.provider.provider.value} ({result.provider.reason})")
    if json_output:  # one document: the run and its predictions ({step, frames, class, index, score})
        print_json(result.to_dict())
        return
    stdout.print(f"[bold]{provider_line}[/]", soft_wrap=True)
    _render_predictions(result)


def _render_predictions(result) -> None:
    """One line per step, then the totals."""
    for p in result.predictions:
        first, last = p.frames
        where = f"frame {first}" if first == last else f"frames {first}-{last}"
        if p.values is not None:
            stdout.print(f"step {p.step:4d}  {where:>14}  {', '.join(f'{v:.4g}' for v in p.values)}", soft_wrap=True)
        else:
            stdout.print(f"step {p.step:4d}  {where:>14}  {literal(p.label)}  {p.score:.3f}", soft_wrap=True)
    note = f", {result.dropped_frames} trailing frames dropped (less than a snippet)" if result.dropped_frames else ""
    stdout.print(
        f"[dim]{len(result.predictions)} steps from {result.num_frames} frames, {result.steps_per_call} per call, "
        f"{result.ms_per_step:.2f} ms per step{note}[/]",
        soft_wrap=True,
    )
