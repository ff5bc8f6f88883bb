"""Recurrent-parameter accounting of the three designs (SPEC §4, the paper's Table 3).

For a converted layer with pretrained weights ``W`` (``|W|`` entries), hidden
size ``H`` and ``G`` gates (VRNN 1, GRU 3, LSTM 4), the *recurrent parameters*
are those a recurrent layer adds beyond the pretrained network:

.. math::

    \\text{PreRNN}      &= (G - 1)\\,|W| + G H^2 \\\\
    \\text{PreRNN-SIH}  &= G H^2 \\\\
    \\text{Traditional} &= G\\,(\\mathit{in}\\,H' + H'^2)

PreRNN (Eqs. 7–9) gives every gate its own copy of ``W`` (the first copy *is*
the pretrained layer, so only ``G − 1`` copies are new) plus one ``H × H``
hidden matrix per gate; PreRNN-SIH (Eqs. 10–12) keeps the single ``W`` and adds
only the ``W_h·``; a traditional layer is all new, sits on the network's feature
vector (``in`` = ``feature_size``: fc7's 4096 on VGG16, pool5's 2048 on
ResNet50) and its hidden size ``H'`` is chosen so that its count is as close as
possible to PreRNN's (the paper matches parameter counts between designs, §4).
There is no SIH VRNN: with one gate SIH and PreRNN coincide.

**Weights only vs biases.** The counts above — and therefore Table 3's
SIH ÷ PreRNN ratio and the traditional matching — are *weights only*. The
``*_with_biases`` counts add the lower-order per-channel terms a real model
holds:

* PreRNN: the ``G − 1`` extra copies of the pretrained bias and, for a conv
  layer, of its BatchNorm's affine weight and bias (``(G − 1)·H`` each);
* PreRNN-SIH: nothing (the W_h· products carry no bias; the pretrained bias is
  the single ``bias_ih``);
* Traditional: the new layer's ``bias_ih``, ``G·H'`` per layer. The tool's
  cells (:mod:`prernn_cli.cells`) have no ``bias_hh`` — the paper's equations
  have none — so this is ``G·H'``, not :class:`torch.nn.LSTM`'s ``2·G·H'``.

**Several converted layers** (VGG16/C3D "fc6/7") are summed layer by layer;
Table 3's ratio is SIH ÷ PreRNN of the sums. The traditional counterpart is,
by default, *one* traditional layer on the feature vector whose ``H'`` is
matched to the summed PreRNN count — exactly what ``prernn convert
--traditional`` builds (:func:`prernn_cli.conversion.convert`), so the sizes agree.
The paper matches both its 1-layer and its 2-layer TraRNNs to PreRNN's counts
(Tables 2, 4, §4); ``traditional_layers=N`` sizes a stack of ``N`` layers of one
hidden size ``H'`` (the first reads the feature vector, the others ``H'``),
matched as a whole — a sizing estimate only, ``convert`` builds one layer.

**Totals.** ``total_params`` is the parameter count of the model ``prernn
convert`` builds (head kept as it is): the base network's parameters (biases
included) + the recurrent parameters *with* biases. For the traditional design
the base network's output layer (``feature_size → K``) is replaced by a new one
reading ``H'`` features, as ``convert --traditional`` does, so its total also
changes by ``(H' − feature_size)·K``.

The accounting functions are pure (integers in, integers out); finding the
layers' shapes in a network (``prernn params`` on a checkpoint or an architecture)
is :func:`prernn_cli.inspection.account_checkpoint`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from prernn_cli.errors import ConversionError, LayerError
from prernn_cli.spec import CellType, Design, LayerKind

ALL_CELLS: tuple[CellType, ...] = (CellType.VRNN, CellType.LSTM, CellType.GRU)


# ------------------------------------------------------------------ inputs


@dataclass(frozen=True)
class LayerShape:
    """What the accounting needs to know about one converted layer."""

    name: str  # dotted module name
    weight_numel: int  # |W|: in·out for fc, C_out·C_in·k… for conv
    hidden_size: int  # H: out_features / C_out
    input_size: int  # in_features / C_in
    bias: bool = True  # the pretrained layer has a bias
    batchnorm_params: int = 0  # affine parameters of a conv layer's BatchNorm (2·H), copied per gate
    kind: LayerKind = LayerKind.FC
    alias: str | None = None

    def __post_init__(self) -> None:
        for field_name in ("weight_numel", "hidden_size", "input_size"):
            value = getattr(self, field_name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"LayerShape.{field_name} must be a positive int, got {value!r}")
        if self.batchnorm_params < 0:
            raise ValueError(f"LayerShape.batchnorm_params must be >= 0, got {self.batchnorm_params!r}")

    @property
    def label(self) -> str:
        return f"{self.alias} ({self.name})" if self.alias and self.alias != self.name else self.name

    @property
    def per_gate_vector_params(self) -> int:
        """Per-channel parameters that a gate-dependent copy duplicates: bias and BatchNorm affine."""
        return (self.hidden_size if self.bias else 0) + self.batchnorm_params

    @classmethod
    def from_report(cls, layer, network=None) -> LayerShape:
        """Build from a :class:`prernn_cli.surgery.LayerReport` (and its NetworkReport, for the BatchNorm)."""
        if not layer.convertible or layer.weight_numel is None or layer.hidden_size is None or layer.input_size is None:
            reason = f": {layer.reason}" if getattr(layer, "reason", None) else ""
            raise LayerError(
                f"layer {layer.name} cannot be converted into a recurrent layer{reason}; run `prernn inspect` to list the convertible ones"
            )
        bias = layer.params is not None and layer.params > layer.weight_numel
        batchnorm_params = 0
        if getattr(layer, "batchnorm", None):
            batchnorm_params = 2 * layer.hidden_size  # affine weight + bias
            if network is not None:
                found = [other for other in network.layers if other.name == layer.batchnorm]
                if found and found[0].params is not None:
                    batchnorm_params = found[0].params
        return cls(
            name=layer.name,
            weight_numel=int(layer.weight_numel),
            hidden_size=int(layer.hidden_size),
            input_size=int(layer.input_size),
            bias=bias,
            batchnorm_params=int(batchnorm_params),
            kind=layer.kind or LayerKind.FC,
            alias=layer.alias,
        )

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "alias": self.alias,
            "kind": self.kind.value,
            "weight_numel": self.weight_numel,
            "hidden_size": self.hidden_size,
            "input_size": self.input_size,
            "bias": self.bias,
            "batchnorm_params": self.batchnorm_params,
        }


# ------------------------------------------------------------------ the formulas (pure)


def prernn_params(layer: LayerShape, cell: CellType, biases: bool = False) -> int:
    """PreRNN (gate-dependent, Eqs. 7–9): ``(G − 1)·|W| + G·H²``, plus ``(G − 1)`` bias/BN copies with ``biases``."""
    gates = cell.num_gates
    count = (gates - 1) * layer.weight_numel + gates * layer.hidden_size**2
    if biases:
        count += (gates - 1) * layer.per_gate_vector_params
    return count


def sih_params(layer: LayerShape, cell: CellType, biases: bool = False) -> int | None:
    """PreRNN-SIH (Eqs. 10–12): ``G·H²``; ``None`` for VRNN, which has no SIH form."""
    del biases  # SIH adds no bias: the single pretrained bias is the layer's own
    if cell is CellType.VRNN:
        return None
    return cell.num_gates * layer.hidden_size**2


def traditional_params(
    input_size: int, hidden_size: int, cell: CellType, num_layers: int = 1, biases: bool = False
) -> int:
    """A stack of ``num_layers`` new recurrent layers of size ``H'`` on a feature vector of ``input_size``.

    One layer: ``G·(in·H' + H'²)``; each further layer reads ``H'``: ``G·(H'·H' + H'²)``.
    With ``biases``, each layer's ``bias_ih`` (``G·H'``; the cells have no ``bias_hh``).
    """
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    if input_size < 1 or hidden_size < 0:
        raise ValueError(f"bad sizes: input_size={input_size}, hidden_size={hidden_size}")
    gates = cell.num_gates
    count = gates * (input_size * hidden_size + hidden_size**2)
    count += (num_layers - 1) * gates * (2 * hidden_size**2)
    if biases:
        count += num_layers * gates * hidden_size
    return count


def match_traditional_hidden_size(target: int, input_size: int, cell: CellType, num_layers: int = 1) -> int:
    """The hidden size ``H' ≥ 1`` whose weights-only traditional count is closest to ``target``.

    Solves ``G·(in·H' + (2N − 1)·H'²) = target`` for ``H'`` and checks the integer
    neighbours of the root; a tie goes to the smaller ``H'``.
    """
    if target < 0:
        raise ValueError(f"target must be >= 0, got {target}")
    gates = cell.num_gates
    a, b = 2 * num_layers - 1, input_size
    root = (-b + math.sqrt(b * b + 4 * a * target / gates)) / (2 * a)
    base = max(1, math.floor(root))
    candidates = {max(1, base + delta) for delta in (-1, 0, 1, 2)}
    return min(
        sorted(candidates),
        key=lambda h: abs(traditional_params(input_size, h, cell, num_layers) - target),
    )


def table3_ratio(layers: Sequence[LayerShape], cell: CellType) -> float | None:
    """Table 3: PreRNN-SIH ÷ PreRNN recurrent parameters (weights only), summed over ``layers``."""
    if cell is CellType.VRNN:
        return None
    pre = sum(prernn_params(layer, cell) for layer in layers)
    sih = sum(sih_params(layer, cell) for layer in layers)
    return sih / pre


# ------------------------------------------------------------------ results


@dataclass(frozen=True)
class DesignCount:
    """One cell × design. ``available`` is False (and the counts None) for SIH with VRNN."""

    cell: CellType
    design: Design
    available: bool
    recurrent_params: int | None  # weights only: the Table 3 definition
    recurrent_params_with_biases: int | None  # plus bias / BatchNorm copies (PreRNN), bias_ih (traditional)
    total_params: (
        int | None
    )  # the converted model: base network + recurrent_params_with_biases (+ head change, traditional)
    hidden_sizes: tuple[int, ...] | None  # one per recurrent layer
    num_layers: int | None  # recurrent layers in this design

    def to_dict(self) -> dict:
        return {
            "cell": self.cell.value,
            "design": self.design.value,
            "available": self.available,
            "recurrent_params": self.recurrent_params,
            "recurrent_params_with_biases": self.recurrent_params_with_biases,
            "total_params": self.total_params,
            "hidden_sizes": list(self.hidden_sizes) if self.hidden_sizes is not None else None,
            "num_layers": self.num_layers,
        }


@dataclass(frozen=True)
class CellAccounting:
    """The three designs for one cell, and Table 3's ratio."""

    cell: CellType
    traditional: DesignCount
    prernn: DesignCount
    sih: DesignCount
    sih_over_prernn: float | None  # Table 3 (weights only); None for VRNN
    sih_over_traditional: float | None  # the same against the matched traditional count
    traditional_hidden_size: int  # H' matched to PreRNN's weights-only count

    def design(self, design: Design) -> DesignCount:
        return {Design.TRADITIONAL: self.traditional, Design.PRERNN: self.prernn, Design.SIH: self.sih}[design]

    @property
    def designs(self) -> tuple[DesignCount, DesignCount, DesignCount]:
        return (self.traditional, self.prernn, self.sih)

    def to_dict(self) -> dict:
        return {
            "cell": self.cell.value,
            "gates": self.cell.num_gates,
            "sih_over_prernn": self.sih_over_prernn,
            "sih_over_traditional": self.sih_over_traditional,
            "traditional_hidden_size": self.traditional_hidden_size,
            "designs": {count.design.value: count.to_dict() for count in self.designs},
        }


