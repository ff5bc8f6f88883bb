"""Validation of an exported file: structure, then onnxruntime against PyTorch (SPEC §5).

:func:`validate_onnx` runs, in order: ``onnx.checker`` and the graph's input/output
names (:func:`_check_structure`); then, with a PyTorch reference, onnxruntime vs
PyTorch on random frames and states (:func:`_compare_random`), on real frames when
given (:func:`_compare_clip`), and the chunk property: two T-step chunks carrying
``h_n`` → ``h_0`` equal one 2T-step PyTorch run (:func:`_compare_chunks`). It
returns a :class:`ValidationReport` and raises
:class:`~prernn_cli.errors.ShapeMismatchError` or
:class:`~prernn_cli.errors.ToleranceError`; the CLI decides how loud they are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from prernn_cli.errors import ExportValidationError, ShapeMismatchError, ToleranceError, UserInputError
from prernn_cli.export.loading import load_clip_steps, load_model_for_export
from prernn_cli.export.runtime import error_line, open_session
from prernn_cli.export.spec import OnnxExportSpec, OnnxStateModule, Precision, read_export_spec
from prernn_cli.spec import ModelSpec

#: Batch the validation runs a dynamic-batch model with: different from the export's example (2).
_VALIDATION_BATCH = 3


@dataclass(frozen=True)
class OutputComparison:
    """One output of one check: onnxruntime vs PyTorch.

    The output passes where every element has ``|onnx - torch| <= atol + rtol * scale``,
    ``scale`` being the largest ``|torch|`` over the whole output: float32 rounding grows
    with the output's magnitude, not with each element's, so an element near zero in a
    large output carries the rounding of its neighbours. ``atol`` is the floor for
    outputs near zero everywhere.
    """

    check: str  # "random", "clip" or "chunks"
    output: str
    shape: tuple[int, ...]
    max_abs: float
    max_rel: float  # max |onnx - torch| / scale
    atol: float
    rtol: float
    passed: bool
    scale: float = 0.0  # max |torch| over the output
    worst_index: tuple[int, ...] = ()  # the element with the largest |onnx - torch|
    worst_onnx: float = 0.0
    worst_torch: float = 0.0

    @property
    def tolerance(self) -> float:
        """The largest difference any element of this output may have."""
        return self.atol + self.rtol * self.scale

    def to_dict(self) -> dict:
        record = {**self.__dict__, "shape": list(self.shape), "worst_index": list(self.worst_index)}
        record["tolerance"] = self.tolerance
        # JSON has no NaN or infinity: a non-finite measurement is written as null
        return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()}


@dataclass(frozen=True)
class ValidationReport:
    """What :func:`validate_onnx` checked and measured."""

    path: str
    opset: int
    precision: Precision
    steps: int
    batch: int | None
    checker: bool
    compared_with_pytorch: bool
    comparisons: tuple[OutputComparison, ...] = ()
    notes: tuple[str, ...] = ()  # checks skipped, and why

    @property
    def passed(self) -> bool:
        return self.checker and all(c.passed for c in self.comparisons)

    def worst(self) -> OutputComparison | None:
        failing = [c for c in self.comparisons if not c.passed] or list(self.comparisons)
        return max(failing, key=lambda c: c.max_abs / c.tolerance, default=None)

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "opset": self.opset,
            "precision": self.precision.value,
            "steps": self.steps,
            "batch": "dynamic" if self.batch is None else self.batch,
            "checker": self.checker,
            "compared_with_pytorch": self.compared_with_pytorch,
            "passed": self.passed,
            "comparisons": [c.to_dict() for c in self.comparisons],
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class _Comparer:
    """What every comparison needs: the session, the PyTorch reference, the spec and the tolerance."""

    session: Any
    reference: nn.Module
    spec: OnnxExportSpec
    atol: float
    rtol: float

    def run(self, frames: Tensor, state: list[Tensor]) -> dict[str, np.ndarray]:
        return _run(self.session, self.spec, frames, state)

    def expected(self, frames: Tensor, state: list[Tensor]) -> list[Tensor]:
        """PyTorch's outputs, in :attr:`OnnxExportSpec.output_names` order."""
        with torch.no_grad():
            return list(OnnxStateModule(self.reference)(frames, *state))

    def compare(self, check: str, got: dict[str, np.ndarray], expected: list[Tensor]) -> list[OutputComparison]:
        return [
            _compare(check, name, got[name], value, self.atol, self.rtol)
            for name, value in zip(self.spec.output_names, expected)
        ]


