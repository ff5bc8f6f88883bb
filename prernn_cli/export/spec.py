"""The ONNX export as data (SPEC §5): precision, opset, batch, state names, tolerances.

:class:`OnnxExportSpec` holds everything about an export that is not the weights:
input/output names, dynamic axes, the unrolled length T, opset, precision and the
tolerance its validation uses. It is written into the ONNX file's
``metadata_props`` (:meth:`OnnxExportSpec.metadata`) and read back from it
(:func:`read_export_spec`).

The graph: input ``frames`` ``[batch, T, *step]``, per recurrent layer ``i``
inputs ``h_0.i`` (and ``c_0.i`` for LSTM) ``[batch, hidden]``; outputs
``outputs`` ``[batch, T, K]`` and ``h_n.i`` (``c_n.i``). :class:`OnnxStateModule`
gives a model exactly that flat signature; the exporter traces it and the
validation runs the PyTorch reference through it.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from torch import Tensor, nn

from prernn_cli.errors import ExportError, UserInputError
from prernn_cli.export.runtime import runtime_accepts_opset
from prernn_cli.spec import SPEC_METADATA_KEY, CellType, ModelSpec

logger = logging.getLogger(__name__)

#: ``metadata_props`` key holding the :class:`OnnxExportSpec` JSON.
EXPORT_METADATA_KEY = "prernn_onnx"
#: ``metadata_props`` key of a late-fusion graph (:mod:`prernn_cli.export.fused`), which has no single model spec.
FUSION_METADATA_KEY = "prernn_fusion"


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


#: Default tolerances per precision: an output passes where every element has
#: |onnx - torch| <= atol + rtol * max|torch|, the max over that output, torch being the fp32
#: PyTorch model in both cases.
DEFAULT_TOLERANCE: dict[Precision, tuple[float, float]] = {
    Precision.FP32: (1e-4, 1e-3),
    Precision.FP16: (2e-2, 2e-2),
}


# ---------------------------------------------------------------- opsets and batch


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


@functools.lru_cache(maxsize=1)
def opset_range() -> tuple[int, int]:
    """The opsets both the installed exporter and onnxruntime support: ``(lowest, newest)``.

    The exporter's range comes from torch (torchlib's native opset) and onnxscript's
    version converter; onnxruntime's newest is found by asking it to load a tiny model.
    """
    low, high = _exporter_opset_range()
    while high > low and not runtime_accepts_opset(high):
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
    ) -> OnnxExportSpec:
        """Check the request and fill in defaults (opset, tolerance per precision)."""
        if steps < 1:
            raise ExportError(f"--steps must be at least 1 (1 gives the streaming step model), not {steps}")
        low, high = opset_range()
        if opset is None:
            opset = high
        elif not low <= opset <= high:
            raise ExportError(
                f"opset {opset} is outside the range the installed exporter and onnxruntime support ({low}..{high}); pass --opset between them or leave it out for {high}"
            )
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
    def from_metadata(cls, metadata: dict[str, str], source: str = "the ONNX file") -> OnnxExportSpec:
        if FUSION_METADATA_KEY in metadata:
            raise UserInputError(
                f"{source} is a late-fusion graph (`prernn export --fuse`), validated when it was written; "
                "give a single model's export here"
            )
        if SPEC_METADATA_KEY not in metadata or EXPORT_METADATA_KEY not in metadata:
            raise UserInputError(
                f"{source} was not written by `prernn export` (no prernn metadata); export it with `prernn export MODEL --onnx`"
            )
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
            raise UserInputError(
                f"{source} has unreadable prernn metadata ({error}); export it again with `prernn export MODEL --onnx`"
            ) from None


def read_export_spec(onnx_path: Path) -> OnnxExportSpec:
    """The :class:`OnnxExportSpec` stored in an exported file (weights are not read).

    Raises:
        UserInputError: not an ONNX file, no prernn metadata, or external data outside the file's folder.
    """
    import onnx

    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise UserInputError(f"{onnx_path} does not exist; give the path of a .onnx file written by `prernn export`")
    try:
        proto = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as error:  # noqa: BLE001 - onnx.load picks its parser by suffix (protobuf, JSON, text), each with its own errors; only this call is guarded
        raise UserInputError(
            f"{onnx_path} is not an ONNX file ({type(error).__name__}); give a .onnx file written by `prernn export`"
        ) from None
    check_external_data(proto, onnx_path)
    return OnnxExportSpec.from_metadata({p.key: p.value for p in proto.metadata_props}, source=str(onnx_path))


# ---------------------------------------------------------------- external data


def _graph_tensors(graph) -> Iterator:
    """Every tensor a graph holds: initializers, sparse ones, node attributes, and those of subgraphs."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield from (sparse.values, sparse.indices)
    for node in graph.node:
        yield from _node_tensors(node)


def _node_tensors(node) -> Iterator:
    for attribute in node.attribute:
        if attribute.HasField("t"):
            yield attribute.t
        yield from attribute.tensors
        if attribute.HasField("sparse_tensor"):
            yield from (attribute.sparse_tensor.values, attribute.sparse_tensor.indices)
        if attribute.HasField("g"):
            yield from _graph_tensors(attribute.g)
        for subgraph in attribute.graphs:
            yield from _graph_tensors(subgraph)


def _model_tensors(proto) -> Iterator:
    yield from _graph_tensors(proto.graph)
    for function in proto.functions:
        for node in function.node:
            yield from _node_tensors(node)


def check_external_data(proto, onnx_path: Path) -> None:
    """Refuse a model whose external data lies outside its folder, before anything reads it.

    ``proto`` is the model loaded with ``load_external_data=False``. Each tensor stored
    outside the file names it by ``location``: it must be a relative path without ``..``
    that resolves (symlinks followed) to a file inside ``onnx_path``'s folder; otherwise
    onnx and onnxruntime would read whatever file it names.

    Raises:
        UserInputError: a location is absolute, climbs out, resolves outside, or is missing.
    """
    import onnx

    folder = Path(onnx_path).absolute().parent
    root = folder.resolve()
    for tensor in _model_tensors(proto):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((entry.value for entry in tensor.external_data if entry.key == "location"), "")
        relative = PurePosixPath(location.replace("\\", "/"))
        climbs = not location or "\0" in location or relative.is_absolute() or ".." in relative.parts
        target = None if climbs else (folder / location).resolve()
        if target is None or not target.is_relative_to(root):
            raise UserInputError(
                f"refused {onnx_path}: its tensor {tensor.name!r} names external data at {location!r}, outside the model's folder; "
                "external data must sit beside the .onnx file under a relative name (export the model again)"
            )
        if not target.is_file():
            raise UserInputError(
                f"{onnx_path} needs its external data file {location!r} beside it, and it is missing; copy it next to the .onnx file"
            )
