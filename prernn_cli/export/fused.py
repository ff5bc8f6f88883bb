"""One ONNX graph for late fusion: every stream's frames and state in, fused class probabilities and states out.

The graph holds each stream's model (trunk, recurrent layers unrolled over T, head) side by side.
Stream i's inputs and outputs are the single-model names of SPEC §5 prefixed with ``stream{i}.``
(``stream0.frames``, ``stream0.h_0.0`` → ``stream0.h_n.0``); the one shared output
``probabilities`` ``[batch, T, K]`` is, at every step, the weighted mean of the streams' softmax
(weights normalised to sum to 1, stored in the graph). A consumer pools the steps itself: with
the last step it gets what ``prernn fuse`` reports for models trained with ``--clip-pool last``.

As for a single model (:mod:`prernn_cli.export.exporter`), the file is staged beside the output,
validated (``onnx.checker``, names, onnxruntime against PyTorch on random inputs, and two T-step
chunks carrying every stream's state against one 2T-step PyTorch run) and only then moved into place.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prernn_cli.errors import ExportError, ExportValidationError, PrernnError, UserInputError
from prernn_cli.export.exporter import (
    DEFAULT_EXPORT_STEPS,
    ExportResult,
    _move_all,
    _quiet_exporter,
    _stage,
    _staging_folder,
)
from prernn_cli.export.loading import load_model_for_export
from prernn_cli.export.spec import (
    FUSION_METADATA_KEY,
    OnnxExportSpec,
    OnnxStateModule,
    Precision,
    state_input_names,
)
from prernn_cli.export.validation import OutputComparison, ValidationReport, _check_structure, _compare
from prernn_cli.files import check_writable_output, refuse_overwriting
from prernn_cli.fusion import check_fusable, normalise_weights

logger = logging.getLogger(__name__)

FUSED_OUTPUT = "probabilities"
_EXAMPLE_BATCH = 2  # the export's example batch (not 1: torch.export specialises 0/1)
_VALIDATION_BATCH = 3  # another batch for the comparison


def stream_prefix(index: int) -> str:
    return f"stream{index}."


@dataclass(frozen=True)
class FusedExportSpec:
    """The fused graph as data: each stream's single-model export spec, the weights and the classes."""

    streams: tuple[OnnxExportSpec, ...]
    weights: tuple[float, ...]
    class_names: tuple[str, ...]

    @property
    def first(self) -> OnnxExportSpec:
        return self.streams[0]

    # T, opset, batch, precision and tolerance: every stream's spec is made with the same options
    @property
    def steps(self) -> int:
        return self.first.steps

    @property
    def opset(self) -> int:
        return self.first.opset

    @property
    def batch(self) -> int | None:
        return self.first.batch

    @property
    def precision(self) -> Precision:
        return self.first.precision

    @property
    def atol(self) -> float:
        return self.first.atol

    @property
    def rtol(self) -> float:
        return self.first.rtol

    def _prefixed(self, names_of) -> list[str]:
        return [stream_prefix(i) + name for i, spec in enumerate(self.streams) for name in names_of(spec)]

    @property
    def input_names(self) -> list[str]:
        return self._prefixed(lambda spec: spec.input_names)

    @property
    def state_outputs(self) -> list[str]:
        return self._prefixed(lambda spec: spec.state_outputs)

    @property
    def output_names(self) -> list[str]:
        return [FUSED_OUTPUT, *self.state_outputs]

    def input_shapes(self, batch: int, steps: int | None = None) -> dict[str, tuple[int, ...]]:
        shapes = {}
        for index, spec in enumerate(self.streams):
            for name, shape in spec.input_shapes(batch, steps).items():
                shapes[stream_prefix(index) + name] = shape
        return shapes

    def to_dict(self) -> dict:
        return {
            "weights": list(self.weights),
            "classes": list(self.class_names),
            "inputs": self.input_names,
            "outputs": self.output_names,
            "streams": [{"prefix": stream_prefix(i), **spec.to_dict()} for i, spec in enumerate(self.streams)],
        }

    def metadata(self) -> dict[str, str]:
        """The ONNX ``metadata_props``: classes, weights, and each stream's full metadata under its prefix."""
        metadata = {
            "prernn.class_names": json.dumps(list(self.class_names)),
            "prernn.task": "classify",
            "prernn.steps": str(self.steps),
            FUSION_METADATA_KEY: json.dumps(self.to_dict(), sort_keys=True),
        }
        for index, spec in enumerate(self.streams):
            metadata.update({stream_prefix(index) + key: value for key, value in spec.metadata().items()})
        return metadata


