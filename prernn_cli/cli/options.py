"""Options and arguments shared by several commands, and the parsers of list-valued options.

Choices are the library's enums (Typer parses them, case-insensitively); an option used by one
command only is declared in that command's module.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Optional

import typer

from prernn_cli.errors import LayerError
from prernn_cli.params import ALL_CELLS
from prernn_cli.spec import CellType, Task

# ---------------------------------------------------------------- checkpoints and layers

CheckpointArg = Annotated[
    Path,
    typer.Argument(
        metavar="CHECKPOINT",
        help="Checkpoint: state_dict (.pt/.pth), TorchScript, safetensors, or a prernn model.",
        show_default=False,
    ),
]
ArchOption = Annotated[
    Optional[str],
    typer.Option(
        "--arch",
        help="Architecture: a torchvision model name, c3d, digit_vgg/digit_resnet/digit_c3d, "
        "or package.module:callable. Identified from the weights when omitted.",
    ),
]
TrustPickleOption = Annotated[
    bool,
    typer.Option(
        "--trust-pickle",
        help="Allow loading a whole pickled nn.Module. Unpickling runs code from the file: only for files you trust.",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout and nothing else.")]
LayerOption = Annotated[
    str,
    typer.Option(
        "--layer", "-l", help="Layer(s) to convert, comma-separated: dotted names or paper aliases (fc6, fc7, res5c)."
    ),
]

# ---------------------------------------------------------------- clips (train, evaluate)

DataOption = Annotated[
    Path,
    typer.Option(
        "--data",
        "-d",
        help="Clips: DIR/<class>/<clip> (video files or frame folders), DIR/{train,val}/<class>/<clip>, "
        "or a .csv/.jsonl manifest.",
        show_default=False,
    ),
]
TaskOption = Annotated[
    Optional[Task],
    typer.Option(
        "--task",
        case_sensitive=False,
        help="classify (clip folders, label column), regress (targets column), ctc (labels column). "
        "Default: from the data / the model.",
        show_default=False,
    ),
]
StepsOption = Annotated[
    int,
    typer.Option(
        "--steps",
        "-T",
        min=1,
        help="Time steps sampled per clip (for 3D backbones each step is a snippet of L frames).",
    ),
]
DeviceOption = Annotated[str, typer.Option("--device", help="auto (CUDA when available), cpu or cuda.")]
FrameCacheOption = Annotated[
    Optional[Path],
    typer.Option(
        "--frame-cache",
        help="Keep every clip's decoded frames, resized for the model (uint8), in this folder: clips are decoded once "
        "and read from there afterwards (later epochs, later runs, evaluate). "
        "Costs frames × H × W × C bytes per clip.",
        show_default=False,
    ),
]
WorkersOption = Annotated[
    int,
    typer.Option(
        "--workers", min=0, help="DataLoader worker processes decoding clips (0: decode in the main process)."
    ),
]
StrictOption = Annotated[
    bool, typer.Option("--strict", help="Stop at the first unreadable or too-short clip instead of skipping it.")
]
ValFractionOption = Annotated[
    float,
    typer.Option(
        "--val-fraction",
        help="Share of each class held out for validation when DIR has no train/val folders (deterministic).",
    ),
]

# ---------------------------------------------------------------- ONNX files (export, validate, stream)

OnnxModelArg = Annotated[Path, typer.Argument(help="An ONNX file written by `prernn export`.", show_default=False)]
ClipOption = Annotated[
    Optional[Path],
    typer.Option(
        "--clip",
        help="A clip (video file or folder of frames) to validate on real frames as well as random ones.",
        show_default=False,
    ),
]
ResizeOption = Annotated[
    bool,
    typer.Option(
        "--resize",
        help="Resize (shorter side) and centre-crop frames to the model's size, converting colour, as `prernn train` "
        "does. Without it, frames must already fit.",
    ),
]
AtolOption = Annotated[
    Optional[float],
    typer.Option(
        "--atol",
        help="Absolute tolerance vs PyTorch (default 1e-4 for fp32, 2e-2 for fp16); "
        "passes where |onnx - torch| <= atol + rtol·|torch|.",
        show_default=False,
    ),
]
RtolOption = Annotated[
    Optional[float],
    typer.Option(
        "--rtol", help="Relative tolerance vs PyTorch (default 1e-3 for fp32, 2e-2 for fp16).", show_default=False
    ),
]

# ---------------------------------------------------------------- parsers


def invalid_choice(value: str, choices: Sequence[str]) -> typer.BadParameter:
    """The usage error for a value outside ``choices``, worded as Typer words its own enum options' error."""
    return typer.BadParameter(f"Value error, {value!r} is not one of {', '.join(map(repr, choices))}.")


def parse_cells(values: Sequence[str] | None) -> tuple[CellType, ...]:
    """``--cell`` values (repeatable, comma-separated, any case) as cells, each once; all three when none are given."""
    cells: list[CellType] = []
    for value in values or ():
        for part in (part.strip() for part in value.split(",")):
            if not part:
                continue
            try:
                cell = CellType(part.lower())
            except ValueError:
                raise invalid_choice(part, [c.value for c in CellType]) from None
            if cell not in cells:
                cells.append(cell)
    return tuple(cells) or ALL_CELLS


def parse_layer_names(value: str) -> list[str]:
    """``--layer fc6,fc7`` as a list of names, in the order given."""
    names = [part.strip() for part in value.split(",") if part.strip()]
    if not names:
        raise LayerError("no layer named; give --layer with a dotted name or paper alias, e.g. --layer fc6,fc7")
    if len(set(names)) != len(names):
        raise LayerError(f"a layer is named twice in --layer {value!r}; name each layer once")
    return names
