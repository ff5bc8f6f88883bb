"""What the gate counts say: per-gate summaries, per-layer verdicts and a model's one-line reading.

The paper reads the mechanism off the saturation numbers: PreLSTM's
first-layer gates sit in the saturated regime (units near the diagonal
``x + y = 1`` of the saturation plot; right-saturated forget gates are memory
cells that hold their value for long), TraLSTM's are spread in the unsaturated
middle (temporal information decays quickly), and a second stacked recurrent
layer has gates that rarely saturate (its state is barely used), so converting
one layer only is enough.

Reading rules (:func:`layer_readings`, joined by :func:`reading`), applied per layer to its *saturated share*
``s`` = the fraction of all (unit, time step) activations of the layer's gates
that are left- or right-saturated (the LSTM candidate ``g`` is not a gate and is
ignored):

* ``s >= 0.5`` (:data:`MOSTLY_SATURATED`): "gates mostly saturated: long memory";
* ``s <= 0.2`` (:data:`RARELY_SATURATED`): "gates rarely saturate: its state is
  barely used", followed by "consider converting one layer only" for a layer
  stacked on another recurrent layer, and by "temporal information decays
  quickly" for the first one;
* otherwise "gates partly saturated";
* for an LSTM layer with forget-gate units that are right-saturated more than
  half of the time (:data:`LONG_MEMORY_FRACTION`), their number is added: the
  paper's "memory cells that remember their values for long durations".

The reading starts with the model's task metric on the same clips
(:mod:`prernn_cli.analyze.performance`). A model no better than chance there gets
no verdict at all: its reading says "no better than chance on these N clips
(accuracy a): the gate reading says nothing about its memory", and its layers are
described by their saturated share only.

A model that was never trained (its spec has no ``task``: fresh from
``convert``, new ``W_h·`` still random) gets its reading prefixed with
"untrained model (new weights still random):", since the paper's reading is
about trained models.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path

import numpy as np

from prernn_cli.analyze.accumulator import (
    GATE_NAMES,
    LEFT_SATURATION,
    LONG_MEMORY_FRACTION,
    MOSTLY_SATURATED,
    RARELY_SATURATED,
    RIGHT_SATURATION,
    GateAccumulator,
)
from prernn_cli.analyze.performance import Performance
from prernn_cli.errors import PrernnError
from prernn_cli.spec import CellType, Design, ModelSpec


@dataclass(frozen=True)
class GateSummary:
    """Saturation of one gate of one layer, over all units and time steps."""

    layer: int  # 1-based, model order
    gate: str  # i, f, o (LSTM) or r, z (GRU)
    units: int
    observations: int  # activations per unit (clips' batch × steps)
    left_pct: float  # % of all activations < 0.1
    right_pct: float  # % of all activations > 0.9
    unsaturated_pct: float
    histogram: tuple[int, ...]  # activations per bin [0, 0.1), ..., [0.9, 1.0]

    def to_dict(self) -> dict:
        return {
            "layer": self.layer,
            "gate": self.gate,
            "gate_name": GATE_NAMES[self.gate],
            "units": self.units,
            "observations_per_unit": self.observations,
            "left_saturated_pct": round(self.left_pct, 3),
            "right_saturated_pct": round(self.right_pct, 3),
            "unsaturated_pct": round(self.unsaturated_pct, 3),
            "histogram": list(self.histogram),
        }


class Verdict(str, Enum):
    """How much a layer's gates saturate (thresholds :data:`MOSTLY_SATURATED`, :data:`RARELY_SATURATED`)."""

    MOSTLY = "mostly"  # long memory
    PARTLY = "partly"
    RARELY = "rarely"  # the state is barely used


@dataclass(frozen=True)
class LayerReading:
    """The verdict on one layer, from its saturated share."""

    layer: int
    saturated_share: float  # fraction of the layer's gate activations that are saturated
    verdict: Verdict
    text: str
    long_memory_units: int | None = None  # LSTM: forget-gate units open > LONG_MEMORY_FRACTION of the time


