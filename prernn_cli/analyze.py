"""Look inside the gates: the paper's saturation analysis (Sec. 4.1, Figure 2).

A gate unit is *left-saturated* at a time step when its post-sigmoid
activation is below 0.1, *right-saturated* when it is above 0.9, and
*unsaturated* otherwise. The paper reads the mechanism off these numbers:
PreLSTM's first-layer gates sit in the saturated regime (units near the
diagonal ``x + y = 1`` of the saturation plot; right-saturated forget gates are
memory cells that hold their value for long), TraLSTM's are spread in the
unsaturated middle (temporal information decays quickly), and a second stacked
recurrent layer has gates that rarely saturate (its state is barely used), so
converting one layer only is enough.

This module streams clips through a converted model and keeps, per recurrent
layer, gate and unit, the counts of left- and right-saturated activations and
the number of observations, plus a 10-bin histogram per gate
(:class:`GateAccumulator`). Memory is bounded by those accumulators, not by the
number of clips. From them it builds a summary (:class:`ModelAnalysis`), a
one-line reading (:func:`reading`), and the figure (:func:`gate_figure`):
saturation scatter plots for LSTM (per gate i, f, o), activation histograms for
GRU (per gate r, z), one row per layer, several models side by side.

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

A model that was never trained (its spec has no ``task``: fresh from
``convert``, new ``W_h·`` still random) gets its reading prefixed with
"untrained model (new weights still random):", since the paper's reading is
about trained models.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from prernn_cli.checkpoint import load_converted
from prernn_cli.data import ClipDataset, ClipReadError, Sampling, collate, discover, preprocess, read_frames
from prernn_cli.errors import DataError, PrernnError, UserInputError
from prernn_cli.files import atomic_path
from prernn_cli.spec import CellType, Design, FrameKind, InputSpec, ModelSpec

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from prernn_cli.model import RecurrentModel

logger = logging.getLogger(__name__)

LEFT_SATURATION = 0.1
"""An activation below this is left-saturated (the gate is closed)."""
RIGHT_SATURATION = 0.9
"""An activation above this is right-saturated (the gate is open)."""
HISTOGRAM_BINS = 10
"""Equal-width bins over [0, 1]: [0, 0.1), [0.1, 0.2), ..., [0.9, 1.0]."""
MOSTLY_SATURATED = 0.5
"""A layer whose saturated share reaches this has 'mostly saturated' gates."""
RARELY_SATURATED = 0.2
"""A layer whose saturated share is at most this has gates that 'rarely saturate'."""
LONG_MEMORY_FRACTION = 0.5
"""An LSTM forget-gate unit right-saturated more than this fraction of the time is a long-memory cell."""

GATES: dict[CellType, tuple[str, ...]] = {
    CellType.LSTM: ("i", "f", "o"),
    CellType.GRU: ("r", "z"),
}
"""The gates analysed per cell, in the order the figure shows them."""

GATE_NAMES = {"i": "input gate", "f": "forget gate", "o": "output gate", "r": "reset gate", "z": "update gate"}

FIGURE_NAME = "gates.png"
SUMMARY_NAME = "summary.json"

_BIN_EDGES = torch.tensor([k / HISTOGRAM_BINS for k in range(1, HISTOGRAM_BINS)])  # inner edges 0.1 ... 0.9 (float32)


# ---------------------------------------------------------------- accumulation
class GateAccumulator:
    """Fixed-size saturation counts for every recurrent layer, gate and unit.

    Use an instance as the ``gate_observer`` of
    :meth:`prernn_cli.model.RecurrentModel.forward`: each call adds one time
    step of activations ``{gate: Tensor[B, H]}`` of layer ``layer_index``.
    Gates not in :data:`GATES` for the cell (the LSTM candidate ``g``) are
    ignored. The counts live on the device of the first activations seen, so a
    GPU run does not copy every step to the host.

    Counts per (layer, gate), as ``left[layer][gate]`` etc.: ``left[u]`` /
    ``right[u]`` — how many activations of unit ``u`` were < 0.1 / > 0.9;
    ``observations[layer]`` — how many activations each unit had (batch ×
    steps); ``histogram[k]`` — activations of all units in bin ``k`` of
    :data:`HISTOGRAM_BINS`.
    """

    def __init__(self, cell: CellType, hidden_sizes: Sequence[int]) -> None:
        if cell not in GATES:
            raise UserInputError(f"{cell.value.upper()} has no gates; analyze needs an LSTM or GRU model")
        self.cell = cell
        self.gates = GATES[cell]
        self.hidden_sizes = tuple(int(size) for size in hidden_sizes)
        count = len(self.gates)
        # one [G, H] (or [G, bins]) tensor per layer, rows in the order of self.gates
        self._left = [torch.zeros(count, h, dtype=torch.int64) for h in self.hidden_sizes]
        self._right = [torch.zeros(count, h, dtype=torch.int64) for h in self.hidden_sizes]
        self._histogram = [torch.zeros(count, HISTOGRAM_BINS, dtype=torch.int64) for _ in self.hidden_sizes]
        self._edges = _BIN_EDGES.clone()
        self._offsets = torch.arange(count).view(count, 1) * HISTOGRAM_BINS
        self.observations = [0] * len(self.hidden_sizes)

    def _rows(self, tensors: list[Tensor]) -> list[dict[str, Tensor]]:
        return [{gate: t[k].cpu() for k, gate in enumerate(self.gates)} for t in tensors]

    @property
    def left(self) -> list[dict[str, Tensor]]:
        return self._rows(self._left)

    @property
    def right(self) -> list[dict[str, Tensor]]:
        return self._rows(self._right)

    @property
    def histogram(self) -> list[dict[str, Tensor]]:
        return self._rows(self._histogram)

    def _to(self, device: torch.device) -> None:
        if self._edges.device != device:
            move = lambda tensors: [t.to(device) for t in tensors]  # noqa: E731
            self._left, self._right, self._histogram = move(self._left), move(self._right), move(self._histogram)
            self._edges, self._offsets = self._edges.to(device), self._offsets.to(device)

    @torch.no_grad()
    def __call__(self, layer_index: int, gates: Mapping[str, Tensor]) -> None:
        if not 0 <= layer_index < len(self.hidden_sizes):
            raise ValueError(f"layer_index {layer_index} out of range for {len(self.hidden_sizes)} recurrent layers")
        missing = [gate for gate in self.gates if gate not in gates]
        if missing:
            raise ValueError(f"gates {missing} missing from the observed gates {sorted(gates)} of layer {layer_index}")
        shapes = {tuple(gates[gate].shape) for gate in self.gates}
        hidden = self.hidden_sizes[layer_index]
        if len(shapes) != 1 or len(next(iter(shapes))) != 2 or next(iter(shapes))[1] != hidden:
            raise ValueError(f"gates of layer {layer_index} have shapes {sorted(shapes)}; expected one shape [batch, {hidden}]")
        values = torch.stack([gates[gate].detach() for gate in self.gates]).float()  # [G, B, H]
        self._to(values.device)
        if torch.isnan(values).any():
            raise PrernnError(f"the gates of layer {layer_index + 1} produced NaN; the model's weights are broken")
        self._left[layer_index] += (values < LEFT_SATURATION).sum(dim=1)
        self._right[layer_index] += (values > RIGHT_SATURATION).sum(dim=1)
        bins = torch.bucketize(values.flatten(1), self._edges, right=True) + self._offsets  # [G, B*H]
        counts = torch.bincount(bins.flatten(), minlength=len(self.gates) * HISTOGRAM_BINS)
        self._histogram[layer_index] += counts.view(len(self.gates), HISTOGRAM_BINS)
        self.observations[layer_index] += values.shape[1]


# ---------------------------------------------------------------- summaries
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

    @property
    def cell(self) -> CellType:
        return self.spec.cell

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


def layer_readings(gates: Sequence[GateSummary], long_memory_units: Mapping[int, int] | None = None) -> tuple[LayerReading, ...]:
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


def reading(analysis_layers: Sequence[LayerReading], trained: bool = True) -> str:
    """The one-line reading of a model: its layers' verdicts joined, flagged when the model is untrained."""
    text = "; ".join(r.text for r in analysis_layers)
    return text if trained else UNTRAINED_PREFIX + text


