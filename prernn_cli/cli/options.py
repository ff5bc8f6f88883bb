"""Options and arguments shared by several commands, and the parsers of list-valued options.

Choices are the library's enums (Typer parses them, case-insensitively); an option used by one
command only is declared in that command's module.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from prernn_cli.errors import LayerError, UserInputError
from prernn_cli.params import ALL_CELLS
from prernn_cli.spec import CellType, Modality, Task

# ---------------------------------------------------------------- number ranges

#: seeds reach torch, numpy and Python generators: all accept 0 ... 2**32 - 1
MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class FloatRange:
    """The finite floats an option allows, open or closed at each end: the option's parser.

    Typer's ``min``/``max`` are closed bounds and let ``nan`` and ``inf`` through; this refuses both,
    so a value that would only fail deep inside training fails while the command line is parsed
    (exit 2, naming the option and this range).
    """

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __str__(self) -> str:
        low = "" if self.low is None else f"{self.low:g}{'<' if self.low_open else '<='}"
        high = "" if self.high is None else f"{'<' if self.high_open else '<='}{self.high:g}"
        if low and not high:  # x>0 rather than 0<x, as Typer words a lower bound alone
            return f"x{'>' if self.low_open else '>='}{self.low:g}"
        return f"{low}x{high}"

    def contains(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def __call__(self, value: Any) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise typer.BadParameter(f"{value!r} is not a number; give a number in the range {self}") from None
        if not self.contains(number):
            raise typer.BadParameter(f"{value} is not in the range {self}")
        return number


def float_option(*names: str, allowed: FloatRange, help: str, **options: Any) -> Any:
    """A float option checked against ``allowed``, the range shown at the end of its help."""
    return typer.Option(*names, parser=allowed, help=f"{help} \\[{allowed}]", **options)


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
        help="Architecture: a torchvision model name, c3d, digit_vgg/digit_resnet/digit_c3d, timm:NAME "
        "(a timm model; pip install 'prernn[timm]'), or package.module:callable. Identified from the weights "
        "when omitted. For a converted model built on your own class: that package.module:callable, to allow "
        "importing it.",
    ),
]
EmaOption = Annotated[
    bool,
    typer.Option(
        "--ema",
        help="Load a training checkpoint's EMA weights (timm train.py's state_dict_ema) instead of its state_dict.",
    ),
]
#: For commands that open a converted model: the user's approval to import the class it was built on.
ModelArchOption = Annotated[
    Optional[str],
    typer.Option(
        "--arch",
        metavar="PACKAGE.MODULE:CALLABLE",
        help="Only for a model built on your own class: name that class (as recorded in the model) to allow "
        "importing it. Opening such a model imports and runs that code, so it is refused without this.",
        show_default=False,
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
TrainStepsOption = Annotated[
    int,
    typer.Option(
        "--steps",
        "-T",
        min=0,
        help="Time steps sampled per clip (for 3D backbones each step is a snippet of L frames). "
        "0: the whole clip, T = the shortest training clip's frames ÷ frames per step (recorded in the model).",
    ),
]
DeviceOption = Annotated[str, typer.Option("--device", help="auto (CUDA when available), cpu, cuda or cuda:N.")]
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
        "--workers", min=0, max=256, help="DataLoader worker processes decoding clips (0: decode in the main process)."
    ),
]
EarlyStopOption = Annotated[
    int,
    typer.Option(
        "--early-stop",
        min=0,
        metavar="N",
        help="Stop when the val metric (accuracy, AUC or sequence accuracy) has not improved for N epochs "
        "(0: off). The reason goes into metrics.jsonl and the result.",
    ),
]
SplitFileOption = Annotated[
    Optional[Path],
    typer.Option(
        "--split-file",
        help="A UCF101 split list (trainlist0N.txt or testlist0N.txt beside classInd.txt) or an HMDB51 split file "
        "(<class>_test_splitN.txt; every class's file of split N is read): train on its train list, validate on its "
        "test list. --data is the folder its clip paths are relative to.",
        show_default=False,
    ),
]
GroupByOption = Annotated[
    Optional[str],
    typer.Option(
        "--group-by",
        metavar="REGEX",
        help="Hold out whole groups, not single clips: the regex's first group, searched in each clip's name, names "
        "its group (UCF101 v_Class_gXX_cYY: '_g(\\d+)_'). --val-fraction is then the share of groups.",
        show_default=False,
    ),
]
StrictOption = Annotated[
    bool, typer.Option("--strict", help="Stop at the first unreadable or too-short clip instead of skipping it.")
]
ValFractionOption = Annotated[
    float,
    float_option(
        "--val-fraction",
        allowed=FloatRange(0.0, 1.0, high_open=True),
        help="Share of each class held out for validation when DIR has no train/val folders (deterministic).",
    ),
]

# ---------------------------------------------------------------- ONNX files (export, validate, stream)

OnnxModelArg = Annotated[
    Path, typer.Argument(metavar="ONNX_MODEL", help="An ONNX file written by `prernn export`.", show_default=False)
]
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
    float_option(
        "--atol",
        allowed=FloatRange(0.0),
        help="Absolute tolerance vs PyTorch (default 1e-4 for fp32, 2e-2 for fp16): an output passes where every "
        "element has |onnx - torch| <= atol + rtol·max|torch|, max|torch| being that output's largest magnitude.",
        show_default=False,
    ),
]
RtolOption = Annotated[
    Optional[float],
    float_option(
        "--rtol",
        allowed=FloatRange(0.0),
        help="Relative tolerance vs PyTorch (default 1e-3 for fp32, 2e-2 for fp16), relative to each output's "
        "largest magnitude max|torch| (float32 rounding grows with the output's scale, not each element's).",
        show_default=False,
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


def parse_norm_points(text: str | None) -> tuple[int, int] | None:
    """``--norm-points 36,45`` as two point indices."""
    if not text:
        return None
    try:
        i, j = (int(v) for v in text.split(","))
    except ValueError:
        raise UserInputError(f"--norm-points {text!r} must be two indices I,J, e.g. 36,45") from None
    return i, j


def parse_input_size(text: str | None) -> tuple[int, int] | None:
    """``--input-size 112`` or ``112x160`` (height x width) as ``(height, width)``; the range is checked by the library."""
    if text is None:
        return None
    parts = [part.strip() for part in text.strip().lower().replace("×", "x").split("x")]
    try:
        if not 1 <= len(parts) <= 2 or not all(part.isdecimal() and len(part) <= 9 for part in parts):
            raise ValueError(text)
        return int(parts[0]), int(parts[-1])
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a size; give H or HxW in pixels, e.g. 112 or 112x160") from None


# ---------------------------------------------------------------- input size (convert, inspect, params, train)

# parse_input_size turns the value into (height, width): that is what the command receives.
InputSizeOption = Annotated[
    Optional[str],
    typer.Option(
        "--input-size",
        metavar="H[xW]",
        callback=parse_input_size,
        help="Frame size to run at: H (square) or HxW, e.g. 112 for 112×112 clips. Default: the network's own, or "
        "what a converted model records. Frames are resized (shorter side) and centre-cropped to it. convert records "
        "it in the model (evaluate, analyze, export and stream use it); train moves a converted model to it where "
        "its network allows.",
        show_default=False,
    ),
]
SnippetLengthOption = Annotated[
    Optional[int],
    typer.Option(
        "--snippet-length",
        metavar="L",
        min=1,
        help="3D backbones: frames per step (snippet length) instead of the network's own. Recorded like --input-size.",
        show_default=False,
    ),
]
ModalityOption = Annotated[
    Modality,
    typer.Option(
        "--modality",
        case_sensitive=False,
        help="What the stream reads: rgb; depth (folders of 8- or 16-bit grey PNG frames, 1 channel); flow "
        "(flow_x/ and flow_y/ folders, or computed from RGB clips with OpenCV: 2 channels per frame). The first "
        "convolution is initialised from the RGB filters; recorded in the model (train, evaluate, export, stream "
        "read it).",
    ),
]
FlowStackOption = Annotated[
    Optional[int],
    typer.Option(
        "--flow-stack",
        metavar="L",
        min=1,
        max=64,
        help="--modality flow on a 2D network: L consecutive flow frames per step, stacked into 2L channels "
        "(default 10).",
        show_default=False,
    ),
]
FlowBoundOption = Annotated[
    Optional[float],
    float_option(
        "--flow-bound",
        allowed=FloatRange(0.0, 1000.0, low_open=True),
        metavar="PIXELS",
        help="--modality flow: the displacement that flow images' 0 and 255 stand for (default 20, as TV-L1 dumps).",
        show_default=False,
    ),
]
