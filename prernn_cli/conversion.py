"""Turn a pretrained network into a recurrent model: :func:`convert` in Python, :func:`convert_checkpoint` for ``prernn convert``.

:func:`convert` resolves the layers to convert, writes the
:class:`~prernn_cli.spec.ModelSpec` of the chosen design (PreRNN, PreRNN-SIH or
the traditional baseline) and builds it with
:func:`~prernn_cli.model.build_recurrent_model`. :func:`convert_checkpoint` loads a
checkpoint, converts it, saves our safetensors format and summarises what it did.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from prernn_cli.architectures import paper_aliases
from prernn_cli.checkpoint import CheckpointFormat, LoadedCheckpoint, load_checkpoint, save_converted
from prernn_cli.errors import ConversionError, LayerError
from prernn_cli.files import check_writable_output, refuse_overwriting
from prernn_cli.input_size import input_at, report_at, resolve_at
from prernn_cli.modality import ModalityChoice
from prernn_cli.model import RecurrentModel, build_recurrent_model
from prernn_cli.params import LayerShape, match_traditional_hidden_size, prernn_params, table3_ratio
from prernn_cli.spec import (
    CellType,
    Design,
    HeadKind,
    InitScheme,
    InputSpec,
    LayerKind,
    ModelSpec,
    RecurrentLayerSpec,
)
from prernn_cli.surgery import LayerReport, NetworkReport, network_report, resolve_layers
from prernn_cli.surgery.first_conv import with_input_channels

log = logging.getLogger(__name__)

TRADITIONAL_ACTIVATION = "tanh"  # torch.nn.RNN's default, for a TraVRNN


@dataclass(frozen=True)
class ConversionResult:
    """What ``convert`` did, for the CLI to render."""

    output: Path
    architecture: str
    identified: bool
    design: Design
    cell: CellType
    layers: tuple[str, ...]  # converted (or, traditional, matched) layers, as the user knows them
    hidden_sizes: tuple[int, ...]
    pretrained_params: int  # parameters copied from the checkpoint (backbone and W_xy copies)
    new_params: int  # parameters that start random
    total_params: int
    table3_ratio: Optional[float]  # SIH ÷ PreRNN recurrent parameters for these layers (LSTM/GRU)
    head: HeadKind
    outputs: Optional[int]
    input: Optional[InputSpec] = None  # what one step of the converted model takes (its size recorded in the spec)

    def to_dict(self) -> dict:
        return {
            "output": str(self.output),
            "architecture": self.architecture,
            "identified": self.identified,
            "design": self.design.value,
            "cell": self.cell.value,
            "layers": list(self.layers),
            "hidden_sizes": list(self.hidden_sizes),
            "pretrained_params": self.pretrained_params,
            "new_params": self.new_params,
            "total_params": self.total_params,
            "table3_ratio": self.table3_ratio,
            "head": self.head.value,
            "outputs": self.outputs,
            "input": self.input.to_dict() if self.input is not None else None,
        }


def _count(model: RecurrentModel) -> tuple[int, int, int]:
    new_names = model.new_parameter_names()
    total = new = 0
    for name, parameter in model.named_parameters():
        total += parameter.numel()
        if name in new_names:
            new += parameter.numel()
    return total - new, new, total


# ---------------------------------------------------------------------- a network in memory
def _check_design(
    cell: CellType, head: HeadKind, sih: bool, traditional: bool, outputs: Optional[int], hidden_size: Optional[int]
) -> None:
    """Raise ConversionError for a combination of options that names no design."""
    if sih and cell is CellType.VRNN:
        raise ConversionError(
            "SIH needs several gates sharing one input-to-hidden state, and a VRNN has one gate; use --cell lstm or gru, or drop --sih"
        )
    if sih and traditional:
        raise ConversionError(
            "--sih and --traditional exclude each other: SIH shares a pretrained layer between gates, the traditional design has none"
        )
    if head is not HeadKind.ORIGINAL and (outputs is None or outputs < 1):
        raise ConversionError(
            f"a new head needs a positive number of outputs, got {outputs}; pass e.g. --num-classes 10"
        )
    if hidden_size is not None and hidden_size < 1:
        raise ConversionError(f"--hidden-size must be positive, got {hidden_size}")
    if hidden_size is not None and not traditional:
        raise ConversionError("--hidden-size is only for --traditional: a converted layer keeps its pretrained size")


def _base_num_classes(base: nn.Module, report: NetworkReport) -> Optional[int]:
    """The number of outputs of the base network's output layer, if it has one."""
    base_output = base.get_submodule(report.output_layer) if report.output_layer else None
    return getattr(base_output, "out_features", None) or getattr(base_output, "out_channels", None)