def summarize(
    accumulator: GateAccumulator,
    spec: ModelSpec,
    label: str | None = None,
    path: str | None = None,
    clips: int = 0,
) -> ModelAnalysis:
    """Turn an accumulator's counts into a :class:`ModelAnalysis`."""
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
    long_memory = {}
    if accumulator.cell is CellType.LSTM:
        long_memory = {
            index + 1: int((unit_right[(index, "f")] > LONG_MEMORY_FRACTION).sum())
            for index in range(len(accumulator.hidden_sizes))
        }
    layers = layer_readings(gates, long_memory)
    return ModelAnalysis(
        label=label or model_label(spec),
        path=path,
        spec=spec,
        clips=clips,
        steps=accumulator.observations[0],
        gates=tuple(gates),
        layers=layers,
        reading=reading(layers, trained=spec.task is not None),
        unit_left=unit_left,
        unit_right=unit_right,
    )


def check_gated(spec: ModelSpec) -> None:
    """Refuse a model whose recurrent layers have no gates (VRNN)."""
    if spec.cell not in GATES:
        raise UserInputError(
            f"{spec.cell.value.upper()} has no gates: analyze needs an LSTM or GRU model "
            "(convert with --cell lstm or --cell gru)"
        )


@torch.no_grad()
def analyze_model(
    model: "RecurrentModel",
    batches: Iterable[Tensor | Segment],
    label: str | None = None,
    path: str | None = None,
    device: torch.device | str | None = None,
) -> ModelAnalysis:
    """Run ``model`` on ``batches`` of frames ``[B, T, ...]`` and summarize its gates.

    A plain tensor, or a :class:`Segment` with ``first=True``, starts new clips
    from a zero state; a segment with ``first=False`` continues the previous
    one's clips from their last state. Only the accumulators grow with the
    model's size; nothing grows with the number of clips.
    """
    spec: ModelSpec = model.spec
    check_gated(spec)
    accumulator = GateAccumulator(spec.cell, [layer.hidden_size for layer in spec.layers])
    was_training = model.training
    model.eval()
    device = torch.device(device) if device is not None else next(model.parameters()).device
    clips = 0
    try:
        state = None
        for batch in batches:
            segment = batch if isinstance(batch, Segment) else Segment(batch)
            frames = segment.frames.to(device)
            if segment.first:
                state = None
                clips += frames.shape[0]
            elif state is None:
                raise ValueError("a continuing segment came before any first segment")
            _, state = model(frames, state=state, gate_observer=accumulator)
    finally:
        model.train(was_training)
    if clips == 0:
        raise DataError("no clips to analyze; give a folder with at least one clip in --data")
    logger.info("analyzed %d clips with %s", clips, label or model_label(spec))
    return summarize(accumulator, spec, label=label, path=path, clips=clips)


