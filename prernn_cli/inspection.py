"""What ``prernn inspect`` reports about a checkpoint, as data (the CLI only renders it).

:func:`inspect_checkpoint` loads a checkpoint and returns an :class:`Inspection`:
its format, architecture, parameter counts, expected input, every module with
its convertibility (from :func:`prernn_cli.surgery.network_report`) and paper
aliases, and — for a model prernn converted — its recurrent structure.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from torch import nn

from prernn_cli.architectures import (
    architecture_input,
    build_empty_architecture,
    build_registered_architecture,
    paper_aliases,
)
from prernn_cli.checkpoint import CheckpointFormat, LoadedCheckpoint, load_checkpoint
from prernn_cli.errors import ArchitectureError, ConversionError, PrernnError
from prernn_cli.input_size import input_at, report_at, resize_model, resolve_at
from prernn_cli.params import ALL_CELLS, LayerShape, ParamsReport, count_parameters
from prernn_cli.spec import CellType, InputSpec, ModelSpec
from prernn_cli.surgery import LayerReport, NetworkReport

__all__ = [
    "Inspection",
    "RecurrentLayerRow",
    "account_checkpoint",
    "account_layers",
    "inspect_checkpoint",
    "inspect_loaded",
    "is_weight_layer",
]

logger = logging.getLogger(__name__)

_WEIGHT_LAYER_TYPES = ("Linear", "Conv1d", "Conv2d", "Conv3d")


def is_weight_layer(layer: LayerReport) -> bool:
    """Whether ``layer`` is an fc or conv layer (the rows ``inspect`` shows by default)."""
    return layer.type in _WEIGHT_LAYER_TYPES or layer.convertible


@dataclass(frozen=True)
class RecurrentLayerRow:
    """One recurrent layer of a converted model."""

    index: int
    name: str  # the base network's layer it was made from (for a traditional layer: the layer it sits under)
    alias: Optional[str]  # paper alias of ``name`` on the base architecture
    kind: str
    input_size: int
    hidden_size: int
    activation: str
    params: int

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Inspection:
    """Everything ``inspect`` shows about one checkpoint."""

    path: str
    format: CheckpointFormat
    architecture: Optional[str]
    identified: bool
    num_classes: Optional[int]
    total_params: int
    trainable_params: int
    input_spec: InputSpec
    input_known: bool
    aliases: dict[str, str]
    network: Optional[NetworkReport]  # None for a converted model (see ``spec`` / ``recurrent``)
    spec: Optional[ModelSpec] = None
    recurrent: tuple[RecurrentLayerRow, ...] = ()
    weights: Optional[str] = None  # the entry of a training checkpoint loaded ("state_dict", "state_dict_ema")
    other_weights: Optional[str] = None  # the other entry it holds

    def rows(self, show_all: bool = False) -> list[LayerReport]:
        """The layers to list: every module with ``show_all``, else the fc/conv layers."""
        if self.network is None:
            return []
        return (
            list(self.network.layers)
            if show_all
            else [layer for layer in self.network.layers if is_weight_layer(layer)]
        )

    def convertible(self) -> list[LayerReport]:
        return self.network.convertible() if self.network is not None else []

    def why_none_convertible(self) -> Optional[str]:
        """Why the network has no convertible layer (None when it has some, or is already converted)."""
        if self.network is None or self.convertible():
            return None
        if not self.network.traced:
            return self.network.trace_error
        weight_layers = [layer for layer in self.network.layers if is_weight_layer(layer)]
        if not weight_layers:
            return "it has no fc or conv layer"
        reasons = Counter(layer.reason for layer in weight_layers if layer.reason)
        common = "; ".join(f"{count}× {reason}" for reason, count in reasons.most_common(2))
        return f"none of its {len(weight_layers)} fc/conv layers qualifies ({common})"

    def to_dict(self, show_all: bool = False) -> dict:
        network = self.network
        return {
            "path": self.path,
            "format": self.format.value,
            "architecture": self.architecture,
            "identified": self.identified,
            "weights": self.weights,
            "other_weights": self.other_weights,
            "num_classes": self.num_classes,
            "parameters": {"total": self.total_params, "trainable": self.trainable_params},
            "input": {**self.input_spec.to_dict(), "known": self.input_known},
            "aliases": dict(self.aliases),
            "traced": network.traced if network is not None else None,
            "trace_error": network.trace_error if network is not None else None,
            "output_layer": network.output_layer if network is not None else None,
            "feature_size": network.feature_size if network is not None else None,
            "convertible": [layer.name for layer in self.convertible()],
            "no_convertible_reason": self.why_none_convertible(),
            "layers": [layer.to_dict() for layer in self.rows(show_all)],
            "converted": self.spec.to_dict() if self.spec is not None else None,
            "recurrent_layers": [row.to_dict() for row in self.recurrent],
        }


def _count(model: nn.Module) -> tuple[int, int]:
    total = trainable = 0
    for parameter in model.parameters():
        total += parameter.numel()
        if parameter.requires_grad:
            trainable += parameter.numel()
    return total, trainable


def _base_aliases(spec: ModelSpec) -> dict[str, str]:
    try:
        # a name read from a file: registered architectures only (a user's class has no paper aliases)
        base = build_registered_architecture(spec.base_architecture, spec.base_num_classes)
    except PrernnError as error:
        logger.info("no paper aliases for %s: %s", spec.base_architecture, error)
        return {}
    return paper_aliases(spec.base_architecture, base)


def _recurrent_rows(model: nn.Module, spec: ModelSpec, aliases: dict[str, str]) -> tuple[RecurrentLayerRow, ...]:
    layers = getattr(model, "recurrent_layers", None)
    by_name = {name: alias for alias, name in aliases.items()}  # as network_report: a name's last alias wins
    rows = []
    for index, layer_spec in enumerate(spec.layers):
        params = sum(p.numel() for p in layers[index].parameters()) if layers is not None and index < len(layers) else 0
        rows.append(
            RecurrentLayerRow(
                index=index,
                name=layer_spec.name,
                alias=by_name.get(layer_spec.name),
                kind=layer_spec.kind.value,
                input_size=layer_spec.input_size,
                hidden_size=layer_spec.hidden_size,
                activation=layer_spec.activation,
                params=params,
            )
        )
    return tuple(rows)


def inspect_loaded(
    loaded: LoadedCheckpoint,
    path: Path | str = "",
    input_size: Optional[Sequence[int]] = None,
    snippet_length: Optional[int] = None,
    user_class: Optional[str] = None,
) -> Inspection:
    """Describe an already loaded checkpoint, at its own input or at ``input_size`` / ``snippet_length``.

    At another size a network is traced there (shapes and convertibility at that size); a converted
    model is checked as ``train --input-size`` would move it (``user_class``: the class it was built on).
    """
    total, trainable = _count(loaded.model)
    spec, input_spec = loaded.spec, loaded.input_spec
    if spec is not None:
        if input_size is not None or snippet_length is not None:
            spec = resize_model(loaded.model, input_size, snippet_length, user_class).spec
            input_spec = spec.input
        base_aliases = _base_aliases(spec)
        network = None
        recurrent = _recurrent_rows(loaded.model, spec, base_aliases)
    else:
        base_aliases = paper_aliases(loaded.architecture, loaded.model)
        input_spec = input_at(loaded.input_spec, input_size, snippet_length)
        name = loaded.architecture or "the network"
        network = report_at(loaded.model, name, input_spec, base_aliases, loaded.input_spec)
        recurrent = ()
    num_classes = loaded.num_classes
    if num_classes is None and network is not None and network.output_layer:
        output = loaded.model.get_submodule(network.output_layer)
        num_classes = getattr(output, "out_features", None) or getattr(output, "out_channels", None)
    return Inspection(
        path=str(path),
        format=loaded.format,
        architecture=loaded.architecture,
        identified=loaded.identified,
        num_classes=num_classes,
        total_params=total,
        trainable_params=trainable,
        input_spec=input_spec,
        input_known=loaded.input_known or input_size is not None,
        aliases=base_aliases,
        network=network,
        spec=spec,
        recurrent=recurrent,
        weights=loaded.weights,
        other_weights=loaded.other_weights,
    )


def inspect_checkpoint(
    path: Path | str,
    arch: Optional[str] = None,
    trust_pickle: bool = False,
    input_size: Optional[Sequence[int]] = None,
    snippet_length: Optional[int] = None,
    ema: bool = False,
) -> Inspection:
    """Load ``path`` (see :func:`~prernn_cli.checkpoint.load_checkpoint`) and describe it (at ``input_size``, if given)."""
    loaded = load_checkpoint(path, arch=arch, trust_pickle=trust_pickle, ema=ema)
    return inspect_loaded(loaded, path, input_size, snippet_length, user_class=arch)


# ---------------------------------------------------------------- parameter accounting of a network (prernn params)


def account_layers(
    model: nn.Module,
    input_spec: InputSpec,
    layer_names: Sequence[str],
    aliases: Mapping[str, str] | None = None,
    cells: Iterable[CellType] = ALL_CELLS,
    traditional_layers: int = 1,
    architecture: str | None = None,
    own_input: InputSpec | None = None,
) -> ParamsReport:
    """Find ``layer_names`` in ``model`` (dotted names or paper aliases) and account them at ``input_spec``.

    Only shapes matter, so ``model`` may live on the meta device. ``own_input``, the network's own
    input when ``input_spec`` is one the user chose: errors then name the size.
    """
    own = own_input or input_spec
    network = report_at(model, architecture or "the network", input_spec, dict(aliases or {}), own)
    resolved = resolve_at(network, list(layer_names), dict(aliases or {}), input_spec, own)
    shapes = [LayerShape.from_report(layer, network) for layer in resolved]
    logger.info("accounting %s (feature size %s)", ", ".join(shape.label for shape in shapes), network.feature_size)
    base_params = sum(p.numel() for p in model.parameters())
    output_size = output_layer_params = None
    if network.output_layer:
        output_layer = model.get_submodule(network.output_layer)
        output_size = getattr(output_layer, "out_features", None)
        output_layer_params = sum(p.numel() for p in output_layer.parameters())
    return count_parameters(
        shapes,
        feature_size=network.feature_size,
        base_params=base_params,
        cells=cells,
        traditional_layers=traditional_layers,
        architecture=architecture,
        output_size=output_size,
        output_layer_params=output_layer_params if output_size is not None else None,
    )


def account_checkpoint(
    checkpoint: Path | None,
    layer_names: Sequence[str],
    arch: str | None = None,
    cells: Iterable[CellType] = ALL_CELLS,
    traditional_layers: int = 1,
    trust_pickle: bool = False,
    input_size: Sequence[int] | None = None,
    snippet_length: int | None = None,
    ema: bool = False,
) -> ParamsReport:
    """``prernn params``: account a checkpoint's layers, or an architecture's (random weights, meta device).

    ``input_size`` / ``snippet_length``: count at that input instead of the network's own.
    """
    if checkpoint is None:
        if not arch:
            raise ArchitectureError("give a CHECKPOINT or --arch NAME (e.g. prernn params --arch vgg16 --layer fc6)")
        model = build_empty_architecture(arch)  # only shapes matter: meta device, no memory, no slow initialisation
        input_spec = architecture_input(arch)
        architecture = arch
    else:
        loaded = load_checkpoint(checkpoint, arch=arch, trust_pickle=trust_pickle, ema=ema)
        if loaded.spec is not None:
            base = loaded.spec.base_architecture
            raise ConversionError(
                f"{checkpoint} is already a converted prernn model; size its base network instead: "
                f"prernn params --arch {base} --layer {','.join(layer.name for layer in loaded.spec.layers)}"
            )
        model, input_spec, architecture = loaded.model, loaded.input_spec, loaded.architecture
    aliases = paper_aliases(architecture, model) if architecture else {}
    return account_layers(
        model,
        input_at(input_spec, input_size, snippet_length),
        layer_names,
        aliases,
        cells=cells,
        traditional_layers=traditional_layers,
        architecture=architecture,
        own_input=input_spec,
    )