def _converted_layer_specs(resolved: Sequence[LayerReport]) -> tuple[RecurrentLayerSpec, ...]:
    """One recurrent layer per converted layer, with the pretrained layer's sizes and activation."""
    return tuple(
        RecurrentLayerSpec(
            name=layer.name,
            kind=layer.kind,
            hidden_size=layer.hidden_size,
            input_size=layer.input_size,
            activation=layer.activation or "identity",
        )
        for layer in resolved
    )


def _traditional_layer_spec(
    report: NetworkReport, resolved: Sequence[LayerReport], cell: CellType, hidden_size: Optional[int]
) -> RecurrentLayerSpec:
    """The one new layer on the feature vector, sized to PreRNN's recurrent parameters for ``resolved``."""
    if report.feature_size is None:
        raise LayerError(
            "the network's output layer does not take one feature vector per frame, so a traditional layer cannot sit under it"
        )
    target = sum(prernn_params(LayerShape.from_report(layer, report), cell) for layer in resolved)
    size = hidden_size or match_traditional_hidden_size(target, report.feature_size, cell)
    log.info("traditional %s: hidden size %d matched to PreRNN's %d recurrent parameters", cell.value, size, target)
    return RecurrentLayerSpec(
        name=report.output_layer,
        kind=LayerKind.NEW,
        hidden_size=size,
        input_size=report.feature_size,
        activation=TRADITIONAL_ACTIVATION,
    )


def convert(
    base: nn.Module,
    base_architecture: str,
    input_spec: InputSpec,
    layers: Sequence[str],
    cell: CellType,
    *,
    sih: bool = False,
    traditional: bool = False,
    head: HeadKind = HeadKind.ORIGINAL,
    outputs: Optional[int] = None,
    init_hh: InitScheme = InitScheme.UNIFORM,
    aliases: Optional[dict[str, str]] = None,
    hidden_size: Optional[int] = None,
    class_names: Optional[Sequence[str]] = None,
    report: Optional[NetworkReport] = None,
) -> RecurrentModel:
    """Convert pretrained ``layers`` of ``base`` into recurrent layers (or build the traditional baseline).

    ``traditional=True`` keeps the backbone untouched and puts one new recurrent
    layer on its feature vector (the input of the output layer), with a hidden
    size matched to the recurrent parameter count PreRNN would have for
    ``layers`` (or ``hidden_size`` when given), then a new head. ``report``, from
    :func:`~prernn_cli.surgery.network_report` on ``base`` with ``aliases``, saves tracing it again.
    """
    cell, head = CellType(cell), HeadKind(head)
    _check_design(cell, head, sih, traditional, outputs, hidden_size)
    if report is None:
        report = network_report(base, input_spec, aliases)
    if not report.traced:
        raise LayerError(f"cannot convert: {report.trace_error}")
    resolved = resolve_layers(report, layers, aliases)
    base_num_classes = _base_num_classes(base, report)
    if traditional:
        layer_specs = (_traditional_layer_spec(report, resolved, cell, hidden_size),)
        if head is HeadKind.ORIGINAL:
            head, outputs = HeadKind.CLASSIFY, base_num_classes
    else:
        layer_specs = _converted_layer_specs(resolved)
    spec = ModelSpec(
        base_architecture=base_architecture,
        layers=layer_specs,
        cell=cell,
        design=Design.TRADITIONAL if traditional else Design.SIH if sih else Design.PRERNN,
        head=head,
        outputs=outputs,
        base_num_classes=base_num_classes,
        input=input_spec,
        init_hh=InitScheme(init_hh),
        class_names=tuple(class_names) if class_names else None,
    )
    return build_recurrent_model(base, spec, report)


# ---------------------------------------------------------------------- a checkpoint on disk
def _head_choice(num_classes: Optional[int], outputs: Optional[int]) -> tuple[HeadKind, Optional[int]]:
    """The head ``--num-classes`` / ``--outputs`` ask for, and its size (the original head when neither)."""
    if num_classes is not None and outputs is not None:
        raise ConversionError(
            "--num-classes and --outputs exclude each other: a head classifies or regresses; give one"
        )
    head, head_size = HeadKind.ORIGINAL, None
    if num_classes is not None:
        head, head_size = HeadKind.CLASSIFY, num_classes
    elif outputs is not None:
        head, head_size = HeadKind.REGRESS, outputs
    if head_size is not None and head_size < 1:
        flag = "--num-classes" if head is HeadKind.CLASSIFY else "--outputs"
        raise ConversionError(f"{flag} must be at least 1, got {head_size}")
    return head, head_size


