"""ONNX export of converted models, and its validation (SPEC §5).

Three separate pieces, the way optimum's exporter keeps them:

* :class:`OnnxExportSpec` — the export as *data*: input/output names, dynamic
  axes, unrolled length T, opset, precision and the tolerance its validation uses.
  It is written into the ONNX file's ``metadata_props`` and read back from it.
* :func:`export_onnx` — runs ``torch.onnx.export`` (the dynamo exporter) on a flat
  wrapper (:class:`OnnxStateModule`) of a :class:`~prernn_cli.model.RecurrentModel`,
  writes into a temporary folder, validates, and only then moves the file into place.
* :func:`validate_onnx` — ``onnx.checker``, then onnxruntime against the PyTorch
  model on random inputs, on real frames when given, and the chunk property (two
  T-step chunks carrying ``h_n`` → ``h_0`` equal one 2T-step PyTorch run). It
  returns a :class:`ValidationReport` and raises
  :class:`~prernn_cli.errors.ShapeMismatchError` or
  :class:`~prernn_cli.errors.ToleranceError`; the CLI decides how loud they are.

The graph: input ``frames`` ``[batch, T, *step]``, per recurrent layer ``i``
inputs ``h_0.i`` (and ``c_0.i`` for LSTM) ``[batch, hidden]``; outputs
``outputs`` ``[batch, T, K]`` and ``h_n.i`` (``c_n.i``). The model's forward loops
over T in Python, so the exported graph is unrolled for a fixed T (``steps``);
``steps=1`` is the streaming step model. Batch is dynamic unless fixed.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import io
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from prernn_cli.checkpoint import load_converted
from prernn_cli.data import read_clip_steps
from prernn_cli.errors import (
    ExportError,
    ExportValidationError,
    PrernnError,
    ShapeMismatchError,
    ToleranceError,
    UserInputError,
)
from prernn_cli.files import check_writable_output
from prernn_cli.spec import SPEC_METADATA_KEY, CellType, ModelSpec

logger = logging.getLogger(__name__)

__all__ = [
    "Precision",
    "OnnxExportSpec",
    "OnnxStateModule",
    "OutputComparison",
    "ValidationReport",
    "ExportResult",
    "EXPORT_METADATA_KEY",
    "opset_range",
    "default_opset",
    "parse_batch",
    "state_input_names",
    "state_output_names",
    "flatten_state",
    "unflatten_state",
    "read_export_spec",
    "load_model_for_export",
    "export_onnx",
    "validate_onnx",
    "default_output",
    "export_file",
    "validate_file",
]

#: ``metadata_props`` key holding the :class:`OnnxExportSpec` JSON.
EXPORT_METADATA_KEY = "prernn_onnx"
#: Weights beyond this size go to an external data file (protobuf's 2 GB limit, with a margin).
EXTERNAL_DATA_BYTES = 1_900_000_000
#: Batch of the example inputs for a dynamic-batch export (not 1: torch.export specialises 0/1).
_EXAMPLE_BATCH = 2
#: Batch the validation runs a dynamic-batch model with: different from the export's example.
_VALIDATION_BATCH = 3


class Precision(str, Enum):
    """Precision of the exported weights and compute."""

    FP32 = "fp32"
    FP16 = "fp16"  # for GPU runtimes; onnxruntime's CPU provider runs it too, slowly

    @property
    def torch_dtype(self) -> torch.dtype:
        return torch.float16 if self is Precision.FP16 else torch.float32

    @property
    def numpy_dtype(self) -> type:
        return np.float16 if self is Precision.FP16 else np.float32


#: Default tolerances per precision: an output passes where |onnx - torch| <= atol + rtol * |torch|,
#: element-wise, torch being the fp32 PyTorch model in both cases.
DEFAULT_TOLERANCE: dict[Precision, tuple[float, float]] = {
    Precision.FP32: (1e-4, 1e-3),
    Precision.FP16: (2e-2, 2e-2),
}


# ---------------------------------------------------------------- opsets


def _exporter_opset_range() -> tuple[int, int]:
    """Opsets the installed exporter (torch + onnxscript) can write."""
    try:
        from torch.onnx._internal.exporter._constants import TORCHLIB_OPSET as low
    except ImportError:  # pragma: no cover - layout of a future torch
        low = 18
    try:  # the dynamo exporter converts torchlib's opset up to what onnxscript's converter knows
        from onnxscript.version_converter._version_converter import SUPPORTED_MAX_ONNX_OPSET as high
    except ImportError:  # pragma: no cover
        from torch.onnx._constants import ONNX_MAX_OPSET as high
    import onnx

    return int(low), int(min(high, onnx.defs.onnx_opset_version()))


def _runtime_accepts_opset(opset: int) -> bool:
    """Whether onnxruntime loads a one-node model declaring ``opset`` for the default domain."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    value = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", [value], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    opset_id = helper.make_opsetid("", opset)
    model = helper.make_model(graph, opset_imports=[opset_id], ir_version=helper.find_min_ir_version_for([opset_id]))
    options = ort.SessionOptions()
    options.log_severity_level = 4
    try:
        ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception:  # noqa: BLE001 - onnxruntime raises its own untyped errors
        return False
    return True