# ---------------------------------------------------------------- figures
@dataclass(frozen=True)
class FigureLayout:
    """Where each panel of the gate figure goes: one row per layer, one column per (model, gate)."""

    rows: int
    columns: tuple[tuple[int, str], ...]  # (model index, gate)
    panels: int  # panels that hold data


def figure_layout(analyses: Sequence[ModelAnalysis]) -> FigureLayout:
    rows = max(len(a.spec.layers) for a in analyses)
    columns = tuple((m, gate) for m, a in enumerate(analyses) for gate in GATES[a.cell])
    panels = sum(len(a.spec.layers) * len(GATES[a.cell]) for a in analyses)
    return FigureLayout(rows=rows, columns=columns, panels=panels)


def gate_figure(analyses: Sequence[ModelAnalysis]) -> "Figure":
    """The paper's Figure 2 for one or more models, side by side.

    LSTM: saturation plot per gate (x = fraction of time each unit is
    left-saturated, y = right-saturated, the diagonal x + y = 1 where units are
    always saturated). GRU: 10-bin activation histogram per gate (share of all
    activations). One row per recurrent layer.
    """
    from matplotlib.figure import Figure

    layout = figure_layout(analyses)
    ncols = len(layout.columns)
    figure = Figure(figsize=(2.6 * ncols, 2.5 * layout.rows + 0.4), dpi=100, layout="constrained")
    axes = figure.subplots(layout.rows, ncols, squeeze=False)
    colors = ("tab:blue", "tab:red", "tab:green", "tab:purple")
    for column, (m, gate) in enumerate(layout.columns):
        analysis = analyses[m]
        color = colors[m % len(colors)]
        for row in range(layout.rows):
            ax = axes[row][column]
            if row >= len(analysis.spec.layers):
                ax.set_axis_off()
                continue
            title = f"{analysis.label} L{row + 1}: {GATE_NAMES[gate]}"
            if analysis.cell is CellType.LSTM:
                ax.plot([0, 1], [1, 0], color="0.6", linestyle="--", linewidth=0.8)
                ax.scatter(analysis.unit_left[(row, gate)], analysis.unit_right[(row, gate)], s=8, alpha=0.5, color=color, linewidths=0)
                ax.set_xlim(-0.03, 1.03)  # a margin so units at 0 or 1 (e.g. all at the origin) stay visible
                ax.set_ylim(-0.03, 1.03)
                ax.set_aspect("equal")
                xlabel, ylabel = "fraction left-saturated", "fraction right-saturated"
            else:
                summary = next(g for g in analysis.gates if g.layer == row + 1 and g.gate == gate)
                counts = np.asarray(summary.histogram, dtype=float)
                shares = counts / counts.sum() if counts.sum() else counts
                edges = np.linspace(0, 1, HISTOGRAM_BINS + 1)
                ax.bar(edges[:-1], shares, width=1 / HISTOGRAM_BINS, align="edge", color=color, edgecolor="white")
                ax.set_xlim(0, 1)
                ax.set_ylim(0, 1)
                xlabel, ylabel = "activation", "share of activations"
            if row == len(analysis.spec.layers) - 1:
                ax.set_xlabel(xlabel, fontsize=8)
            if gate == GATES[analysis.cell][0]:
                ax.set_ylabel(ylabel, fontsize=8)
            ax.set_title(title, fontsize=9)
            ax.tick_params(labelsize=7)
    figure.suptitle(" vs ".join(a.label for a in analyses) + " — gate activations", fontsize=10)
    return figure