COUNTING_NOTE = (
    "recurrent_params: weights only (Table 3's definition; the SIH/PreRNN ratio and the traditional "
    "matching use it). recurrent_params_with_biases adds PreRNN's (G-1) copies of the pretrained bias "
    "(and of a conv layer's BatchNorm weight and bias), and a traditional layer's bias_ih (G*H'; no bias_hh); "
    "SIH adds none. total_params = base network parameters + recurrent_params_with_biases, i.e. the model "
    "`prernn convert` builds with the original head; for traditional, the output layer is replaced by one "
    "reading H' features (+ (H' - feature_size) * K)."
)

HUMAN_COUNTING_NOTE = (
    "recurrent (weights): weights only, Table 3's definition, used for SIH ÷ PreRNN and for matching H'. "
    "(+biases): PreRNN's G-1 copies of the pretrained bias and conv BatchNorm, a traditional layer's bias_ih. "
    "total model: what `prernn convert` builds with the original head (traditional: output layer re-made to read H')."
)


@dataclass(frozen=True)
class ParamsReport:
    """Everything ``prernn params`` shows: every cell × design for the chosen layers."""

    architecture: str | None
    layers: tuple[LayerShape, ...]
    feature_size: int  # the vector a traditional layer reads
    base_params: int  # the base network's total parameter count
    traditional_layers: int  # layers in the traditional stack
    cells: tuple[CellAccounting, ...]
    output_size: int | None = None  # K: outputs of the base network's output layer (re-made to read H' for traditional)

    def cell(self, cell: CellType | str) -> CellAccounting:
        cell = CellType(cell)
        for accounting in self.cells:
            if accounting.cell is cell:
                return accounting
        raise KeyError(cell.value)

    @property
    def traditional_note(self) -> str:
        layers = "one layer" if self.traditional_layers == 1 else f"a stack of {self.traditional_layers} layers"
        note = (
            f"traditional: {layers} of hidden size H' on the {self.feature_size}-d feature vector, "
            "H' chosen so its weights-only count is closest to PreRNN's (summed over the converted layers)"
        )
        if self.traditional_layers > 1:
            note += "; a sizing estimate: `prernn convert --traditional` builds one layer"
        return note

    def to_dict(self) -> dict:
        return {
            "architecture": self.architecture,
            "layers": [layer.to_dict() for layer in self.layers],
            "feature_size": self.feature_size,
            "base_params": self.base_params,
            "output_size": self.output_size,
            "traditional_layers": self.traditional_layers,
            "counting": COUNTING_NOTE,
            "traditional": self.traditional_note,
            "cells": {accounting.cell.value: accounting.to_dict() for accounting in self.cells},
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def _checked_traditional_layers(
    layers: Sequence[LayerShape], feature_size: int, base_params: int, traditional_layers: int | None
) -> int:
    """Check :func:`count_parameters`' inputs; the depth of the traditional stack."""
    if not layers:
        raise ConversionError("no layer to account for; name at least one with --layer")
    if feature_size is None or feature_size < 1:
        raise ConversionError(
            "the network's feature size (the vector fed to its output layer) is unknown, so the traditional design cannot be sized; "
            "check the model with `prernn inspect`"
        )
    if base_params < 0:
        raise ValueError(f"base_params must be >= 0, got {base_params}")
    num_layers = 1 if traditional_layers is None else traditional_layers
    if num_layers < 1:
        raise ConversionError(f"--traditional-layers must be at least 1, got {num_layers}")
    return num_layers


def _prernn_count(layers: Sequence[LayerShape], cell: CellType, base_params: int) -> DesignCount:
    weights = sum(prernn_params(layer, cell) for layer in layers)
    with_biases = sum(prernn_params(layer, cell, biases=True) for layer in layers)
    hidden = tuple(layer.hidden_size for layer in layers)
    return DesignCount(cell, Design.PRERNN, True, weights, with_biases, base_params + with_biases, hidden, len(layers))


def _sih_count(layers: Sequence[LayerShape], cell: CellType, base_params: int) -> DesignCount:
    if cell is CellType.VRNN:
        return DesignCount(cell, Design.SIH, False, None, None, None, None, None)
    weights = sum(sih_params(layer, cell) for layer in layers)
    hidden = tuple(layer.hidden_size for layer in layers)
    return DesignCount(cell, Design.SIH, True, weights, weights, base_params + weights, hidden, len(layers))


def _traditional_count(
    target: int,
    cell: CellType,
    feature_size: int,
    base_params: int,
    num_layers: int,
    output_size: int | None,
    output_layer_params: int | None,
) -> DesignCount:
    """The traditional stack whose ``H'`` brings its weights-only count closest to ``target`` (PreRNN's)."""
    hidden = match_traditional_hidden_size(target, feature_size, cell, num_layers)
    weights = traditional_params(feature_size, hidden, cell, num_layers)
    with_biases = traditional_params(feature_size, hidden, cell, num_layers, biases=True)
    total = base_params + with_biases
    if output_size is not None and output_layer_params is not None:
        total += (hidden + 1) * output_size - output_layer_params  # Linear(H', K) replaces the output layer
    return DesignCount(cell, Design.TRADITIONAL, True, weights, with_biases, total, (hidden,) * num_layers, num_layers)


def count_parameters(
    layers: Sequence[LayerShape],
    feature_size: int,
    base_params: int,
    cells: Iterable[CellType] = ALL_CELLS,
    traditional_layers: int = 1,
    architecture: str | None = None,
    output_size: int | None = None,
    output_layer_params: int | None = None,
) -> ParamsReport:
    """Account every cell × design (SPEC §4) for converting ``layers`` together.

    ``feature_size`` is what a traditional layer reads, ``base_params`` the base
    network's parameter count, ``traditional_layers`` the traditional stack's depth
    (default one layer, as ``convert --traditional`` builds). ``output_size`` (K) and
    ``output_layer_params``, when given, describe the base network's output layer,
    which the traditional design replaces by ``Linear(H', K)``; without them the
    traditional total keeps the base network's head.
    """
    layers = tuple(layers)
    num_trad = _checked_traditional_layers(layers, feature_size, base_params, traditional_layers)
    accountings = []
    for cell in dict.fromkeys(CellType(c) for c in cells):
        prernn = _prernn_count(layers, cell, base_params)
        sih = _sih_count(layers, cell, base_params)
        traditional = _traditional_count(
            prernn.recurrent_params, cell, feature_size, base_params, num_trad, output_size, output_layer_params
        )
        tra = traditional.recurrent_params
        accountings.append(
            CellAccounting(
                cell=cell,
                traditional=traditional,
                prernn=prernn,
                sih=sih,
                sih_over_prernn=sih.recurrent_params / prernn.recurrent_params if sih.available else None,
                sih_over_traditional=(sih.recurrent_params / tra) if sih.available and tra else None,
                traditional_hidden_size=traditional.hidden_sizes[0],
            )
        )
    return ParamsReport(
        architecture=architecture,
        layers=layers,
        feature_size=int(feature_size),
        base_params=int(base_params),
        traditional_layers=num_trad,
        cells=tuple(accountings),
        output_size=output_size,
    )
