"""``prernn convert``: load a checkpoint, convert layers (or build the traditional baseline), save, summarise."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch

from prernn_cli.architectures import paper_aliases
from prernn_cli.checkpoint import CheckpointFormat, load_checkpoint, save_converted
from prernn_cli.errors import ConversionError
from prernn_cli.files import check_writable_output
from prernn_cli.model import RecurrentModel, convert
from prernn_cli.params import LayerShape, table3_ratio
from prernn_cli.spec import CellType, Design, HeadKind, InitScheme
from prernn_cli.surgery import analyze_network

log = logging.getLogger(__name__)


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

    def to_json(self) -> dict:
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
        }


def _count(model: RecurrentModel) -> tuple[int, int, int]:
    new_names = model.new_parameter_names()
    total = new = 0
    for name, parameter in model.named_parameters():
        total += parameter.numel()
        if name in new_names:
            new += parameter.numel()
    return total - new, new, total


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
) -> ConversionResult:
    """Convert ``layers`` of the network in ``checkpoint`` and write our safetensors format to ``output``.

    The new weights are drawn from a generator seeded with ``seed``: the same command writes the same file.
    """
    output = check_writable_output(Path(output))
    if num_classes is not None and outputs is not None:
        raise ConversionError("--num-classes and --outputs exclude each other: a head classifies or regresses; give one")
    head, head_size = HeadKind.ORIGINAL, None
    if num_classes is not None:
        head, head_size = HeadKind.CLASSIFY, num_classes
    elif outputs is not None:
        head, head_size = HeadKind.REGRESS, outputs
    if head_size is not None and head_size < 1:
        flag = "--num-classes" if head is HeadKind.CLASSIFY else "--outputs"
        raise ConversionError(f"{flag} must be at least 1, got {head_size}")
    loaded = load_checkpoint(checkpoint, arch=arch, trust_pickle=trust_pickle)
    if loaded.format is CheckpointFormat.PRERNN:
        raise ConversionError(f"{checkpoint} is already a converted prernn model; convert the original checkpoint instead")
    if loaded.architecture is None:
        raise ConversionError(
            f"{checkpoint} is a {loaded.format.value} whose architecture is unknown, so a converted model could not be "
            "rebuilt from its spec; save a state_dict and pass --arch NAME (or package.module:callable)"
        )
    base = loaded.model.eval()
    aliases = paper_aliases(loaded.architecture, base)
    report = analyze_network(base, loaded.input_spec, aliases)
    with torch.random.fork_rng(devices=[]):  # seeded new weights, the caller's RNG state untouched
        torch.manual_seed(seed)
        model = convert(
            base, loaded.architecture, loaded.input_spec, layers, cell, sih=sih, traditional=traditional,
            head=head, outputs=head_size, init_hh=init_hh, aliases=aliases, hidden_size=hidden_size, report=report,
        )
    save_converted(model, output)
    resolved = [report.get(aliases.get(name, name)) for name in layers]
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
    )