@functools.lru_cache(maxsize=1)
def opset_range() -> tuple[int, int]:
    """The opsets both the installed exporter and onnxruntime support: ``(lowest, newest)``.

    The exporter's range comes from torch (torchlib's native opset) and onnxscript's
    version converter; onnxruntime's newest is found by asking it to load a tiny model.
    """
    low, high = _exporter_opset_range()
    while high > low and not _runtime_accepts_opset(high):
        high -= 1
    logger.debug("supported opsets: %d..%d", low, high)
    return low, high


def default_opset() -> int:
    """The newest opset the installed exporter and onnxruntime both support."""
    return opset_range()[1]


def parse_batch(text: str | int | None) -> int | None:
    """``"dynamic"`` (or None) → None; a positive integer → that fixed batch size."""
    if text is None:
        return None
    if isinstance(text, int):
        value = text
    elif str(text).strip().lower() == "dynamic":
        return None
    else:
        try:
            value = int(str(text))
        except ValueError:
            raise ExportError(f"--batch must be 'dynamic' or a positive integer, not {text!r}") from None
    if value < 1:
        raise ExportError(f"--batch must be 'dynamic' or a positive integer, not {value}")
    return value


# ---------------------------------------------------------------- names and state layout


def state_input_names(model_spec: ModelSpec) -> list[str]:
    """``h_0.0``, ``c_0.0`` (LSTM), ``h_0.1``, ... in model order."""
    return _state_names(model_spec, "0")


def state_output_names(model_spec: ModelSpec) -> list[str]:
    """``h_n.0``, ``c_n.0`` (LSTM), ``h_n.1``, ... in model order."""
    return _state_names(model_spec, "n")


def _state_names(model_spec: ModelSpec, suffix: str) -> list[str]:
    names = []
    for index in range(len(model_spec.layers)):
        names.append(f"h_{suffix}.{index}")
        if model_spec.cell.has_cell_state:
            names.append(f"c_{suffix}.{index}")
    return names


def flatten_state(state: Sequence) -> list[Tensor]:
    """A model's state list (``h`` or ``(h, c)`` per layer) → flat ``[h0, (c0,) h1, ...]``."""
    flat: list[Tensor] = []
    for entry in state:
        if isinstance(entry, (tuple, list)):
            flat.extend(entry)
        else:
            flat.append(entry)
    return flat


def unflatten_state(flat: Sequence[Tensor], cell: CellType) -> list:
    """Inverse of :func:`flatten_state` for ``cell``."""
    if cell.has_cell_state:
        if len(flat) % 2:
            raise ValueError(f"an LSTM state needs (h, c) pairs, got {len(flat)} tensors")
        return [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]
    return list(flat)


