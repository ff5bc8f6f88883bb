"""ONNX export of converted models, and its validation (SPEC §5).

Three separate pieces, the way optimum's exporter keeps them:

* :mod:`~prernn_cli.export.spec` — :class:`OnnxExportSpec`, the export as *data*:
  input/output names, dynamic axes, unrolled length T, opset, precision and the
  tolerance its validation uses, written into and read back from the file's metadata.
* :mod:`~prernn_cli.export.exporter` — :func:`export_onnx`: trace, stage in a
  temporary folder, validate, move into place.
* :mod:`~prernn_cli.export.validation` — :func:`validate_onnx`: ``onnx.checker``, then
  onnxruntime against PyTorch; raises typed errors, the CLI decides how loud they are.

:mod:`~prernn_cli.export.runtime` opens onnxruntime sessions and chooses the
execution provider; :mod:`~prernn_cli.export.loading` reads the converted model and clip.
"""

from prernn_cli.export.exporter import ExportResult, default_output, export_file, export_onnx
from prernn_cli.export.loading import load_model_for_export
from prernn_cli.export.spec import (
    EXPORT_METADATA_KEY,
    OnnxExportSpec,
    OnnxStateModule,
    Precision,
    default_opset,
    flatten_state,
    opset_range,
    parse_batch,
    read_export_spec,
    state_input_names,
    state_output_names,
    unflatten_state,
)
from prernn_cli.export.validation import OutputComparison, ValidationReport, validate_file, validate_onnx

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