@dataclass
class ModelAnalysis:
    """What ``analyze`` learnt about one model."""

    label: str  # e.g. "PreLSTM", "TraGRU"
    path: str | None
    spec: ModelSpec
    clips: int
    steps: int  # time steps seen per layer, summed over clips (clip-steps)
    gates: tuple[GateSummary, ...]
    layers: tuple[LayerReading, ...]
    reading: str
    # per (layer index, gate): fraction of time each unit is left / right saturated
    unit_left: dict[tuple[int, str], np.ndarray] = field(repr=False, default_factory=dict)
    unit_right: dict[tuple[int, str], np.ndarray] = field(repr=False, default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # clips left out: (path, reason)
    performance: Performance | None = None  # the task metric on the same clips

    @property
    def cell(self) -> CellType:
        return self.spec.cell

    @property
    def memory_reading_holds(self) -> bool:
        """False when the model is no better than chance on the clips: its gates then say nothing about memory."""
        return self.performance is None or self.performance.better_than_chance is not False

    def to_dict(self) -> dict:
        return {
            "label": self.label,
            "model": self.path,
            "cell": self.spec.cell.value,
            "design": self.spec.design.value,
            "layers": [layer.name for layer in self.spec.layers],
            "clips": self.clips,
            "steps": self.steps,
            "thresholds": {"left": LEFT_SATURATION, "right": RIGHT_SATURATION},
            "gates": [gate.to_dict() for gate in self.gates],
            "layer_readings": [
                {
                    "layer": r.layer,
                    "saturated_pct": round(100 * r.saturated_share, 3),
                    "verdict": r.verdict.value,
                    "long_memory_units": r.long_memory_units,
                    "text": r.text,
                }
                for r in self.layers
            ],
            "reading": self.reading,
            "performance": self.performance.to_dict() if self.performance else None,
            "memory_reading_holds": self.memory_reading_holds,
            "skipped_clips": [{"path": p, "reason": r} for p, r in self.skipped],
        }


@dataclass(frozen=True)
class AnalysisReport:
    """The result of :func:`analyze`: the analysed models and the files written."""

    models: tuple[ModelAnalysis, ...]
    figure: Path | None
    summary: Path | None
    panels: int

    def to_dict(self) -> dict:
        return {
            "models": [m.to_dict() for m in self.models],
            "figure": str(self.figure) if self.figure else None,
            "summary": str(self.summary) if self.summary else None,
            "panels": self.panels,
        }


def model_label(spec: ModelSpec) -> str:
    """The paper's name for a model's design and cell: PreLSTM, TraGRU, PreLSTM-SIH, ..."""
    cell = spec.cell.value.upper()
    if spec.design is Design.TRADITIONAL:
        return f"Tra{cell}"
    if spec.design is Design.SIH:
        return f"Pre{cell}-SIH"
    return f"Pre{cell}"


def layer_readings(
    gates: Sequence[GateSummary], long_memory_units: Mapping[int, int] | None = None
) -> tuple[LayerReading, ...]:
    """Apply the documented rules (module docstring) to each layer.

    ``long_memory_units`` maps a 1-based layer to its count of long-memory
    forget-gate units (LSTM only).
    """
    long_memory_units = long_memory_units or {}
    readings = []
    for layer in sorted({g.layer for g in gates}):
        own = [g for g in gates if g.layer == layer]
        total = sum(g.units * g.observations for g in own)
        saturated = sum(g.units * g.observations * (g.left_pct + g.right_pct) / 100 for g in own)
        share = saturated / total if total else 0.0
        pct = f"{100 * share:.0f}% saturated"
        if share >= MOSTLY_SATURATED:
            verdict, text = Verdict.MOSTLY, f"layer {layer} gates are mostly saturated ({pct}): long memory"
        elif share <= RARELY_SATURATED:
            verdict = Verdict.RARELY
            text = f"layer {layer} gates rarely saturate ({pct}): its state is barely used"
            if layer > 1:
                text += " — consider converting one layer only"
            else:
                text += ", temporal information decays quickly"
        else:
            verdict, text = Verdict.PARTLY, f"layer {layer} gates are partly saturated ({pct})"
        cells = long_memory_units.get(layer)
        if cells:
            units = own[0].units
            text += f", {cells} of {units} forget-gate units open most of the time (long-lived memory cells)"
        readings.append(
            LayerReading(layer=layer, saturated_share=share, verdict=verdict, text=text, long_memory_units=cells)
        )
    return tuple(readings)


UNTRAINED_PREFIX = "untrained model (new weights still random): "
#: what the reading of a model no better than chance says instead of a verdict
NO_VERDICT = "the gate reading says nothing about its memory"


def neutral(layers: Sequence[LayerReading]) -> tuple[LayerReading, ...]:
    """The layers described by their saturated share only, without a verdict on memory."""
    return tuple(replace(r, text=f"layer {r.layer} gates {100 * r.saturated_share:.0f}% saturated") for r in layers)


def reading(
    analysis_layers: Sequence[LayerReading], trained: bool = True, performance: Performance | None = None
) -> str:
    """The one-line reading of a model: its task metric, then its layers' verdicts (none when it is at chance)."""
    text = "; ".join(r.text for r in analysis_layers)
    if performance is not None:
        if performance.better_than_chance is False:
            text = f"{performance.sentence()}: {NO_VERDICT}"
        else:
            text = f"{performance.sentence()}; {text}"
    return text if trained else UNTRAINED_PREFIX + text


def _long_memory_units(accumulator: GateAccumulator, unit_right: dict) -> dict[int, int]:
    """LSTM: per 1-based layer, the forget-gate units right-saturated more than LONG_MEMORY_FRACTION of the time."""
    if accumulator.cell is not CellType.LSTM:
        return {}
    return {
        index + 1: int((unit_right[(index, "f")] > LONG_MEMORY_FRACTION).sum())
        for index in range(len(accumulator.hidden_sizes))
    }


def summarize(
    accumulator: GateAccumulator,
    spec: ModelSpec,
    label: str | None = None,
    path: str | None = None,
    clips: int = 0,
    performance: Performance | None = None,
) -> ModelAnalysis:
    """Turn an accumulator's counts into a :class:`ModelAnalysis` (``performance``: the task metric on the same clips)."""
    gates: list[GateSummary] = []
    unit_left: dict[tuple[int, str], np.ndarray] = {}
    unit_right: dict[tuple[int, str], np.ndarray] = {}
    lefts, rights, histograms = accumulator.left, accumulator.right, accumulator.histogram
    for index, hidden in enumerate(accumulator.hidden_sizes):
        observations = accumulator.observations[index]
        if observations == 0:
            raise PrernnError(
                f"recurrent layer {index + 1} reported no gate activations; the model does not call gate_observer"
            )
        for gate in accumulator.gates:
            left = lefts[index][gate].numpy()
            right = rights[index][gate].numpy()
            cells = hidden * observations
            left_pct = 100.0 * float(left.sum()) / cells
            right_pct = 100.0 * float(right.sum()) / cells
            gates.append(
                GateSummary(
                    layer=index + 1,
                    gate=gate,
                    units=hidden,
                    observations=observations,
                    left_pct=left_pct,
                    right_pct=right_pct,
                    unsaturated_pct=100.0 * float(cells - left.sum() - right.sum()) / cells,
                    histogram=tuple(int(v) for v in histograms[index][gate].tolist()),
                )
            )
            unit_left[(index, gate)] = left / observations
            unit_right[(index, gate)] = right / observations
    layers = layer_readings(gates, _long_memory_units(accumulator, unit_right))
    if performance is not None and performance.better_than_chance is False:
        layers = neutral(layers)
    return ModelAnalysis(
        label=label or model_label(spec),
        path=path,
        spec=spec,
        clips=clips,
        steps=accumulator.observations[0],
        gates=tuple(gates),
        layers=layers,
        reading=reading(layers, trained=spec.task is not None, performance=performance),
        unit_left=unit_left,
        unit_right=unit_right,
        performance=performance,
    )
