"""The paper's Figure 2 for one or more analysed models, and the summary file beside it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from prernn_cli.analyze.accumulator import GATE_NAMES, GATES, HISTOGRAM_BINS
from prernn_cli.analyze.summary import ModelAnalysis
from prernn_cli.files import atomic_path, finite_json
from prernn_cli.spec import CellType

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure


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


def gate_figure(analyses: Sequence[ModelAnalysis]) -> Figure:
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
                ax.scatter(
                    analysis.unit_left[(row, gate)],
                    analysis.unit_right[(row, gate)],
                    s=8,
                    alpha=0.5,
                    color=color,
                    linewidths=0,
                )
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


def save_figure(figure: Figure, path: Path, layout: FigureLayout, analyses: Sequence[ModelAnalysis]) -> None:
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
        tmp.write_text(finite_json(document, indent=2) + "\n", encoding="utf-8")
