"""The ONNX exporter (SPEC §5): trace, stage, validate, move into place.

:func:`export_onnx` runs ``torch.onnx.export`` (the dynamo exporter) on the flat
wrapper :class:`~prernn_cli.export.spec.OnnxStateModule` of a
:class:`~prernn_cli.model.RecurrentModel`, writes the file into a temporary folder
beside the output, validates it there (:func:`~prernn_cli.export.validation.validate_onnx`),
and only then moves it into place.

The model's forward loops over T in Python, so the exported graph is unrolled for
a fixed T (``steps``); ``steps=1`` is the streaming step model. Batch is dynamic
unless fixed.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from prernn_cli.errors import ExportError, ExportValidationError, PrernnError
from prernn_cli.export.loading import load_clip_steps, load_model_for_export
from prernn_cli.export.spec import OnnxExportSpec, OnnxStateModule, Precision
from prernn_cli.export.validation import ValidationReport, validate_onnx
from prernn_cli.files import cannot_write, check_writable_output, refuse_overwriting

logger = logging.getLogger(__name__)

#: Weights beyond this size go to an external data file (protobuf's 2 GB limit, with a margin).
EXTERNAL_DATA_BYTES = 1_900_000_000
#: Batch of the example inputs for a dynamic-batch export (not 1: torch.export specialises 0/1).
_EXAMPLE_BATCH = 2


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_onnx` wrote and measured."""

    path: Path
    spec: OnnxExportSpec
    size_bytes: int
    external_data: bool
    export_seconds: float
    validation: ValidationReport | None
    files: tuple[Path, ...] = field(default=())

    def to_dict(self) -> dict:
        return {
            "path": str(self.path),
            "files": [str(f) for f in self.files],
            "size_bytes": self.size_bytes,
            "external_data": self.external_data,
            "export_seconds": round(self.export_seconds, 3),
            "export": self.spec.to_dict(),
            "validation": self.validation.to_dict() if self.validation else None,
        }


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The dynamo exporter warns and prints progress; keep stdout clean and log it instead."""
    buffer = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(buffer):
        warnings.simplefilter("ignore")
        yield
    if buffer.getvalue().strip():
        logger.debug("exporter output:\n%s", buffer.getvalue())


def _parameter_bytes(model: nn.Module, dtype: torch.dtype) -> int:
    itemsize = torch.empty((), dtype=dtype).element_size()
    return sum(t.numel() for t in (*model.parameters(), *model.buffers())) * itemsize


#: T of the exported graph for a model that records no training.
DEFAULT_EXPORT_STEPS = 16


# ---------------------------------------------------------------- the steps of an export


def _export_program(wrapper: OnnxStateModule, spec: OnnxExportSpec) -> Any:
    """Trace ``wrapper`` with ``torch.onnx.export`` (dynamo) on zero inputs; the program carries the spec's metadata.

    Raises:
        PrernnError: the exporter fails on the model (first line of its error).
    """
    dtype = spec.precision.torch_dtype
    shapes = spec.input_shapes(spec.batch or _EXAMPLE_BATCH)
    args = tuple(torch.zeros(shapes[name], dtype=dtype) for name in spec.input_names)
    dynamic_shapes = None
    if spec.dynamic_batch:
        batch_dim = torch.export.Dim("batch", min=1)
        dynamic_shapes = ({0: batch_dim}, tuple({0: batch_dim} for _ in spec.state_inputs))
    try:
        with _quiet_exporter():
            program = torch.onnx.export(
                wrapper,
                args,
                None,
                dynamo=True,
                external_data=False,
                verbose=False,
                opset_version=spec.opset,
                input_names=spec.input_names,
                output_names=spec.output_names,
                dynamic_shapes=dynamic_shapes,
            )
    except PrernnError:
        raise
    except torch.onnx.OnnxExporterError as error:  # what torch.export and the ONNX translation raise, wrapped
        message = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
        raise PrernnError(f"torch.onnx.export failed on this model: {message}") from error
    for key, value in spec.metadata().items():
        program.model.metadata_props[key] = value
    return program


def _staging_folder(output: Path) -> Path:
    """A new temporary folder beside ``output`` for the files of one export."""
    try:
        return Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    except OSError as error:
        raise cannot_write(output, error) from None


def _stage(program: Any, staged: Path, external: bool, output: Path) -> None:
    """Write the program to ``staged`` (with an external data file beside it when ``external``).

    An OS error (a full disk) names ``output``, the file being written, and its cause.
    """
    try:
        with _quiet_exporter():
            program.save(staged, external_data=external)
    except OSError as error:
        raise cannot_write(output, error) from None


def _validate_staged(
    staged: Path,
    model: nn.Module,
    spec: OnnxExportSpec,
    output: Path,
    *,
    clip_steps: Tensor | np.ndarray | None,
    keep_invalid: bool,
    threads: int | None,
) -> ValidationReport:
    """Validate the staged file against ``model``; on failure keep it as ``output`` only when ``keep_invalid``.

    Raises:
        ShapeMismatchError, ToleranceError: as :func:`validate_onnx`, saying whether anything was written.
    """
    try:
        return validate_onnx(staged, model, atol=spec.atol, rtol=spec.rtol, clip_steps=clip_steps, threads=threads)
    except ExportValidationError as error:
        if keep_invalid:
            _move_all(staged.parent, output.parent)
            suffix = f"kept the invalid file {output} (--keep-invalid)"
        else:
            suffix = "nothing was written (pass --keep-invalid to keep it, or a larger --atol)"
        louder = type(error)(f"{error}; {suffix}")
        louder.report = getattr(error, "report", None)
        raise louder from None


def _move_all(staging: Path, destination: Path) -> list[Path]:
    """Move every file of ``staging`` into ``destination`` (each an atomic replace); the paths moved to."""
    moved = []
    for entry in sorted(staging.iterdir()):
        target = destination / entry.name
        os.replace(entry, target)
        moved.append(target)
    return moved


# ---------------------------------------------------------------- entry points


def export_onnx(
    model: nn.Module,
    output: Path,
    spec: OnnxExportSpec,
    *,
    validate: bool = True,
    clip_steps: Tensor | np.ndarray | None = None,
    keep_invalid: bool = False,
    threads: int | None = None,
) -> ExportResult:
    """Export ``model`` to ``output`` as ``spec`` says, validate it, then move it into place.

    The file is written into a temporary folder beside ``output`` (with the external
    data file too, for models past 2 GB) and moved only after validation passes; a
    failed validation leaves nothing unless ``keep_invalid``.

    Raises:
        ExportError: ``output`` cannot be written (a folder, a missing parent).
        PrernnError: the exporter fails on the model.
        ShapeMismatchError, ToleranceError: validation fails (see :func:`validate_onnx`).
    """
    output = check_writable_output(Path(output))
    dtype = spec.precision.torch_dtype
    was_training = model.training
    model.eval()
    try:
        subject = copy.deepcopy(model).to(dtype) if spec.precision is Precision.FP16 else model
        logger.info(
            "exporting %s (T=%d, opset %d, %s, batch %s)",
            output,
            spec.steps,
            spec.opset,
            spec.precision.value,
            spec.batch or "dynamic",
        )
        started = time.perf_counter()
        program = _export_program(OnnxStateModule(subject).eval(), spec)
        export_seconds = time.perf_counter() - started
    finally:
        model.train(was_training)

    external = _parameter_bytes(subject, dtype) > EXTERNAL_DATA_BYTES
    staging = _staging_folder(output)
    try:
        staged = staging / output.name
        _stage(program, staged, external, output)
        report = None
        if validate:
            report = _validate_staged(
                staged, model, spec, output, clip_steps=clip_steps, keep_invalid=keep_invalid, threads=threads
            )
        files = _move_all(staging, output.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    size = sum(f.stat().st_size for f in files)
    if report is not None:
        report = dataclasses.replace(report, path=str(output))
    return ExportResult(output, spec, size, external, export_seconds, report, tuple(files))


def default_output(model_path: Path, half: bool = False, steps: int | None = None) -> Path:
    """``model.safetensors`` → ``model.onnx`` (``model.step.onnx`` for T=1, ``.fp16`` added for --half)."""
    model_path = Path(model_path)
    parts = [model_path.stem]
    if steps == 1:
        parts.append("step")
    if half:
        parts.append("fp16")
    return model_path.with_name(".".join(parts) + ".onnx")


def export_file(
    model_path: Path,
    output: Path | None = None,
    *,
    steps: int | None = None,
    opset: int | None = None,
    half: bool = False,
    batch: str | int | None = None,
    atol: float | None = None,
    rtol: float | None = None,
    clip: Path | None = None,
    resize: bool = False,
    keep_invalid: bool = False,
    arch: str | None = None,
) -> ExportResult:
    """``prernn export MODEL --onnx``: load a converted model, export it, validate it (on ``clip`` too).

    ``steps`` defaults to the T the model was trained with (16 for a model never trained).
    """
    if steps is not None and steps < 1:  # before loading anything: the cheapest mistake to report
        raise ExportError(f"--steps must be at least 1 (1 gives the streaming step model), not {steps}")
    model_path = Path(model_path)
    if output is not None and Path(output).is_dir():
        raise ExportError(
            f"output path {output} is a directory; give a file name, e.g. -o {Path(output) / 'model.onnx'}"
        )
    model = load_model_for_export(model_path, user_class=arch)  # arch: the user class the user approved
    if steps is None:
        steps = model.spec.training.steps if model.spec.training is not None else DEFAULT_EXPORT_STEPS
    output = Path(output) if output is not None else default_output(model_path, half, steps)
    check_writable_output(output)
    for written in (output, output.with_name(output.name + ".data")):  # the graph, and its external data
        refuse_overwriting(written, model_path, clip)
    spec = OnnxExportSpec.create(model.spec, steps=steps, opset=opset, batch=batch, half=half, atol=atol, rtol=rtol)
    clip_steps = load_clip_steps(clip, model.spec, resize)
    return export_onnx(model, output, spec, clip_steps=clip_steps, keep_invalid=keep_invalid)