def save_figure(figure: "Figure", path: Path, layout: FigureLayout, analyses: Sequence[ModelAnalysis]) -> None:
    """Write the figure as a PNG, atomically, with its layout in the PNG's text metadata."""
    metadata = {
        "Title": figure.get_suptitle(),
        "Software": "prernn analyze",
        "prernn:panels": str(layout.panels),
        "prernn:rows": str(layout.rows),
        "prernn:columns": json.dumps([[analyses[m].label, gate] for m, gate in layout.columns]),
        "prernn:models": json.dumps([a.label for a in analyses]),
    }
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", metadata=metadata)


def write_summary(analyses: Sequence[ModelAnalysis], path: Path) -> None:
    document = {"models": [a.to_dict() for a in analyses]}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


# ---------------------------------------------------------------- clips
WINDOW_STEPS = 64
"""A whole clip runs in windows of at most this many steps, the state carried from one to the next."""


@dataclass(frozen=True)
class Segment:
    """Consecutive steps of a batch of clips; ``first`` is False when it continues the previous segment's clips."""

    frames: Tensor  # [B, T, C, H, W] or [B, T, C, L, H, W]
    first: bool = True


def select_clips(clips: Sequence, max_clips: int | None) -> list:
    """At most ``max_clips`` clips, evenly spread over the (class-sorted) list so every class is seen."""
    clips = list(clips)
    if max_clips is None or max_clips >= len(clips):
        return clips
    if max_clips < 1:
        raise UserInputError(f"--max-clips must be at least 1, got {max_clips}")
    return [clips[(i * len(clips)) // max_clips] for i in range(max_clips)]


def clip_batches(
    data: Path,
    input_spec: InputSpec,
    max_clips: int | None = None,
    steps: int | None = None,
    batch_size: int = 8,
    skipped: list | None = None,
    window: int = WINDOW_STEPS,
) -> Iterator[Segment]:
    """Segments of preprocessed frames of the clips under ``data`` (see :class:`Segment`).

    Uses :func:`prernn_cli.data.discover`: the ``val`` split when the data has one
    (``DIR/{train,val}`` or a manifest with a split column), every clip otherwise.
    ``steps=None`` runs each clip whole (2D: every frame; 3D: consecutive
    snippets of L frames), one clip at a time, in windows of ``window`` steps:
    the clip is held as decoded uint8 frames, only one window as float tensors.
    ``steps=T`` samples T evenly spread steps per clip and batches
    ``batch_size`` clips (:class:`prernn_cli.data.ClipDataset`). Unusable clips
    are appended to ``skipped`` as (path, reason) and left out.
    """
    splits = discover(Path(data), val_fraction=0.0)
    clips = select_clips(splits.val or splits.train, max_clips)
    skipped = skipped if skipped is not None else []
    if steps is not None:
        dataset = ClipDataset(clips, input_spec, splits.task, steps=steps, sampling=Sampling.UNIFORM)
        for start in range(0, len(dataset), batch_size):
            batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
            skipped.extend(batch["skipped"])
            if batch["size"]:
                yield Segment(batch["frames"])
        return
    snippet = input_spec.frames_per_step
    for clip in clips:
        try:
            frames, count = read_frames(clip.path)
        except ClipReadError as error:
            skipped.append((str(clip.path), str(error)))
            continue
        total = count // snippet
        if total < 1:
            skipped.append((str(clip.path), f"too short: {count} frames, one step needs {snippet}"))
            continue
        for begin in range(0, total, window):
            length = min(window, total - begin)
            tensor = preprocess(frames[begin * snippet : (begin + length) * snippet], input_spec)  # [t·L, C, H, W]
            if snippet > 1:
                channels, height, width = tensor.shape[1:]
                tensor = tensor.view(length, snippet, channels, height, width).permute(0, 2, 1, 3, 4)
            yield Segment(tensor.unsqueeze(0).contiguous(), first=begin == 0)


# ---------------------------------------------------------------- the command
def _unique_labels(labels: list[str], paths: list[Path]) -> list[str]:
    if len(set(labels)) == len(labels):
        return labels
    return [f"{label} ({path.stem})" for label, path in zip(labels, paths)]


def default_report_dir(model_path: Path) -> Path:
    return Path(f"{Path(model_path).stem}_analysis")


def prepare_report_dir(report_dir: Path) -> Path:
    report_dir = Path(report_dir)
    if report_dir.exists() and not report_dir.is_dir():
        raise UserInputError(f"report folder {report_dir} is a file; give a folder with -o")
    try:
        report_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserInputError(f"cannot create report folder {report_dir} ({error.strerror}); choose another -o") from None
    return report_dir


def analyze(
    model_path: Path,
    data: Path,
    report_dir: Path | None = None,
    compare: Path | None = None,
    max_clips: int | None = None,
    steps: int | None = None,
    device: str = "cpu",
    write_files: bool = True,
) -> AnalysisReport:
    """``prernn analyze``: gate statistics of one model (or two, side by side) on the clips in ``data``.

    Writes ``gates.png`` (:func:`gate_figure`) and ``summary.json`` into
    ``report_dir`` (default ``<model stem>_analysis``), atomically.
    """
    paths = [Path(model_path)] + ([Path(compare)] if compare is not None else [])
    for path in paths:
        if not path.is_file():
            raise UserInputError(f"model file {path} does not exist; give a model saved by prernn convert or train")
    if max_clips is not None and max_clips < 1:
        raise UserInputError(f"--max-clips must be at least 1, got {max_clips}")
    if steps is not None and steps < 1:
        raise UserInputError(f"--steps must be at least 1, got {steps}")
    try:
        torch_device = torch.device(device)
    except RuntimeError:
        raise UserInputError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if torch_device.type == "cuda" and not torch.cuda.is_available():
        raise UserInputError("--device cuda was given but no CUDA GPU is available; use --device cpu")

    models = []
    for path in paths:
        model = load_converted(path)
        check_gated(model.spec)
        models.append(model)
    if write_files:
        report_dir = prepare_report_dir(report_dir if report_dir is not None else default_report_dir(paths[0]))
    labels = _unique_labels([model_label(m.spec) for m in models], paths)

    analyses = []
    for model, path, label in zip(models, paths, labels):
        skipped: list = []
        batches = clip_batches(data, model.spec.input, max_clips=max_clips, steps=steps, skipped=skipped)
        try:
            analysis = analyze_model(model.to(torch_device), batches, label=label, path=str(path), device=torch_device)
        except DataError:
            if not skipped:
                raise
            first_path, first_reason = skipped[0]
            raise DataError(
                f"all {len(skipped)} clips in {data} were skipped (first: {first_path}: {first_reason}); "
                "give longer or readable clips, or fewer --steps"
            ) from None
        for clip_path, reason in skipped:
            logger.warning("skipped clip %s: %s", clip_path, reason)
        analysis.skipped = [(str(p), r) for p, r in skipped]
        analyses.append(analysis)

    layout = figure_layout(analyses)
    figure_path = summary_path = None
    if write_files:
        figure_path = report_dir / FIGURE_NAME
        summary_path = report_dir / SUMMARY_NAME
        save_figure(gate_figure(analyses), figure_path, layout, analyses)
        write_summary(analyses, summary_path)
    return AnalysisReport(models=tuple(analyses), figure=figure_path, summary=summary_path, panels=layout.panels)