class FusedStateModule(nn.Module):
    """``forward(stream0.frames, stream0.h_0.0, ..., stream1.frames, ...) -> (probabilities, stream0.h_n.0, ...)``."""

    def __init__(self, models: Sequence[nn.Module], weights: Sequence[float]) -> None:
        super().__init__()
        self.streams = nn.ModuleList(OnnxStateModule(model) for model in models)
        self.arity = [1 + len(state_input_names(model.spec)) for model in models]
        self.weights = [float(w) for w in weights]  # constants in the graph

    def forward(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        probabilities, states, start = None, [], 0
        for stream, arity, weight in zip(self.streams, self.arity, self.weights):
            outputs, *state = stream(*inputs[start : start + arity])
            start += arity
            term = weight * F.softmax(outputs.float(), dim=-1)
            probabilities = term if probabilities is None else probabilities + term
            states += state
        return (probabilities, *states)


def _export_program(module: FusedStateModule, spec: FusedExportSpec) -> Any:
    """Trace ``module`` with ``torch.onnx.export`` (dynamo) on zero inputs; the program carries the metadata."""
    shapes = spec.input_shapes(spec.batch or _EXAMPLE_BATCH)
    args = tuple(torch.zeros(shapes[name]) for name in spec.input_names)
    dynamic_shapes = None
    if spec.batch is None:
        batch_dim = torch.export.Dim("batch", min=1)
        dynamic_shapes = (tuple({0: batch_dim} for _ in args),)
    try:
        with _quiet_exporter():
            program = torch.onnx.export(
                module, args, None, dynamo=True, external_data=False, verbose=False, opset_version=spec.opset,
                input_names=spec.input_names, output_names=spec.output_names, dynamic_shapes=dynamic_shapes,
            )  # fmt: skip
    except torch.onnx.OnnxExporterError as error:
        message = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
        raise PrernnError(f"torch.onnx.export failed on the fused models: {message}") from error
    for key, value in spec.metadata().items():
        program.model.metadata_props[key] = value
    return program


# ---------------------------------------------------------------- validation


def _run(session: Any, feeds: dict[str, Tensor]) -> dict[str, np.ndarray]:
    names = [o.name for o in session.get_outputs()]
    arrays = {name: value.numpy().astype(np.float32) for name, value in feeds.items()}
    return dict(zip(names, session.run(names, arrays)))


def _expected(module: FusedStateModule, spec: FusedExportSpec, feeds: dict[str, Tensor]) -> dict[str, Tensor]:
    with torch.no_grad():
        outputs = module(*(feeds[name] for name in spec.input_names))
    return dict(zip(spec.output_names, outputs))


def _random_feeds(spec: FusedExportSpec, batch: int, steps: int, generator: torch.Generator) -> dict[str, Tensor]:
    feeds = {}
    for name, shape in spec.input_shapes(batch, steps).items():
        scale = 1.0 if name.endswith(".frames") else 0.5
        feeds[name] = scale * torch.randn(shape, generator=generator)
    return feeds


def _compare_all(check: str, got: dict, expected: dict, spec: FusedExportSpec) -> list[OutputComparison]:
    return [_compare(check, name, got[name], expected[name], spec.atol, spec.rtol) for name in spec.output_names]


def validate_fused(onnx_path: Path, module: FusedStateModule, spec: FusedExportSpec, seed: int = 0) -> ValidationReport:
    """``onnx.checker`` and names, onnxruntime vs PyTorch on random inputs, and the chunk property for every stream.

    Raises:
        ShapeMismatchError, ToleranceError: as :func:`prernn_cli.export.validate_onnx`.
    """
    session = _check_structure(Path(onnx_path), spec, threads=None)
    batch = spec.batch or _VALIDATION_BATCH
    generator = torch.Generator().manual_seed(seed)
    module.eval()
    feeds = _random_feeds(spec, batch, spec.steps, generator)
    comparisons = _compare_all("random", _run(session, feeds), _expected(module, spec, feeds), spec)
    feeds = _random_feeds(spec, batch, 2 * spec.steps, generator)
    expected = _expected(module, spec, feeds)
    first = {name: value[:, : spec.steps] if name.endswith(".frames") else value for name, value in feeds.items()}
    got_first = _run(session, first)
    second = {name: value[:, spec.steps :] for name, value in feeds.items() if name.endswith(".frames")}
    for state_in, state_out in zip((n for n in spec.input_names if not n.endswith(".frames")), spec.state_outputs):
        second[state_in] = torch.from_numpy(got_first[state_out])
    got_second = _run(session, second)
    joined = {name: got_second[name] for name in spec.state_outputs}
    joined[FUSED_OUTPUT] = np.concatenate([got_first[FUSED_OUTPUT], got_second[FUSED_OUTPUT]], axis=1)
    comparisons += _compare_all("chunks", joined, expected, spec)
    report = ValidationReport(
        str(onnx_path), spec.opset, spec.precision, spec.steps, spec.batch, True, True, tuple(comparisons)
    )
    if not report.passed:
        worst = report.worst()
        error = ExportValidationError(
            f"fused ONNX output '{worst.output}' ({worst.check} inputs) differs from PyTorch by {worst.max_abs:.3g}, "
            f"beyond its tolerance {worst.tolerance:.3g}"
        )
        error.report = report
        raise error
    return report


# ---------------------------------------------------------------- entry points


def export_fused(
    models: Sequence[nn.Module],
    output: Path,
    weights: Sequence[float] | None = None,
    *,
    steps: int | None = None,
    opset: int | None = None,
    batch: str | int | None = None,
    atol: float | None = None,
    rtol: float | None = None,
    keep_invalid: bool = False,
    names: Sequence[str] | None = None,
) -> ExportResult:
    """Export ``models`` (one per stream, same classes) as one fused graph, validate it, move it into place.

    ``steps`` defaults to the T the models were trained with (it must then be the same for all).
    """
    names = [str(n) for n in names] if names is not None else [f"stream {i}" for i in range(len(models))]
    class_names = check_fusable(models, names)
    weights = normalise_weights(weights, len(models))
    if steps is None:
        trained = {m.spec.training.steps if m.spec.training is not None else DEFAULT_EXPORT_STEPS for m in models}
        if len(trained) > 1:
            raise ExportError(f"the models were trained with different steps ({sorted(trained)}); give --steps T")
        steps = trained.pop()
    streams = tuple(
        OnnxExportSpec.create(m.spec, steps=steps, opset=opset, batch=batch, atol=atol, rtol=rtol) for m in models
    )
    spec = FusedExportSpec(streams, weights, class_names)
    output = check_writable_output(Path(output))
    module = FusedStateModule(models, weights).eval()
    started = time.perf_counter()
    program = _export_program(module, spec)
    export_seconds = time.perf_counter() - started
    staging = _staging_folder(output)
    try:
        staged = staging / output.name
        _stage(program, staged, False, output)
        try:
            report = validate_fused(staged, module, spec)
        except ExportValidationError as error:
            if keep_invalid:
                _move_all(staging, output.parent)
            kept = f"kept the invalid file {output} (--keep-invalid)" if keep_invalid else "nothing was written"
            louder = type(error)(f"{error}; {kept}")
            louder.report = getattr(error, "report", None)
            raise louder from None
        files = _move_all(staging, output.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    report = replace(report, path=str(output))
    size = sum(f.stat().st_size for f in files)
    return ExportResult(output, spec, size, False, export_seconds, report, tuple(files))


def export_fused_files(
    model_paths: Sequence[Path], output: Path | None = None, weights: Sequence[float] | None = None, **options
) -> ExportResult:
    """``prernn export MODEL MODEL ... --fuse``: load the converted models and :func:`export_fused` them.

    ``output`` defaults to ``fused.onnx`` (``fused.step.onnx`` for T=1) beside the first model.
    """
    if output is not None and Path(output).is_dir():
        raise ExportError(
            f"output path {output} is a directory; give a file name, e.g. -o {Path(output) / 'fused.onnx'}"
        )
    models = [load_model_for_export(Path(path)) for path in model_paths]
    steps = options.get("steps")
    output = (
        Path(output)
        if output is not None
        else Path(model_paths[0]).with_name("fused.step.onnx" if steps == 1 else "fused.onnx")
    )
    refuse_overwriting(output, *model_paths)
    return export_fused(models, output, weights, names=[str(p) for p in model_paths], **options)


def reject_single_model_options(**given: Any) -> None:
    """Options of a single export that a fused export does not take (each given as its flag: value)."""
    for flag, value in given.items():
        if value:
            raise UserInputError(f"{flag} is not supported with --fuse; export the fused models without it")


__all__ = [
    "FUSED_OUTPUT",
    "FUSION_METADATA_KEY",
    "FusedExportSpec",
    "FusedStateModule",
    "export_fused",
    "export_fused_files",
    "reject_single_model_options",
    "stream_prefix",
    "validate_fused",
]
