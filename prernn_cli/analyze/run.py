"""``prernn analyze``: run converted models over clips, count their gates and score their outputs, write the figure and summary."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from prernn_cli.analyze.accumulator import GATES, GateAccumulator
from prernn_cli.analyze.clips import ClipWindow, analysis_splits, clip_batches
from prernn_cli.analyze.figure import figure_layout, gate_figure, save_figure, write_summary
from prernn_cli.analyze.performance import PerformanceMeter
from prernn_cli.analyze.summary import AnalysisReport, ModelAnalysis, model_label, summarize
from prernn_cli.checkpoint import load_converted
from prernn_cli.devices import resolve_device
from prernn_cli.errors import DataError, UserInputError
from prernn_cli.files import refuse_folder_over_inputs
from prernn_cli.spec import ModelSpec

if TYPE_CHECKING:  # pragma: no cover
    from prernn_cli.model import RecurrentModel

logger = logging.getLogger(__name__)

FIGURE_NAME = "gates.png"
SUMMARY_NAME = "summary.json"


def check_gated(spec: ModelSpec) -> None:
    """Refuse a model whose recurrent layers have no gates (VRNN)."""
    if spec.cell not in GATES:
        raise UserInputError(
            f"{spec.cell.value.upper()} has no gates: analyze needs an LSTM or GRU model "
            "(convert with --cell lstm or --cell gru)"
        )


@torch.no_grad()
def analyze_model(
    model: RecurrentModel,
    batches: Iterable[Tensor | ClipWindow],
    label: str | None = None,
    path: str | None = None,
    device: torch.device | str | None = None,
    meter: PerformanceMeter | None = None,
) -> ModelAnalysis:
    """Run ``model`` on ``batches`` of frames ``[B, T, ...]`` and summarize its gates.

    A plain tensor, or a :class:`ClipWindow` with ``first=True``, starts new clips
    from a zero state; a window with ``first=False`` continues the previous
    one's clips from their last state. The gate accumulators grow only with the
    model's size. ``meter`` scores the outputs of the same pass against the windows'
    targets (a few numbers per clip), and its verdict enters the reading.
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
            window = batch if isinstance(batch, ClipWindow) else ClipWindow(batch)
            frames = window.frames.to(device)
            if window.first:
                state = None
                clips += frames.shape[0]
            elif state is None:
                raise ValueError("a continuing window came before any first window")
            outputs, state = model(frames, state=state, gate_observer=accumulator)
            if meter is not None:
                meter.add(outputs, window.target, window.first)
    finally:
        model.train(was_training)
    if clips == 0:
        raise DataError("no clips to analyze; give a folder with at least one clip in --data")
    logger.info("analyzed %d clips with %s", clips, label or model_label(spec))
    performance = meter.result() if meter is not None else None
    return summarize(accumulator, spec, label=label, path=path, clips=clips, performance=performance)


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
        raise UserInputError(
            f"cannot create report folder {report_dir} ({error.strerror}); choose another -o"
        ) from None
    return report_dir


def _check_inputs(paths: Sequence[Path], max_clips: int | None, steps: int | None) -> None:
    """Refuse missing model files and non-positive ``max_clips`` / ``steps`` before loading anything."""
    for path in paths:
        if not path.is_file():
            raise UserInputError(f"model file {path} does not exist; give a model saved by prernn convert or train")
    if max_clips is not None and max_clips < 1:
        raise UserInputError(f"--max-clips must be at least 1, got {max_clips}")
    if steps is not None and steps < 1:
        raise UserInputError(f"--steps must be at least 1, got {steps}")


def _load_gated_models(paths: Sequence[Path], user_classes: Sequence[str | None]) -> list[RecurrentModel]:
    models = []
    for path, user_class in zip(paths, user_classes):
        model = load_converted(path, user_class=user_class)
        check_gated(model.spec)
        models.append(model)
    return models


def _analyze_clips(
    model: RecurrentModel,
    path: Path,
    label: str,
    data: Path,
    max_clips: int | None,
    steps: int | None,
    device: torch.device,
    split_file: Path | None = None,
) -> ModelAnalysis:
    """One model over the clips in ``data``, scored as it goes; unusable clips are logged and listed in the analysis."""
    skipped: list = []
    splits = analysis_splits(data, split_file)
    meter = PerformanceMeter.for_model(model.spec, splits)
    batches = clip_batches(data, model.spec.input, max_clips=max_clips, steps=steps, skipped=skipped, splits=splits)
    try:
        analysis = analyze_model(model.to(device), batches, label=label, path=str(path), device=device, meter=meter)
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
    return analysis


def _write_report(analyses: Sequence[ModelAnalysis], report_dir: Path | None) -> AnalysisReport:
    """Write ``gates.png`` and ``summary.json`` into ``report_dir`` (nothing when it is None)."""
    layout = figure_layout(analyses)
    figure_path = summary_path = None
    if report_dir is not None:
        figure_path = report_dir / FIGURE_NAME
        summary_path = report_dir / SUMMARY_NAME
        save_figure(gate_figure(analyses), figure_path, layout, analyses)
        write_summary(analyses, summary_path)
    return AnalysisReport(models=tuple(analyses), figure=figure_path, summary=summary_path, panels=layout.panels)


def analyze(
    model_path: Path,
    data: Path,
    report_dir: Path | None = None,
    compare: Path | None = None,
    max_clips: int | None = None,
    steps: int | None = None,
    device: str = "cpu",
    write_files: bool = True,
    arch: str | None = None,
    compare_arch: str | None = None,
    split_file: Path | None = None,
) -> AnalysisReport:
    """``prernn analyze``: gate statistics of one model (or two, side by side) on the clips in ``data``.

    Each model's task metric on the same clips is reported beside its gates, and a model no
    better than chance gets no verdict on its memory (:mod:`prernn_cli.analyze.performance`).
    Writes ``gates.png`` (:func:`~prernn_cli.analyze.figure.gate_figure`) and ``summary.json`` into
    ``report_dir`` (default ``<model stem>_analysis``), atomically. ``arch`` / ``compare_arch``: the
    user class the model / the compared one is built on, approved by the user (``--arch``).
    ``split_file``: a UCF101/HMDB51 split list; its test clips are analysed.
    """
    paths = [Path(model_path)] + ([Path(compare)] if compare is not None else [])
    _check_inputs(paths, max_clips, steps)
    torch_device = resolve_device(device)
    models = _load_gated_models(paths, [arch, compare_arch])
    if write_files:
        report_dir = Path(report_dir) if report_dir is not None else default_report_dir(paths[0])
        inputs = (*paths, Path(data), *([Path(split_file)] if split_file is not None else []))
        refuse_folder_over_inputs(report_dir, (FIGURE_NAME, SUMMARY_NAME), *inputs)
        if report_dir.exists() and not report_dir.is_dir():
            raise UserInputError(f"report folder {report_dir} is a file; give a folder with -o")
    labels = _unique_labels([model_label(m.spec) for m in models], paths)
    analyses = [
        _analyze_clips(model, path, label, data, max_clips, steps, torch_device, split_file)
        for model, path, label in zip(models, paths, labels)
    ]
    # The folder is made only once there is something to put in it: a failed analysis leaves none.
    return _write_report(analyses, prepare_report_dir(report_dir) if write_files else None)
