"""Look inside the gates: the paper's saturation analysis (Sec. 4.2, Figure 2).

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

Reading rules (:func:`reading`), applied per layer to its *saturated share*
``s`` = the fraction of all (unit, time step) activations of the layer's gates
that are left- or right-saturated (the LSTM candidate ``g`` is not a gate and is
ignored):

* ``s >= 0.5`` (:data:`MOSTLY_SATURATED`): "gates mostly saturated: long memory";
* ``s <= 0.2`` (:data:`RARELY_SATURATED`): "gates rarely saturate: its state is
  barely used", followed by "consider converting one layer only" for a layer
  stacked on another recurrent layer, and by "temporal information decays
  quickly" for the first one;
* otherwise "gates partly saturated".
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from prernn_cli.errors import DataError, PrernnError, UserInputError
from prernn_cli.files import atomic_path
from prernn_cli.spec import CellType, Design, ModelSpec

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

GATES: dict[CellType, tuple[str, ...]] = {
    CellType.LSTM: ("i", "f", "o"),
    CellType.GRU: ("r", "z"),
}
"""The gates analysed per cell, in the order the figure shows them."""

GATE_NAMES = {"i": "input gate", "f": "forget gate", "o": "output gate", "r": "reset gate", "z": "update gate"}

FIGURE_NAME = "gates.png"
SUMMARY_NAME = "summary.json"

_BIN_EDGES = torch.linspace(0.0, 1.0, HISTOGRAM_BINS + 1)[1:-1]  # inner edges 0.1 ... 0.9


# ---------------------------------------------------------------- accumulation
class GateAccumulator:
    """Fixed-size saturation counts for every recurrent layer, gate and unit.

    Use an instance as the ``gate_observer`` of
    :meth:`prernn_cli.model.RecurrentModel.forward`: each call adds one time
    step of activations ``{gate: Tensor[B, H]}`` of layer ``layer_index``.
    Gates not in :data:`GATES` for the cell (the LSTM candidate ``g``) are
    ignored.

    Counts per (layer, gate): ``left[u]`` / ``right[u]`` — how many
    activations of unit ``u`` were < 0.1 / > 0.9; ``observations`` — how many
    activations each unit had (batch × steps); ``histogram[k]`` — activations
    of all units in bin ``k`` of :data:`HISTOGRAM_BINS`.
    """

    def __init__(self, cell: CellType, hidden_sizes: Sequence[int]) -> None:
        if cell not in GATES:
            raise UserInputError(f"{cell.value.upper()} has no gates; analyze needs an LSTM or GRU model")
        self.cell = cell
        self.gates = GATES[cell]
        self.hidden_sizes = tuple(int(size) for size in hidden_sizes)
        num_layers = len(self.hidden_sizes)
        self.left = [{g: torch.zeros(h, dtype=torch.int64) for g in self.gates} for h in self.hidden_sizes]
        self.right = [{g: torch.zeros(h, dtype=torch.int64) for g in self.gates} for h in self.hidden_sizes]
        self.histogram = [{g: torch.zeros(HISTOGRAM_BINS, dtype=torch.int64) for g in self.gates} for _ in range(num_layers)]
        self.observations = [0] * num_layers

    def __call__(self, layer_index: int, gates: Mapping[str, Tensor]) -> None:
        if not 0 <= layer_index < len(self.hidden_sizes):
            raise ValueError(f"layer_index {layer_index} out of range for {len(self.hidden_sizes)} recurrent layers")
        batch = None
        for gate in self.gates:
            if gate not in gates:
                raise ValueError(f"gate {gate!r} missing from the observed gates {sorted(gates)} of layer {layer_index}")
            values = gates[gate].detach()
            if values.dim() != 2 or values.shape[1] != self.hidden_sizes[layer_index]:
                raise ValueError(
                    f"gate {gate!r} of layer {layer_index} has shape {tuple(values.shape)}; "
                    f"expected [batch, {self.hidden_sizes[layer_index]}]"
                )
            if torch.isnan(values).any():
                raise PrernnError(f"gate {gate!r} of layer {layer_index + 1} produced NaN; the model's weights are broken")
            if batch is not None and values.shape[0] != batch:
                raise ValueError(f"gates of layer {layer_index} disagree on the batch size")
            batch = values.shape[0]
            values = values.to("cpu", torch.float32)
            self.left[layer_index][gate] += (values < LEFT_SATURATION).sum(dim=0)
            self.right[layer_index][gate] += (values > RIGHT_SATURATION).sum(dim=0)
            bins = torch.bucketize(values.reshape(-1), _BIN_EDGES, right=True)
            self.histogram[layer_index][gate] += torch.bincount(bins, minlength=HISTOGRAM_BINS)
        self.observations[layer_index] += int(batch or 0)


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


@dataclass(frozen=True)
class LayerReading:
    """The verdict on one layer, from its saturated share."""

    layer: int
    saturated_share: float  # fraction of the layer's gate activations that are saturated
    verdict: str  # "mostly", "partly", "rarely"
    text: str


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
                {"layer": r.layer, "saturated_pct": round(100 * r.saturated_share, 3), "verdict": r.verdict, "text": r.text}
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


def layer_readings(cell: CellType, gates: Sequence[GateSummary]) -> tuple[LayerReading, ...]:
    """Apply the documented rules (module docstring) to each layer."""
    readings = []
    for layer in sorted({g.layer for g in gates}):
        own = [g for g in gates if g.layer == layer]
        total = sum(g.units * g.observations for g in own)
        saturated = sum(g.units * g.observations * (g.left_pct + g.right_pct) / 100 for g in own)
        share = saturated / total if total else 0.0
        pct = f"{100 * share:.0f}% saturated"
        if share >= MOSTLY_SATURATED:
            verdict, text = "mostly", f"layer {layer} gates are mostly saturated ({pct}): long memory"
        elif share <= RARELY_SATURATED:
            verdict = "rarely"
            text = f"layer {layer} gates rarely saturate ({pct}): its state is barely used"
            if layer > 1:
                text += " — consider converting one layer only"
            else:
                text += ", temporal information decays quickly"
        else:
            verdict, text = "partly", f"layer {layer} gates are partly saturated ({pct})"
        readings.append(LayerReading(layer=layer, saturated_share=share, verdict=verdict, text=text))
    return tuple(readings)


def reading(analysis_layers: Sequence[LayerReading]) -> str:
    """The one-line reading of a model: its layers' verdicts joined."""
    return "; ".join(r.text for r in analysis_layers)


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
    for index, hidden in enumerate(accumulator.hidden_sizes):
        observations = accumulator.observations[index]
        if observations == 0:
            raise PrernnError(
                f"recurrent layer {index + 1} reported no gate activations; the model does not call gate_observer"
            )
        for gate in accumulator.gates:
            left = accumulator.left[index][gate].numpy()
            right = accumulator.right[index][gate].numpy()
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
                    histogram=tuple(int(v) for v in accumulator.histogram[index][gate].tolist()),
                )
            )
            unit_left[(index, gate)] = left / observations
            unit_right[(index, gate)] = right / observations
    layers = layer_readings(accumulator.cell, gates)
    return ModelAnalysis(
        label=label or model_label(spec),
        path=path,
        spec=spec,
        clips=clips,
        steps=accumulator.observations[0],
        gates=tuple(gates),
        layers=layers,
        reading=reading(layers),
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
    batches: Iterable[Tensor],
    label: str | None = None,
    path: str | None = None,
    device: torch.device | str | None = None,
) -> ModelAnalysis:
    """Run ``model`` on ``batches`` of frames ``[B, T, ...]`` and summarize its gates.

    Each batch starts from a zero state. Only the accumulators grow with the
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
        for frames in batches:
            frames = frames.to(device)
            model(frames, gate_observer=accumulator)
            clips += frames.shape[0]
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
                ax.scatter(analysis.unit_left[(row, gate)], analysis.unit_right[(row, gate)], s=6, alpha=0.5, color=color, linewidths=0)
                ax.set_xlim(0, 1)
                ax.set_ylim(0, 1)
                ax.set_aspect("equal")
                ax.set_xlabel("fraction left-saturated", fontsize=8)
                ax.set_ylabel("fraction right-saturated", fontsize=8)
            else:
                summary = next(g for g in analysis.gates if g.layer == row + 1 and g.gate == gate)
                counts = np.asarray(summary.histogram, dtype=float)
                shares = counts / counts.sum() if counts.sum() else counts
                edges = np.linspace(0, 1, HISTOGRAM_BINS + 1)
                ax.bar(edges[:-1], shares, width=1 / HISTOGRAM_BINS, align="edge", color=color, edgecolor="white")
                ax.set_xlim(0, 1)
                ax.set_ylim(0, 1)
                ax.set_xlabel("activation", fontsize=8)
                ax.set_ylabel("share of activations", fontsize=8)
            ax.set_title(title, fontsize=9)
            ax.tick_params(labelsize=7)
    figure.suptitle(" vs ".join(a.label for a in analyses) + " — gate activations", fontsize=10)
    return figure


def save_figure(figure: "Figure", path: Path, layout: FigureLayout, analyses: Sequence[ModelAnalysis]) -> None:
    """Write the figure as a PNG, atomically, with its layout in the PNG's text metadata."""
    metadata = {
        "Title": figure.get_suptitle() if hasattr(figure, "get_suptitle") else "gate activations",
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
    input_spec,
    max_clips: int | None = None,
    steps: int | None = None,
    batch_size: int = 8,
    skipped: list | None = None,
) -> Iterable[Tensor]:
    """Frames ``[B, T, ...]`` of the clips under ``data``, preprocessed for ``input_spec``.

    Uses :func:`prernn_cli.data.discover`: the ``val`` split when the data has one
    (``DIR/{train,val}`` or a manifest with a split column), every clip otherwise.
    ``steps=None`` runs each clip whole (2D: every frame; 3D: consecutive
    snippets), one clip per batch; ``steps=T`` samples T evenly spread steps per
    clip and batches ``batch_size`` clips. Unusable clips are appended to
    ``skipped`` as (path, reason) and left out.
    """
    from prernn_cli.data import Clip, ClipDataset, ClipReadError, Sampling, collate, count_frames, discover

    splits = discover(Path(data), val_fraction=0.0)
    clips = select_clips(splits.val or splits.train, max_clips)
    skipped = skipped if skipped is not None else []
    if steps is not None:
        dataset = ClipDataset(clips, input_spec, splits.task, steps=steps, sampling=Sampling.UNIFORM)
        for start in range(0, len(dataset), batch_size):
            batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
            skipped.extend(batch["skipped"])
            if batch["size"]:
                yield batch["frames"]
        return
    probe = ClipDataset([], input_spec, splits.task, steps=1)
    for clip in clips:
        try:
            frames_in_clip = count_frames(clip.path)
        except ClipReadError as error:
            skipped.append((str(clip.path), str(error)))
            continue
        whole = frames_in_clip // probe.snippet
        if whole < 1:
            skipped.append((str(clip.path), f"too short: {frames_in_clip} frames, one step needs {probe.snippet}"))
            continue
        windowed = Clip(clip.path, clip.label, clip.targets, clip.sequence, start=0, num_frames=frames_in_clip)
        item = ClipDataset([windowed], input_spec, splits.task, steps=whole)[0]
        if "error" in item:
            skipped.append((item["path"], item["error"]))
            continue
        yield item["frames"].unsqueeze(0)


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
    from prernn_cli.checkpoint import load_converted

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
        analysis = analyze_model(model.to(torch_device), batches, label=label, path=str(path), device=torch_device)
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