# ---------------------------------------------------------------- one output


def _compare(check: str, name: str, got: np.ndarray, expected: Tensor, atol: float, rtol: float) -> OutputComparison:
    """Compare one output against ``atol + rtol * max|torch|`` (see :class:`OutputComparison`)."""
    ref = expected.detach().to(torch.float64).cpu().numpy()
    got64 = np.asarray(got, dtype=np.float64)
    if got64.shape != ref.shape:
        raise ShapeMismatchError(
            f"ONNX output '{name}' ({check} inputs) has shape {list(got64.shape)}, PyTorch gives {list(ref.shape)}"
        )
    if not ref.size:
        return OutputComparison(check, name, tuple(ref.shape), 0.0, 0.0, atol, rtol, True)
    diff = np.abs(got64 - ref)
    diff[~np.isfinite(diff)] = np.inf  # NaN or infinity on either side is the worst difference
    magnitudes = np.abs(ref[np.isfinite(ref)])
    scale = float(magnitudes.max()) if magnitudes.size else 0.0
    flat = int(np.argmax(diff))
    index = tuple(int(i) for i in np.unravel_index(flat, diff.shape))
    max_abs = float(diff.flat[flat])
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else math.inf)
    passed = bool(max_abs <= atol + rtol * scale)  # the threshold is one number per output
    return OutputComparison(
        check, name, tuple(ref.shape), max_abs, max_rel, atol, rtol, passed,
        scale, index, float(got64.flat[flat]), float(ref.flat[flat]),
    )  # fmt: skip


def _random_inputs(
    spec: OnnxExportSpec, batch: int, steps: int, generator: torch.Generator
) -> tuple[Tensor, list[Tensor]]:
    shapes = spec.input_shapes(batch, steps)
    frames = torch.randn(shapes["frames"], generator=generator)
    state = [0.5 * torch.randn(shapes[name], generator=generator) for name in spec.state_inputs]
    return frames, state


def _run(session: Any, spec: OnnxExportSpec, frames: Tensor, state: list[Tensor]) -> dict[str, np.ndarray]:
    """onnxruntime's outputs by name, for ``frames`` and the flat ``state`` in the spec's precision."""
    dtype = spec.precision.numpy_dtype
    feeds = {"frames": frames.numpy().astype(dtype)}
    feeds.update({name: s.numpy().astype(dtype) for name, s in zip(spec.state_inputs, state)})
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


# ---------------------------------------------------------------- the steps of a validation