def _load_base(checkpoint: Path, arch: Optional[str], trust_pickle: bool, ema: bool = False) -> LoadedCheckpoint:
    """Load the pretrained network to convert; raise for a converted model or an unknown architecture."""
    loaded = load_checkpoint(checkpoint, arch=arch, trust_pickle=trust_pickle, ema=ema)
    if loaded.format is CheckpointFormat.PRERNN:
        raise ConversionError(
            f"{checkpoint} is already a converted prernn model; convert the original checkpoint instead"
        )
    if loaded.architecture is None:
        raise ConversionError(
            f"{checkpoint} is a {loaded.format.value} whose architecture is unknown, so a converted model could not be "
            "rebuilt from its spec; save a state_dict and pass --arch NAME (or package.module:callable)"
        )
    return loaded


def _summarise(
    output: Path,
    loaded: LoadedCheckpoint,
    model: RecurrentModel,
    report: NetworkReport,
    resolved: Sequence[LayerReport],
) -> ConversionResult:
    """What was converted, as the CLI shows it: layers, sizes, parameter counts, Table 3's ratio."""
    shapes = [LayerShape.from_report(layer, report) for layer in resolved]
    pretrained, new, total = _count(model)
    return ConversionResult(
        output=output,
        architecture=loaded.architecture,
        identified=loaded.identified,
        design=model.spec.design,
        cell=model.spec.cell,
        layers=tuple(layer.label for layer in resolved),
        hidden_sizes=tuple(layer.hidden_size for layer in model.spec.layers),
        pretrained_params=pretrained,
        new_params=new,
        total_params=total,
        table3_ratio=table3_ratio(shapes, model.spec.cell),
        head=model.spec.head,
        outputs=model.spec.outputs,
        input=model.spec.input,
    )


def _stream_base(base: nn.Module, own: InputSpec, input_spec: InputSpec) -> nn.Module:
    """``base`` reading ``input_spec``'s channels: a depth or flow stream's first convolution (cross-modality init)."""
    return base if input_spec.channels == own.channels else with_input_channels(base, input_spec.channels)


def convert_checkpoint(
    checkpoint: Path,
    layers: Sequence[str],
    cell: CellType,
    output: Path,
    *,
    sih: bool = False,
    traditional: bool = False,
    num_classes: Optional[int] = None,
    outputs: Optional[int] = None,
    init_hh: InitScheme = InitScheme.UNIFORM,
    hidden_size: Optional[int] = None,
    arch: Optional[str] = None,
    trust_pickle: bool = False,
    seed: int = 0,
    input_size: Optional[Sequence[int]] = None,
    snippet_length: Optional[int] = None,
    ema: bool = False,
    modality: ModalityChoice = ModalityChoice(),
) -> ConversionResult:
    """Convert ``layers`` of the network in ``checkpoint`` and write our safetensors format to ``output``.

    The new weights are drawn from a generator seeded with ``seed``: the same command writes the same file.
    ``input_size`` (height, width) and ``snippet_length`` (3D backbones) replace the network's own
    input: the spec records them, and convertibility and parameter counts are those at that size.
    ``modality``: a depth or flow stream, its first convolution initialised from the RGB filters.
    """
    output = check_writable_output(Path(output))
    refuse_overwriting(output, checkpoint)
    head, head_size = _head_choice(num_classes, outputs)
    loaded = _load_base(checkpoint, arch, trust_pickle, ema)
    base = loaded.model.eval()
    aliases = paper_aliases(loaded.architecture, base)
    input_spec = modality.apply(input_at(loaded.input_spec, input_size, snippet_length))
    base = _stream_base(base, loaded.input_spec, input_spec)
    report = report_at(base, loaded.architecture, input_spec, aliases, loaded.input_spec)
    if report.traced:
        resolve_at(report, layers, aliases, input_spec, loaded.input_spec)
    with torch.random.fork_rng(devices=[]):  # seeded new weights, the caller's RNG state untouched
        torch.manual_seed(seed)
        model = convert(
            base,
            loaded.architecture,
            input_spec,
            layers,
            cell,
            sih=sih,
            traditional=traditional,
            head=head,
            outputs=head_size,
            init_hh=init_hh,
            aliases=aliases,
            hidden_size=hidden_size,
            report=report,
        )
    save_converted(model, output)
    resolved = [report.get(aliases.get(name, name)) for name in layers]
    return _summarise(output, loaded, model, report, resolved)