class OnnxStateModule(nn.Module):
    """A :class:`~prernn_cli.model.RecurrentModel` with the ONNX graph's flat inputs and outputs.

    ``forward(frames, h_0.0, [c_0.0,] h_0.1, ...) -> (outputs, h_n.0, [c_n.0,] ...)``.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.cell = model.spec.cell

    def forward(self, frames: Tensor, *flat_state: Tensor) -> tuple[Tensor, ...]:
        outputs, state = self.model(frames, unflatten_state(flat_state, self.cell))
        return (outputs, *flatten_state(state))


# ---------------------------------------------------------------- the export spec


@dataclass(frozen=True)
class OnnxExportSpec:
    """Everything about an export that is not the weights: names, axes, opset, tolerance."""

    model_spec: ModelSpec
    steps: int  # T, the unrolled length
    opset: int
    batch: int | None = None  # None: dynamic
    precision: Precision = Precision.FP32
    atol: float = DEFAULT_TOLERANCE[Precision.FP32][0]
    rtol: float = DEFAULT_TOLERANCE[Precision.FP32][1]

    @classmethod
    def create(
        cls,
        model_spec: ModelSpec,
        *,
        steps: int = 16,
        opset: int | None = None,
        batch: int | str | None = None,
        half: bool = False,
        atol: float | None = None,
        rtol: float | None = None,
    ) -> "OnnxExportSpec":
        """Check the request and fill in defaults (opset, tolerance per precision)."""
        if steps < 1:
            raise ExportError(f"--steps must be at least 1 (1 gives the streaming step model), not {steps}")
        low, high = opset_range()
        if opset is None:
            opset = high
        elif not low <= opset <= high:
            raise ExportError(f"opset {opset} is outside the range the installed exporter and onnxruntime support ({low}..{high}); pass --opset between them or leave it out for {high}")
        precision = Precision.FP16 if half else Precision.FP32
        default_atol, default_rtol = DEFAULT_TOLERANCE[precision]
        for name, value in (("--atol", atol), ("--rtol", rtol)):
            if value is not None and not value > 0:
                raise ExportError(f"{name} must be a positive number, not {value}")
        return cls(
            model_spec=model_spec,
            steps=int(steps),
            opset=int(opset),
            batch=parse_batch(batch),
            precision=precision,
            atol=float(atol if atol is not None else default_atol),
            rtol=float(rtol if rtol is not None else default_rtol),
        )

    # names and shapes -------------------------------------------------------
    @property
    def state_inputs(self) -> list[str]:
        return state_input_names(self.model_spec)

    @property
    def state_outputs(self) -> list[str]:
        return state_output_names(self.model_spec)

    @property
    def input_names(self) -> list[str]:
        return ["frames", *self.state_inputs]

    @property
    def output_names(self) -> list[str]:
        return ["outputs", *self.state_outputs]

    @property
    def dynamic_batch(self) -> bool:
        return self.batch is None

    @property
    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """Axis names per input/output (ONNX ``dim_param``); empty for a fixed batch."""
        if not self.dynamic_batch:
            return {}
        return {name: {0: "batch"} for name in (*self.input_names, *self.output_names)}

    def hidden_sizes(self) -> list[int]:
        """Size of each state tensor, in :attr:`state_inputs` order."""
        sizes = []
        for layer in self.model_spec.layers:
            sizes += [layer.hidden_size] * (2 if self.model_spec.cell.has_cell_state else 1)
        return sizes

    def input_shapes(self, batch: int, steps: int | None = None) -> dict[str, tuple[int, ...]]:
        steps = self.steps if steps is None else steps
        shapes = {"frames": (batch, steps, *self.model_spec.input.step_shape())}
        for name, size in zip(self.state_inputs, self.hidden_sizes()):
            shapes[name] = (batch, size)
        return shapes

    def output_shapes(self, batch: int, num_outputs: int) -> dict[str, tuple[int, ...]]:
        shapes = {"outputs": (batch, self.steps, num_outputs)}
        for name, size in zip(self.state_outputs, self.hidden_sizes()):
            shapes[name] = (batch, size)
        return shapes

    # metadata ---------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "steps": self.steps,
            "opset": self.opset,
            "batch": "dynamic" if self.batch is None else self.batch,
            "precision": self.precision.value,
            "atol": self.atol,
            "rtol": self.rtol,
            "inputs": self.input_names,
            "outputs": self.output_names,
            "dynamic_axes": {name: {str(k): v for k, v in axes.items()} for name, axes in self.dynamic_axes.items()},
        }

    def metadata(self) -> dict[str, str]:
        """The ONNX ``metadata_props``: the converted layers, cell, design, classes, preprocessing, and both specs."""
        spec = self.model_spec
        return {
            "prernn.layers": json.dumps([layer.name for layer in spec.layers]),
            "prernn.cell": spec.cell.value,
            "prernn.sih": json.dumps(spec.sih),
            "prernn.traditional": json.dumps(spec.traditional),
            "prernn.design": spec.design.value,
            "prernn.base_architecture": spec.base_architecture,
            "prernn.class_names": json.dumps(list(spec.class_names) if spec.class_names else None),
            "prernn.task": spec.task or "",
            "prernn.preprocessing": json.dumps(spec.input.to_dict(), sort_keys=True),
            "prernn.steps": str(self.steps),
            "prernn.batch": "dynamic" if self.batch is None else str(self.batch),
            "prernn.precision": self.precision.value,
            SPEC_METADATA_KEY: spec.to_json(),
            EXPORT_METADATA_KEY: json.dumps(self.to_dict(), sort_keys=True),
        }

    @classmethod
    def from_metadata(cls, metadata: dict[str, str], source: str = "the ONNX file") -> "OnnxExportSpec":
        if SPEC_METADATA_KEY not in metadata or EXPORT_METADATA_KEY not in metadata:
            raise UserInputError(f"{source} was not written by `prernn export` (no prernn metadata); export it with `prernn export MODEL --onnx`")
        try:
            model_spec = ModelSpec.from_json(metadata[SPEC_METADATA_KEY])
            data = json.loads(metadata[EXPORT_METADATA_KEY])
            return cls(
                model_spec=model_spec,
                steps=int(data["steps"]),
                opset=int(data["opset"]),
                batch=parse_batch(data["batch"]),
                precision=Precision(data["precision"]),
                atol=float(data["atol"]),
                rtol=float(data["rtol"]),
            )
        except (ValueError, KeyError, TypeError) as error:
            raise UserInputError(f"{source} has unreadable prernn metadata ({error}); export it again with `prernn export MODEL --onnx`") from None


def read_export_spec(onnx_path: Path) -> OnnxExportSpec:
    """The :class:`OnnxExportSpec` stored in an exported file (weights are not read)."""
    import onnx

    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise UserInputError(f"{onnx_path} does not exist; give the path of a .onnx file written by `prernn export`")
    try:
        proto = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as error:  # noqa: BLE001 - protobuf raises a variety of errors
        raise UserInputError(f"{onnx_path} is not an ONNX file ({type(error).__name__}); give a .onnx file written by `prernn export`") from None
    return OnnxExportSpec.from_metadata({p.key: p.value for p in proto.metadata_props}, source=str(onnx_path))


# ---------------------------------------------------------------- loading the model to export


def load_model_for_export(path: Path) -> nn.Module:
    """Load a converted model, or say what to run first when ``path`` is not one."""
    path = Path(path)
    if not path.exists():
        raise UserInputError(f"{path} does not exist; give a converted model (.safetensors written by `prernn convert`)")
    if path.is_dir():
        raise UserInputError(f"{path} is a folder; give a converted model (.safetensors written by `prernn convert`)")
    if not _has_prernn_spec(path):
        raise ExportError(f"{path} is not a converted prernn model; run `prernn convert {path} --layer LAYER -o model.safetensors` first and export that")
    return load_converted(path)


def _has_prernn_spec(path: Path) -> bool:
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            return SPEC_METADATA_KEY in (handle.metadata() or {})
    except Exception:  # noqa: BLE001 - not a safetensors file at all
        return False


# ---------------------------------------------------------------- validation


@dataclass(frozen=True)
class OutputComparison:
    """One output of one check: onnxruntime vs PyTorch."""

    check: str  # "random", "clip" or "chunks"
    output: str
    shape: tuple[int, ...]
    max_abs: float
    max_rel: float  # max |onnx - torch| / max |torch|
    atol: float
    rtol: float
    passed: bool

    def to_dict(self) -> dict:
        return {**self.__dict__, "shape": list(self.shape)}


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
        return max(failing, key=lambda c: c.max_abs / (c.atol + c.rtol), default=None)

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


def _session(onnx_path: Path, threads: int | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # noqa: BLE001
        raise ExportValidationError(f"onnxruntime cannot load {onnx_path}: {str(error).splitlines()[0][:300]}") from None


def _compare(check: str, name: str, got: np.ndarray, expected: Tensor, atol: float, rtol: float) -> OutputComparison:
    ref = expected.detach().to(torch.float64).cpu().numpy()
    got64 = np.asarray(got, dtype=np.float64)
    if got64.shape != ref.shape:
        raise ShapeMismatchError(f"ONNX output '{name}' ({check} inputs) has shape {list(got64.shape)}, PyTorch gives {list(ref.shape)}")
    diff = np.abs(got64 - ref)
    finite = np.isfinite(got64).all()
    max_abs = float(diff.max()) if diff.size else 0.0
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    passed = bool(finite and np.all(diff <= atol + rtol * np.abs(ref)))
    if not finite:
        max_abs = max_rel = float("inf")
    return OutputComparison(check, name, tuple(ref.shape), max_abs, max_rel, atol, rtol, passed)


def _run(session, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


def _torch_run(model: nn.Module, frames: Tensor, flat_state: list[Tensor]) -> list[Tensor]:
    with torch.no_grad():
        return list(OnnxStateModule(model)(frames, *flat_state))


def _random_inputs(spec: OnnxExportSpec, batch: int, steps: int, generator: torch.Generator) -> tuple[Tensor, list[Tensor]]:
    shapes = spec.input_shapes(batch, steps)
    frames = torch.randn(shapes["frames"], generator=generator)
    state = [0.5 * torch.randn(shapes[name], generator=generator) for name in spec.state_inputs]
    return frames, state


def _feeds(spec: OnnxExportSpec, frames: Tensor, state: list[Tensor]) -> dict[str, np.ndarray]:
    dtype = spec.precision.numpy_dtype
    feeds = {"frames": frames.numpy().astype(dtype)}
    feeds.update({name: s.numpy().astype(dtype) for name, s in zip(spec.state_inputs, state)})
    return feeds


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
        ToleranceError: an output differs beyond ``atol + rtol * |torch|``; the
            report is attached as ``error.report``.
    """
    import onnx

    onnx_path = Path(onnx_path)
    spec = read_export_spec(onnx_path)
    atol = spec.atol if atol is None else float(atol)
    rtol = spec.rtol if rtol is None else float(rtol)
    if atol <= 0 or rtol < 0:
        raise UserInputError(f"tolerances must be positive (atol {atol}, rtol {rtol})")
    notes: list[str] = []

    try:
        onnx.checker.check_model(str(onnx_path), full_check=True)
    except Exception as error:  # noqa: BLE001 - onnx raises ValidationError and friends
        raise ExportValidationError(f"onnx.checker rejects {onnx_path}: {str(error).splitlines()[0][:300]}") from None

    session = _session(onnx_path, threads)
    got_inputs = [i.name for i in session.get_inputs()]
    got_outputs = [o.name for o in session.get_outputs()]
    if got_inputs != spec.input_names or got_outputs != spec.output_names:
        raise ShapeMismatchError(f"{onnx_path} has inputs {got_inputs} and outputs {got_outputs}; SPEC §5 needs {spec.input_names} and {spec.output_names}")

    batch = spec.batch or _VALIDATION_BATCH
    generator = torch.Generator().manual_seed(seed)
    report_args = dict(path=str(onnx_path), opset=spec.opset, precision=spec.precision, steps=spec.steps, batch=spec.batch, checker=True)

    if reference is None:
        frames, state = _random_inputs(spec, batch, spec.steps, generator)
        outputs = _run(session, _feeds(spec, frames, state))
        num_outputs = outputs["outputs"].shape[-1]
        for name, shape in spec.output_shapes(batch, num_outputs).items():
            if outputs[name].shape != shape:
                raise ShapeMismatchError(f"ONNX output '{name}' has shape {list(outputs[name].shape)}, expected {list(shape)}")
            if not np.isfinite(outputs[name]).all():
                raise ToleranceError(f"ONNX output '{name}' holds NaN or infinity on random inputs")
        notes.append("no PyTorch model given (--against): checked structure, shapes and finiteness only")
        return ValidationReport(**report_args, compared_with_pytorch=False, notes=tuple(notes))

    _check_same_model(reference.spec, spec.model_spec, onnx_path)
    was_training = reference.training
    reference.eval()
    comparisons: list[OutputComparison] = []
    try:
        # 1. random frames and state
        frames, state = _random_inputs(spec, batch, spec.steps, generator)
        expected = _torch_run(reference, frames, state)
        got = _run(session, _feeds(spec, frames, state))
        comparisons += [_compare("random", name, got[name], value, atol, rtol) for name, value in zip(spec.output_names, expected)]

        # 2. real frames, zero state
        if clip_steps is not None:
            clip = torch.as_tensor(np.asarray(clip_steps), dtype=torch.float32)
            if tuple(clip.shape[1:]) != spec.model_spec.input.step_shape():
                raise UserInputError(f"the validation clip has steps of shape {list(clip.shape[1:])}; the model expects {list(spec.model_spec.input.step_shape())}")
            index = torch.arange(spec.steps) % clip.shape[0]  # repeat a short clip
            clip_frames = clip[index].unsqueeze(0).expand(spec.batch or 1, *clip[index].shape).contiguous()
            zero = [torch.zeros(s) for name, s in spec.input_shapes(clip_frames.shape[0]).items() if name != "frames"]
            expected = _torch_run(reference, clip_frames, zero)
            got = _run(session, _feeds(spec, clip_frames, zero))
            comparisons += [_compare("clip", name, got[name], value, atol, rtol) for name, value in zip(spec.output_names, expected)]
        else:
            notes.append("no clip given: compared on random frames only")

        # 3. chunk property: two T-step chunks carrying the state == one 2T-step PyTorch run
        frames, state = _random_inputs(spec, batch, 2 * spec.steps, generator)
        expected = _torch_run(reference, frames, state)
        first = _run(session, _feeds(spec, frames[:, : spec.steps], state))
        carried = [torch.from_numpy(first[name].astype(np.float32)) for name in spec.state_outputs]
        second = _run(session, _feeds(spec, frames[:, spec.steps :], carried))
        joined = {"outputs": np.concatenate([first["outputs"], second["outputs"]], axis=1)}
        joined.update({name: second[name] for name in spec.state_outputs})
        comparisons += [_compare("chunks", name, joined[name], value, atol, rtol) for name, value in zip(spec.output_names, expected)]
    finally:
        reference.train(was_training)

    report = ValidationReport(**report_args, compared_with_pytorch=True, comparisons=tuple(comparisons), notes=tuple(notes))
    if not report.passed:
        worst = report.worst()
        error = ToleranceError(
            f"ONNX output '{worst.output}' ({worst.check} inputs) differs from PyTorch by max abs {worst.max_abs:.3g} (rel {worst.max_rel:.3g}), "
            f"beyond atol {worst.atol:g} + rtol {worst.rtol:g}·|torch|"
        )
        error.report = report
        raise error
    return report


