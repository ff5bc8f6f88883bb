"""Look inside the gates: the paper's saturation analysis (Sec. 4.1, Figure 2).

Clips stream through a converted LSTM or GRU model (:mod:`.clips`, :mod:`.run`);
per recurrent layer, gate and unit, fixed-size counters record how often each
activation is left- (< 0.1) or right-saturated (> 0.9) (:mod:`.accumulator`).
The counts become per-gate summaries, per-layer verdicts and a one-line reading
(:mod:`.summary`), judged against the model's task metric on the same clips
(:mod:`.performance`: a model no better than chance gets no verdict on its memory),
and the figure: saturation scatter plots for LSTM (per gate
i, f, o), activation histograms for GRU (per gate r, z), one row per layer,
several models side by side (:mod:`.figure`).
"""

from prernn_cli.analyze.accumulator import (
    GATE_NAMES,
    GATES,
    HISTOGRAM_BINS,
    LEFT_SATURATION,
    LONG_MEMORY_FRACTION,
    MOSTLY_SATURATED,
    RARELY_SATURATED,
    RIGHT_SATURATION,
    GateAccumulator,
)
from prernn_cli.analyze.clips import WINDOW_STEPS, ClipWindow, analysis_splits, clip_batches, select_clips
from prernn_cli.analyze.figure import FigureLayout, figure_layout, gate_figure, save_figure, write_summary
from prernn_cli.analyze.performance import (
    CHANCE_TAIL,
    Performance,
    PerformanceMeter,
    better_than_chance,
    chance_upper,
)
from prernn_cli.analyze.run import (
    FIGURE_NAME,
    SUMMARY_NAME,
    analyze,
    analyze_model,
    check_gated,
    default_report_dir,
    prepare_report_dir,
)
from prernn_cli.analyze.summary import (
    NO_VERDICT,
    UNTRAINED_PREFIX,
    AnalysisReport,
    GateSummary,
    LayerReading,
    ModelAnalysis,
    Verdict,
    layer_readings,
    model_label,
    reading,
    summarize,
)

__all__ = [
    "CHANCE_TAIL",
    "NO_VERDICT",
    "Performance",
    "PerformanceMeter",
    "analysis_splits",
    "better_than_chance",
    "chance_upper",
    "FIGURE_NAME",
    "GATE_NAMES",
    "GATES",
    "HISTOGRAM_BINS",
    "LEFT_SATURATION",
    "LONG_MEMORY_FRACTION",
    "MOSTLY_SATURATED",
    "RARELY_SATURATED",
    "RIGHT_SATURATION",
    "SUMMARY_NAME",
    "UNTRAINED_PREFIX",
    "WINDOW_STEPS",
    "AnalysisReport",
    "ClipWindow",
    "FigureLayout",
    "GateAccumulator",
    "GateSummary",
    "LayerReading",
    "ModelAnalysis",
    "Verdict",
    "analyze",
    "analyze_model",
    "check_gated",
    "clip_batches",
    "default_report_dir",
    "figure_layout",
    "gate_figure",
    "layer_readings",
    "model_label",
    "prepare_report_dir",
    "reading",
    "save_figure",
    "select_clips",
    "summarize",
    "write_summary",
]
