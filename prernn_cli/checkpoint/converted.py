"""Our converted-model format: one safetensors file, the model's spec in its metadata (SPEC §5).

Loading unpickles nothing: the base architecture is built on the meta device, converted
as the stored :class:`~prernn_cli.spec.ModelSpec` says, then every tensor (pretrained and
recurrent) is loaded strictly from the file.

Opening a file runs nothing: the architecture the spec names is built from the registry
only. A model built on a user's own class (``package.module:callable`` in its spec) is
rebuilt only when the user names that class (``--arch``, passed here as ``user_class``):
building it imports the class's module and calls it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from prernn_cli.architectures import (
    build_empty_architecture,
    build_registered_architecture,
    describe_mismatch,
    is_registered,
    is_user_callable,
)
from prernn_cli.checkpoint.formats import CheckpointFormat, detect_format
from prernn_cli.checkpoint.tensors import as_float32
from prernn_cli.errors import CheckpointError
from prernn_cli.files import atomic_path, os_error_in
from prernn_cli.model import RecurrentModel, build_recurrent_model
from prernn_cli.spec import SPEC_METADATA_KEY, Modality, ModelSpec
from prernn_cli.surgery.first_conv import with_input_channels

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
        raise CheckpointError(f"{path} is not a prernn model or is corrupt ({error}); save it again") from error
    if SPEC_METADATA_KEY not in metadata:
        raise CheckpointError(
            f"{path} holds weights but no prernn model spec; convert a network first (prernn convert)"
        )
    return _parse_spec(path, metadata[SPEC_METADATA_KEY])


def _parse_spec(path: Path, text: str) -> ModelSpec:
    def corrupt(what: str) -> CheckpointError:
        return CheckpointError(f"{path} is not a prernn model or is corrupt: its spec {what}; save the model again")

    try:
        data = json.loads(text)
    except (TypeError, ValueError) as error:
        raise corrupt(f"is not JSON ({error})") from error
    if not isinstance(data, dict):
        raise corrupt(f"is a JSON {type(data).__name__}, not an object")
    name, classes = data.get("base_architecture"), data.get("base_num_classes")
    if not isinstance(name, str) or not name.strip():
        raise corrupt(f"names no base architecture (base_architecture is {name!r})")
    if classes is not None and (isinstance(classes, bool) or not isinstance(classes, int) or classes < 1):
        raise corrupt(f"has base_num_classes {classes!r}, not a positive whole number")
    try:
        return ModelSpec.from_dict(data)
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        # What reading a spec of the wrong shape raises: a missing key, a value of the wrong type
        # or kind (an entry that should be an object and is a list has no .get), a future version.
        raise CheckpointError(
            f"{path} is not a prernn model or is corrupt: unreadable spec ({type(error).__name__}: {error}); "
            "save the model again with this version of prernn"
        ) from error


def _check_user_class(path: Path, spec: ModelSpec, user_class: Optional[str]) -> None:
    """Refuse to rebuild ``spec`` unless its architecture is registered or is the user class the user named.

    Raises:
        CheckpointError: a user class not named (or another name given), an unknown name.
    """
    name = spec.base_architecture
    if is_registered(name):
        if user_class is not None and user_class != name:
            raise CheckpointError(
                f"{path} is a converted prernn model of {name}, not {user_class}; drop --arch (the file names its architecture)"
            )
        return
    if not is_user_callable(name):
        raise CheckpointError(
            f"{path} names an architecture prernn does not know ({name!r}); save the model again with this version of prernn"
        )
    if user_class != name:
        given = f", not {user_class}," if user_class is not None else ""
        raise CheckpointError(
            f"{path} was built on the user class {name}{given} and opening it would import and run that code; "
            f"pass --arch {name} if you trust it"
        )


def _empty_base(path: Path, spec: ModelSpec, user_class: Optional[str]) -> nn.Module:
    """The base network of ``spec`` on the meta device; a user class only when the user named it."""
    _check_user_class(path, spec, user_class)
    if is_registered(spec.base_architecture):
        return build_registered_architecture(spec.base_architecture, spec.base_num_classes)
    return build_empty_architecture(user_class, num_classes=spec.base_num_classes)  # the user named it: --arch


def _empty_model(path: Path, spec: ModelSpec, user_class: Optional[str]) -> RecurrentModel:
    """The converted structure of ``spec`` on the meta device: every tensor then comes from the file."""
    base = _empty_base(path, spec, user_class)
    try:
        if spec.input.modality is not Modality.RGB:  # a depth or flow stream: its first convolution's channels
            base = with_input_channels(base, spec.input.channels, init=False)
        return build_recurrent_model(base, spec)
    except (ValueError, KeyError, IndexError, AttributeError) as error:
        # A spec that does not fit its architecture: a layer it lacks (KeyError), of another kind
        # (AttributeError), no layer at all (IndexError), sizes or an input it refuses (ValueError).
        raise CheckpointError(
            f"{path}: cannot rebuild the converted {spec.base_architecture} ({type(error).__name__}: {error}); save it again with this version of prernn"
        ) from error


def load_converted(path: Path | str, user_class: Optional[str] = None) -> RecurrentModel:
    """Rebuild a converted model from our safetensors file, unpickling nothing and importing nothing (SPEC §5).

    Args:
        path: the converted model.
        user_class: the ``package.module:callable`` the user approved on the command line (``--arch``);
            a model built on a user class is refused unless it is this one, since building it runs
            the class's code. ``None`` for the registered architectures.

    Raises:
        CheckpointError: not a converted model, an unreadable spec, a user class not approved, or
            weights that do not fit it.
    """
    path = Path(path)
    fmt = detect_format(path)
    if fmt is not CheckpointFormat.PRERNN:
        raise CheckpointError(
            f"{path} is a {fmt.value} checkpoint, not a converted prernn model; convert it first: "
            f"prernn convert {path} --layer LAYER -o model.safetensors"
        )
    model = _empty_model(path, read_spec(path), user_class)
    try:
        state_dict = as_float32(load_file(str(path), device="cpu"), path)
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{path} is not a prernn model or is corrupt ({error}); save it again") from error
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
        try:
            save_file(tensors, str(tmp), metadata=metadata)
        except SafetensorError as error:  # a full disk reads "(os error 28)": atomic_path names the file and cause
            raise (os_error_in(error) or error) from None