def _check_structure(onnx_path: Path, spec: OnnxExportSpec, threads: int | None) -> Any:
    """``onnx.checker`` (full) and the SPEC §5 input/output names; the onnxruntime session on success."""
    import onnx

    try:
        onnx.checker.check_model(str(onnx_path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError, RuntimeError, OSError) as error:
        # the checker's verdicts, and its C++ reader's failures on a file it cannot read
        raise ExportValidationError(f"onnx.checker rejects {onnx_path}: {error_line(error)}") from None
    try:
        session = open_session(onnx_path, threads=threads)
    except Exception as error:  # noqa: BLE001 - onnxruntime's errors are untyped
        raise ExportValidationError(f"onnxruntime cannot load {onnx_path}: {error_line(error)}") from None
    got_inputs = [i.name for i in session.get_inputs()]
    got_outputs = [o.name for o in session.get_outputs()]
    if got_inputs != spec.input_names or got_outputs != spec.output_names:
        raise ShapeMismatchError(
            f"{onnx_path} has inputs {got_inputs} and outputs {got_outputs}; SPEC §5 needs {spec.input_names} and {spec.output_names}"
        )
    return session


def _check_outputs_alone(session: Any, spec: OnnxExportSpec, batch: int, generator: torch.Generator) -> None:
    """Without a PyTorch model: the outputs of random inputs have the right shapes and are finite."""
    frames, state = _random_inputs(spec, batch, spec.steps, generator)
    outputs = _run(session, spec, frames, state)
    num_outputs = outputs["outputs"].shape[-1]
    for name, shape in spec.output_shapes(batch, num_outputs).items():
        if outputs[name].shape != shape:
            raise ShapeMismatchError(
                f"ONNX output '{name}' has shape {list(outputs[name].shape)}, expected {list(shape)}"
            )
        if not np.isfinite(outputs[name]).all():
            raise ToleranceError(f"ONNX output '{name}' holds NaN or infinity on random inputs")


def _check_same_model(reference: ModelSpec, exported: ModelSpec, onnx_path: Path) -> None:
    fields = ("base_architecture", "layers", "cell", "sih", "traditional", "input")
    differ = [name for name in fields if getattr(reference, name) != getattr(exported, name)]
    if differ:
        raise UserInputError(
            f"the PyTorch model is not the one {onnx_path} was exported from ({', '.join(differ)} differ); pass the converted model it came from"
        )


def _compare_random(comparer: _Comparer, batch: int, generator: torch.Generator) -> list[OutputComparison]:
    """Random frames and state, one T-step run."""
    frames, state = _random_inputs(comparer.spec, batch, comparer.spec.steps, generator)
    return comparer.compare("random", comparer.run(frames, state), comparer.expected(frames, state))


def _compare_clip(comparer: _Comparer, clip_steps: Tensor | np.ndarray) -> list[OutputComparison]:
    """Real, preprocessed frames ``[N, *step]`` (a short clip repeated to T steps), zero state."""
    spec = comparer.spec
    clip = torch.as_tensor(np.asarray(clip_steps), dtype=torch.float32)
    if tuple(clip.shape[1:]) != spec.model_spec.input.step_shape():
        raise UserInputError(
            f"the validation clip has steps of shape {list(clip.shape[1:])}; the model expects {list(spec.model_spec.input.step_shape())}"
        )
    index = torch.arange(spec.steps) % clip.shape[0]
    frames = clip[index].unsqueeze(0).expand(spec.batch or 1, *clip[index].shape).contiguous()
    zero = [torch.zeros(s) for name, s in spec.input_shapes(frames.shape[0]).items() if name != "frames"]
    return comparer.compare("clip", comparer.run(frames, zero), comparer.expected(frames, zero))


def _compare_chunks(comparer: _Comparer, batch: int, generator: torch.Generator) -> list[OutputComparison]:
    """The chunk property: two T-step onnxruntime chunks carrying the state == one 2T-step PyTorch run."""
    spec = comparer.spec
    frames, state = _random_inputs(spec, batch, 2 * spec.steps, generator)
    expected = comparer.expected(frames, state)
    first = comparer.run(frames[:, : spec.steps], state)
    carried = [torch.from_numpy(first[name].astype(np.float32)) for name in spec.state_outputs]
    second = comparer.run(frames[:, spec.steps :], carried)
    joined = {"outputs": np.concatenate([first["outputs"], second["outputs"]], axis=1)}
    joined.update({name: second[name] for name in spec.state_outputs})
    return comparer.compare("chunks", joined, expected)


def _compare_with_pytorch(
    comparer: _Comparer, batch: int, generator: torch.Generator, clip_steps: Tensor | np.ndarray | None
) -> list[OutputComparison]:
    """Every comparison in order (random, clip when given, chunks), with the reference in eval mode meanwhile."""
    reference = comparer.reference
    was_training = reference.training
    reference.eval()
    try:
        comparisons = _compare_random(comparer, batch, generator)
        if clip_steps is not None:
            comparisons += _compare_clip(comparer, clip_steps)
        return comparisons + _compare_chunks(comparer, batch, generator)
    finally:
        reference.train(was_training)


def _tolerance_error(report: ValidationReport) -> ToleranceError:
    """The error for a failed report: its worst output and element, with the report attached as ``error.report``."""
    worst = report.worst()
    where = ",".join(map(str, worst.worst_index))
    error = ToleranceError(
        f"ONNX output '{worst.output}' ({worst.check} inputs) differs from PyTorch by {worst.max_abs:.3g} at [{where}] "
        f"(onnx {worst.worst_onnx:.6g}, torch {worst.worst_torch:.6g}), beyond its tolerance "
        f"atol {worst.atol:g} + rtol {worst.rtol:g}·max|torch| {worst.scale:.4g} = {worst.tolerance:.3g}"
    )
    error.report = report
    return error


# ---------------------------------------------------------------- entry points


def validate_onnx(
    onnx_path: Path,
    reference: nn.Module | None = None,
    *,
    atol: float | None = None,
    rtol: float | None = None,
    clip_steps: Tensor | np.ndarray | None = None,
    seed: int = 0,
    threads: int | None = None,
) -> ValidationReport:
    """Check an exported file, and compare it with its PyTorch model when ``reference`` is given.

    Checks, in order: ``onnx.checker`` (full), the input/output names of SPEC §5,
    then with a reference: onnxruntime vs PyTorch on random frames and states (for a
    dynamic-batch model at a batch other than the export's), on ``clip_steps`` (real,
    preprocessed frames ``[N, *step]``, zero state) when given, and the chunk
    property: two T-step onnxruntime chunks, ``h_n`` fed back as ``h_0``, vs one
    2T-step PyTorch run. Without a reference, onnxruntime runs on random inputs and
    only shapes and finiteness are checked.

    Raises:
        ShapeMismatchError: an input/output is missing or has the wrong shape.
        ToleranceError: an element of an output differs beyond ``atol + rtol * max|torch|``
            (the largest magnitude of that output); the report is attached as ``error.report``.
    """
    onnx_path = Path(onnx_path)
    spec = read_export_spec(onnx_path)
    atol = spec.atol if atol is None else float(atol)
    rtol = spec.rtol if rtol is None else float(rtol)
    if atol <= 0 or rtol < 0:
        raise UserInputError(f"tolerances must be positive (atol {atol}, rtol {rtol})")
    session = _check_structure(onnx_path, spec, threads)
    batch = spec.batch or _VALIDATION_BATCH
    generator = torch.Generator().manual_seed(seed)
    report_args = dict(
        path=str(onnx_path),
        opset=spec.opset,
        precision=spec.precision,
        steps=spec.steps,
        batch=spec.batch,
        checker=True,
    )

    if reference is None:
        _check_outputs_alone(session, spec, batch, generator)
        notes = ("no PyTorch model given (--against): checked structure, shapes and finiteness only",)
        return ValidationReport(**report_args, compared_with_pytorch=False, notes=notes)

    _check_same_model(reference.spec, spec.model_spec, onnx_path)
    comparisons = _compare_with_pytorch(_Comparer(session, reference, spec, atol, rtol), batch, generator, clip_steps)
    notes = () if clip_steps is not None else ("no clip given: compared on random frames only",)
    report = ValidationReport(**report_args, compared_with_pytorch=True, comparisons=tuple(comparisons), notes=notes)
    if not report.passed:
        raise _tolerance_error(report)
    return report


def validate_file(
    onnx_path: Path,
    against: Path | None = None,
    *,
    clip: Path | None = None,
    resize: bool = False,
    atol: float | None = None,
    rtol: float | None = None,
    arch: str | None = None,
) -> ValidationReport:
    """``prernn validate MODEL.onnx [--against MODEL [--arch USER_CLASS]]``."""
    spec = read_export_spec(Path(onnx_path))
    reference = load_model_for_export(Path(against), user_class=arch) if against is not None else None
    if clip is not None and reference is None:
        raise UserInputError(
            "--clip compares with PyTorch, which needs --against MODEL (the converted model it was exported from)"
        )
    clip_steps = load_clip_steps(clip, spec.model_spec, resize)
    return validate_onnx(Path(onnx_path), reference, atol=atol, rtol=rtol, clip_steps=clip_steps)
