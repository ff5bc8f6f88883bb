"""Load the network in any checkpoint a user has, as an ``nn.Module`` on its architecture.

Bare weights (a state_dict, possibly nested under ``state_dict``/``model``/… and
prefixed ``module.`` by DDP) are rebuilt on the architecture named by ``arch`` or, when
it is omitted, on the one :func:`~prernn_cli.architectures.match_architecture` finds.
A TorchScript archive or a trusted pickled module is put on its architecture when its
weights fit a known one, and kept as it is otherwise.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

from prernn_cli.architectures import (
    ArchitectureMatch,
    architecture_input,
    build_architecture,
    build_empty_architecture,
    fit_architecture,
    has_known_input,
    match_architecture,
)
from prernn_cli.archives import check_archive
from prernn_cli.checkpoint.converted import load_converted
from prernn_cli.checkpoint.formats import CheckpointFormat, detect_format
from prernn_cli.checkpoint.pickles import load_pickle
from prernn_cli.checkpoint.tensors import as_float32, float32_module, strip_prefix, with_versions
from prernn_cli.checkpoint.training import fit_named, no_ema, training_weights
from prernn_cli.errors import ArchitectureError, CheckpointError
from prernn_cli.spec import InputSpec, ModelSpec

__all__ = ["LoadedCheckpoint", "extract_state_dict", "load_checkpoint"]

logger = logging.getLogger(__name__)

_NESTED_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "network")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP/DataParallel, torch.compile


@dataclass
class LoadedCheckpoint:
    """A loaded network and what is known about it."""

    model: nn.Module
    format: CheckpointFormat
    architecture: Optional[str]  # None when unknown (e.g. a TorchScript archive no known net matches)
    input_spec: InputSpec
    identified: bool = False  # the architecture was identified from the weights (not given with --arch)
    spec: Optional[ModelSpec] = None  # for our converted format
    num_classes: Optional[int] = None  # output size the weights imply, when it differs from the default
    input_known: bool = True  # False when input_spec is an assumption (unknown architecture)
    weights: Optional[str] = None  # the entry of a training checkpoint loaded: "state_dict" or "state_dict_ema"
    other_weights: Optional[str] = None  # the other entry it holds (e.g. EMA weights not asked for)


# ---------------------------------------------------------------- state_dicts


def _is_state_dict(value: Any) -> bool:
    return (
        isinstance(value, Mapping)
        and bool(value)
        and all(isinstance(key, str) for key in value)
        and all(isinstance(item, Tensor) for item in value.values())
    )


def _strip_wrappers(state_dict: Mapping[str, Tensor]) -> Mapping[str, Tensor]:
    result = state_dict  # the loaded mapping itself: it carries its modules' versions (_metadata)
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if result and all(key.startswith(prefix) for key in result):
                result = strip_prefix(result, prefix)
                logger.info("stripped the %r prefix from every key", prefix)
                changed = True
    return result


def extract_state_dict(obj: Any) -> Optional[Mapping[str, Tensor]]:
    """The weights inside a loaded object: itself, or nested under a training script's usual keys.

    Keys prefixed ``module.`` (DDP) or ``_orig_mod.`` (torch.compile) are stripped.
    Returns None when ``obj`` holds no state_dict.
    """
    if _is_state_dict(obj):
        return _strip_wrappers(obj)
    if isinstance(obj, Mapping):
        for key in _NESTED_KEYS:
            if key in obj:
                found = extract_state_dict(obj[key])
                if found is not None:
                    return found
        # A mapping mixing tensors with a few non-tensor entries (e.g. a saved "epoch"): keep the tensors.
        tensors = {key: value for key, value in obj.items() if isinstance(key, str) and isinstance(value, Tensor)}
        if len(tensors) >= 2 and len(tensors) >= len(obj) // 2:
            return _strip_wrappers(tensors)
    return None


# ---------------------------------------------------------------- models on their architecture


def _meta_tensors(model: nn.Module) -> list[str]:
    return [name for name, tensor in [*model.named_parameters(), *model.named_buffers()] if tensor.is_meta]


def _instantiate(path: Path, match: ArchitectureMatch, state_dict: Mapping[str, Tensor]) -> nn.Module:
    """Build ``match`` and load ``state_dict`` (read from ``path``) into it strictly, without a costly random init."""
    state_dict = as_float32(state_dict, path)
    model = build_empty_architecture(match.name, match.num_classes, **match.options)
    try:
        model.load_state_dict(with_versions(state_dict, model), strict=True, assign=True)
        leftover = _meta_tensors(model)
    except RuntimeError:
        leftover = ["?"]
    if leftover:  # non-persistent buffers (or a builder that resists meta): build for real
        model = build_architecture(match.name, match.num_classes, **match.options)
        model.load_state_dict(with_versions(state_dict, model), strict=True, assign=True)
    missing = _meta_tensors(model)
    if missing:
        raise CheckpointError(f"{path}: the file holds no values for {', '.join(missing[:3])}; save the model again")
    return model.eval()


def _model_from_weights(
    path: Path,
    state_dict: Mapping[str, Tensor],
    arch: Optional[str],
    fmt: CheckpointFormat,
    named: Optional[str] = None,
) -> LoadedCheckpoint:
    """Rebuild ``state_dict`` on ``arch`` (the user's), else on ``named`` (the file's, if the weights fit), else identified."""
    if arch is not None:
        match = fit_architecture(arch, state_dict)
    elif named is not None:
        match = fit_named(path, named, state_dict)
    else:
        match = match_architecture(state_dict)
    return LoadedCheckpoint(
        model=_instantiate(path, match, state_dict),
        format=fmt,
        architecture=match.name,
        input_spec=architecture_input(match.name),
        identified=arch is None and match.name != named,
        num_classes=match.num_classes,
        input_known=has_known_input(match.name),
    )


def _unknown_input(architecture: Optional[str]) -> tuple[InputSpec, bool]:
    if architecture is not None and has_known_input(architecture):
        return architecture_input(architecture), True
    return InputSpec(), False


def _from_module(path: Path, module: nn.Module, arch: Optional[str], fmt: CheckpointFormat) -> LoadedCheckpoint:
    """A loaded module (TorchScript or unpickled): put it on its architecture when that is known."""
    weights = {key: value for key, value in module.state_dict().items() if isinstance(value, Tensor)}
    match: Optional[ArchitectureMatch] = None
    if arch is not None:
        match = fit_architecture(arch, weights)
    elif weights:
        try:
            match = match_architecture(weights)
        except CheckpointError as error:
            logger.info("architecture of %s not identified: %s", path, error)
    if match is not None and fmt is CheckpointFormat.TORCHSCRIPT:
        # A TorchScript module cannot be traced by torch.fx; the same weights on the Python class can.
        loaded = _model_from_weights(path, weights, match.name if arch is None else arch, fmt)
        loaded.identified = arch is None
        return loaded
    if match is not None:
        return LoadedCheckpoint(
            float32_module(module, path).eval(),
            fmt,
            match.name,
            architecture_input(match.name),
            identified=arch is None,
            num_classes=match.num_classes,
            input_known=has_known_input(match.name),
        )
    name = None if fmt is CheckpointFormat.TORCHSCRIPT else f"{type(module).__module__}:{type(module).__qualname__}"
    input_spec, known = _unknown_input(name)
    module = float32_module(module, path)
    return LoadedCheckpoint(module.eval(), fmt, name, input_spec, identified=False, input_known=known)


# ---------------------------------------------------------------- each format


def _load_torchscript(path: Path) -> nn.Module:
    check_archive(path)  # declared sizes first: torch.jit.load allocates what they say
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, still the way to read TorchScript
            return torch.jit.load(str(path), map_location="cpu")
    except (
        RuntimeError,
        ValueError,
        OSError,
    ) as error:  # a corrupt archive: RuntimeError, or a UnicodeDecodeError of its code
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise CheckpointError(
            f"checkpoint {path} is a TorchScript archive that cannot be loaded ({first[:120]}); export it again"
        ) from error


def _load_safetensors(path: Path) -> dict[str, Tensor]:
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"checkpoint {path} is a corrupt safetensors file ({error}); save it again") from error


def _load_converted(path: Path, arch: Optional[str]) -> LoadedCheckpoint:
    # --arch: for a model built on a user class, the user's approval to import it; else it must match.
    model = load_converted(path, user_class=arch)
    return LoadedCheckpoint(
        model,
        CheckpointFormat.PRERNN,
        model.spec.base_architecture,
        model.spec.input,
        identified=False,
        spec=model.spec,
    )


def _load_pickled(path: Path, arch: Optional[str], trust_pickle: bool, ema: bool = False) -> LoadedCheckpoint:
    """A ``torch.save`` (or, trusted, plain pickle) file: a module, or weights nested somewhere in it."""
    obj = load_pickle(path, trust_pickle)
    chosen = training_weights(path, obj, ema, read_arch=arch is None)
    if chosen is not None:
        state_dict = extract_state_dict(chosen.weights)
        if state_dict is None:
            raise CheckpointError(f"checkpoint {path} holds no weights under {chosen.key!r}; save the checkpoint again")
        loaded = _model_from_weights(path, state_dict, arch, CheckpointFormat.STATE_DICT, chosen.architecture)
        loaded.weights, loaded.other_weights = chosen.key, chosen.other
        return loaded
    if isinstance(obj, nn.Module):
        return _from_module(path, obj, arch, CheckpointFormat.PICKLED_MODULE)
    if isinstance(obj, Mapping):
        for key in _NESTED_KEYS:
            if isinstance(obj.get(key), nn.Module):
                return _from_module(path, obj[key], arch, CheckpointFormat.PICKLED_MODULE)
    state_dict = extract_state_dict(obj)
    if state_dict is None:
        keys = f" (top-level keys: {', '.join(map(str, list(obj)[:5]))})" if isinstance(obj, Mapping) else ""
        raise CheckpointError(
            f"checkpoint {path} holds a {type(obj).__name__}{keys} but no model weights; save model.state_dict() "
            f"or nest it under 'state_dict'"
        )
    return _model_from_weights(path, state_dict, arch, CheckpointFormat.STATE_DICT)


def load_checkpoint(
    path: Path | str, arch: Optional[str] = None, trust_pickle: bool = False, ema: bool = False
) -> LoadedCheckpoint:
    """Load the network in ``path``, whatever its format, as an ``nn.Module`` in eval mode.

    Args:
        path: the checkpoint file.
        arch: the architecture bare weights belong to; identified from the weights when ``None``.
            For a converted model built on a user's class, the user's approval to import that class
            (it must equal the class its spec names); for any other converted model, its architecture.
        trust_pickle: allow unpickling a whole ``nn.Module`` (runs code from the file).
        ema: load a training checkpoint's EMA weights (``state_dict_ema``) instead of its ``state_dict``.

    Raises:
        CheckpointError: unreadable file, weights that fit no (or not the given) architecture,
            a pickled module without ``trust_pickle``, ``ema`` for a file without EMA weights.
        ArchitectureError: an unknown ``arch``.
    """
    path = Path(path)
    fmt = detect_format(path)
    if arch is not None:
        arch = arch.strip()
        if not arch:
            raise ArchitectureError("--arch is empty; give an architecture name such as resnet50, vgg16 or c3d")
    if ema and fmt is not CheckpointFormat.STATE_DICT:
        raise no_ema(path, f"a {fmt.value} file")
    if fmt is CheckpointFormat.PRERNN:
        return _load_converted(path, arch)
    if fmt is CheckpointFormat.SAFETENSORS:
        return _model_from_weights(path, _strip_wrappers(_load_safetensors(path)), arch, fmt)
    if fmt is CheckpointFormat.TORCHSCRIPT:
        return _from_module(path, _load_torchscript(path), arch, fmt)
    return _load_pickled(path, arch, trust_pickle, ema)
