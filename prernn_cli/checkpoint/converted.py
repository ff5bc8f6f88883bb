"""Our converted-model format: one safetensors file, the model's spec in its metadata (SPEC §5).

Loading unpickles nothing: the base architecture is built on the meta device, converted
as the stored :class:`~prernn_cli.spec.ModelSpec` says, then every tensor (pretrained and
recurrent) is loaded strictly from the file.
"""

from __future__ import annotations

from pathlib import Path

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from prernn_cli.architectures import build_empty_architecture, describe_mismatch
from prernn_cli.checkpoint.formats import CheckpointFormat, detect_format
from prernn_cli.errors import CheckpointError
from prernn_cli.files import atomic_path
from prernn_cli.model import RecurrentModel, build_recurrent_model
from prernn_cli.spec import SPEC_METADATA_KEY, ModelSpec

__all__ = ["PRERNN_FORMAT", "load_converted", "read_spec", "save_converted"]

PRERNN_FORMAT = "prernn"  # the "format" entry of the file's metadata


def read_spec(path: Path) -> ModelSpec:
    """The :class:`~prernn_cli.spec.ModelSpec` stored in a converted model's metadata.

    Raises:
        CheckpointError: an unreadable file, no spec, or a spec this version cannot read.
    """
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError) as error:
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({error}); give a model saved by prernn"
        ) from error
    if SPEC_METADATA_KEY not in metadata:
        raise CheckpointError(
            f"{path} holds weights but no prernn model spec; convert a network first (prernn convert)"
        )
    try:
        return ModelSpec.from_json(metadata[SPEC_METADATA_KEY])
    except (ValueError, KeyError, TypeError) as error:
        raise CheckpointError(
            f"{path} has an unreadable prernn spec ({error}); save the model again with this version of prernn"
        ) from error


def _empty_model(path: Path, spec: ModelSpec) -> RecurrentModel:
    """The converted structure of ``spec`` on the meta device: every tensor then comes from the file."""
    base = build_empty_architecture(spec.base_architecture, num_classes=spec.base_num_classes)
    try:
        return build_recurrent_model(base, spec)
    except (ValueError, KeyError, IndexError, AttributeError) as error:
        # A spec that does not fit its architecture: a layer it lacks (KeyError), of another kind
        # (AttributeError), no layer at all (IndexError), sizes or an input it refuses (ValueError).
        raise CheckpointError(
            f"{path}: cannot rebuild the converted {spec.base_architecture} ({type(error).__name__}: {error}); save it again with this version of prernn"
        ) from error


def load_converted(path: Path | str) -> RecurrentModel:
    """Rebuild a converted model from our safetensors file, unpickling nothing (SPEC §5).

    Raises:
        CheckpointError: not a converted model, an unreadable spec, or weights that do not fit it.
    """
    path = Path(path)
    fmt = detect_format(path)
    if fmt is not CheckpointFormat.PRERNN:
        raise CheckpointError(
            f"{path} is a {fmt.value} checkpoint, not a converted prernn model; convert it first: "
            f"prernn convert {path} --layer LAYER -o model.safetensors"
        )
    model = _empty_model(path, read_spec(path))
    state_dict = load_file(str(path), device="cpu")
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    found = {key: tuple(value.shape) for key, value in state_dict.items()}
    if expected != found:
        raise CheckpointError(
            f"{path}: the weights do not fit its spec: {describe_mismatch(expected, found)}; save the model again"
        )
    model.load_state_dict(state_dict, strict=True, assign=True)
    missing = [name for name, tensor in [*model.named_parameters(), *model.named_buffers()] if tensor.is_meta]
    if missing:
        raise CheckpointError(f"{path}: the file holds no values for {', '.join(missing[:3])}; save the model again")
    return model.eval()


def save_converted(model: RecurrentModel, path: Path | str) -> None:
    """Write ``model`` as one safetensors file with its spec in the metadata (atomic: no half-written file)."""
    tensors = {key: value.detach().to("cpu").contiguous().clone() for key, value in model.state_dict().items()}
    metadata = {"format": PRERNN_FORMAT, SPEC_METADATA_KEY: model.spec.to_json()}
    with atomic_path(Path(path)) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