def _check_same_model(reference: ModelSpec, exported: ModelSpec, onnx_path: Path) -> None:
    fields = ("base_architecture", "layers", "cell", "sih", "traditional", "input")
    differ = [name for name in fields if getattr(reference, name) != getattr(exported, name)]
    if differ:
        raise UserInputError(f"the PyTorch model is not the one {onnx_path} was exported from ({', '.join(differ)} differ); pass the converted model it came from")


# ---------------------------------------------------------------- export


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
    subject = copy.deepcopy(model).to(dtype) if spec.precision is Precision.FP16 else model
    wrapper = OnnxStateModule(subject).eval()

    example_batch = spec.batch or _EXAMPLE_BATCH
    shapes = spec.input_shapes(example_batch)
    args = tuple(torch.zeros(shapes[name], dtype=dtype) for name in spec.input_names)
    dynamic_shapes = None
    if spec.dynamic_batch:
        batch_dim = torch.export.Dim("batch", min=1)
        dynamic_shapes = ({0: batch_dim}, tuple({0: batch_dim} for _ in spec.state_inputs))

    logger.info("exporting %s (T=%d, opset %d, %s, batch %s)", output, spec.steps, spec.opset, spec.precision.value, spec.batch or "dynamic")
    started = time.perf_counter()
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
    except Exception as error:  # noqa: BLE001 - torch.export raises many kinds
        message = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
        raise PrernnError(f"torch.onnx.export failed on this model: {message}") from error
    finally:
        model.train(was_training)
    for key, value in spec.metadata().items():
        program.model.metadata_props[key] = value
    export_seconds = time.perf_counter() - started

    external = _parameter_bytes(subject, dtype) > EXTERNAL_DATA_BYTES
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        staged = staging / output.name
        with _quiet_exporter():
            program.save(staged, external_data=external)
        report = None
        if validate:
            try:
                report = validate_onnx(staged, model, atol=spec.atol, rtol=spec.rtol, clip_steps=clip_steps, threads=threads)
            except ExportValidationError as error:
                if keep_invalid:
                    _move_all(staging, output.parent)
                    suffix = f"kept the invalid file {output} (--keep-invalid)"
                else:
                    suffix = "nothing was written (pass --keep-invalid to keep it, or a larger --atol)"
                louder = type(error)(f"{error}; {suffix}")
                louder.report = getattr(error, "report", None)
                raise louder from None
        files = _move_all(staging, output.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    size = sum(f.stat().st_size for f in files)
    if report is not None:
        report = ValidationReport(**{**report.__dict__, "path": str(output)})
    return ExportResult(output, spec, size, external, export_seconds, report, tuple(files))


def _move_all(staging: Path, destination: Path) -> list[Path]:
    moved = []
    for entry in sorted(staging.iterdir()):
        target = destination / entry.name
        os.replace(entry, target)
        moved.append(target)
    return moved


# ---------------------------------------------------------------- file-level entry points (what the CLI calls)


def default_output(model_path: Path, half: bool = False, steps: int | None = None) -> Path:
    """``model.safetensors`` → ``model.onnx`` (``model.step.onnx`` for T=1, ``.fp16`` added for --half)."""
    model_path = Path(model_path)
    parts = [model_path.stem]
    if steps == 1:
        parts.append("step")
    if half:
        parts.append("fp16")
    return model_path.with_name(".".join(parts) + ".onnx")


def _clip_steps(clip: Path | None, model_spec: ModelSpec, resize: bool = False) -> np.ndarray | None:
    if clip is None:
        return None
    steps, _ = read_clip_steps(Path(clip), model_spec.input, resize=resize)
    return steps


def export_file(
    model_path: Path,
    output: Path | None = None,
    *,
    steps: int = 16,
    opset: int | None = None,
    half: bool = False,
    batch: str | int | None = None,
    atol: float | None = None,
    rtol: float | None = None,
    clip: Path | None = None,
    resize: bool = False,
    keep_invalid: bool = False,
) -> ExportResult:
    """``prernn export MODEL --onnx``: load a converted model, export it, validate it (on ``clip`` too)."""
    if steps < 1:  # before loading anything: the cheapest mistake to report
        raise ExportError(f"--steps must be at least 1 (1 gives the streaming step model), not {steps}")
    model_path = Path(model_path)
    output = Path(output) if output is not None else default_output(model_path, half, steps)
    if output.is_dir():
        raise ExportError(f"output path {output} is a directory; give a file name, e.g. -o {output / 'model.onnx'}")
    check_writable_output(output)
    model = load_model_for_export(model_path)
    spec = OnnxExportSpec.create(model.spec, steps=steps, opset=opset, batch=batch, half=half, atol=atol, rtol=rtol)
    clip_steps = _clip_steps(clip, model.spec, resize)
    return export_onnx(model, output, spec, clip_steps=clip_steps, keep_invalid=keep_invalid)


def validate_file(
    onnx_path: Path,
    against: Path | None = None,
    *,
    clip: Path | None = None,
    resize: bool = False,
    atol: float | None = None,
    rtol: float | None = None,
) -> ValidationReport:
    """``prernn validate MODEL.onnx [--against MODEL]``."""
    spec = read_export_spec(Path(onnx_path))
    reference = load_model_for_export(Path(against)) if against is not None else None
    if clip is not None and reference is None:
        raise UserInputError("--clip compares with PyTorch, which needs --against MODEL (the converted model it was exported from)")
    clip_steps = _clip_steps(clip, spec.model_spec, resize)
    return validate_onnx(Path(onnx_path), reference, atol=atol, rtol=rtol, clip_steps=clip_steps)
