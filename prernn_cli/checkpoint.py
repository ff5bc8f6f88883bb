"""Load any checkpoint a user has; save and load our converted-model format.

The format is decided from the file's content, never its extension:

* a zip written by ``torch.save`` (a state_dict, possibly nested under
  ``state_dict``/``model``/``model_state_dict`` and prefixed ``module.`` by DDP), or a
  legacy/plain pickle — always read with ``torch.load(weights_only=True)``, which
  cannot run code from the file;
* a TorchScript archive (a zip holding ``code/`` and ``constants.pkl``);
* a safetensors file (8-byte little-endian header length, then a JSON header);
* our converted format: safetensors whose metadata holds the model's
  :class:`~prernn_cli.spec.ModelSpec` under ``prernn_spec`` (SPEC §5).

A whole pickled ``nn.Module`` is only unpickled with ``trust_pickle=True``:
unpickling calls whatever functions the file names, so a malicious file could run
any command. Bare weights are rebuilt on the architecture named by ``arch`` or, when
it is omitted, on the one :func:`~prernn_cli.architectures.match_architecture` finds.
"""

from __future__ import annotations

import json
import logging
import pickle
import pickletools
import struct
import warnings
import zipfile
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional

import torch
from torch import Tensor, nn

from prernn_cli.architectures import (
    ArchitectureMatch,
    architecture_input,
    build_architecture,
    build_empty_architecture,
    describe_mismatch,
    fit_architecture,
    has_known_input,
    match_architecture,
)
from prernn_cli.errors import ArchitectureError, CheckpointError, PrernnError
from prernn_cli.files import atomic_path
from prernn_cli.model import RecurrentModel, build_recurrent_model
from prernn_cli.spec import SPEC_METADATA_KEY, InputSpec, ModelSpec

__all__ = [
    "CheckpointFormat",
    "LoadedCheckpoint",
    "detect_format",
    "extract_state_dict",
    "load_checkpoint",
    "load_converted",
    "save_converted",
]

logger = logging.getLogger(__name__)

PRERNN_FORMAT = "prernn"
_NESTED_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "network")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP/DataParallel, torch.compile
_TRUST_HINT = "pass --trust-pickle only if you trust the file, or re-save it as weights: torch.save(model.state_dict(), path)"


class CheckpointFormat(str, Enum):
    """What a checkpoint file holds."""

    STATE_DICT = "state_dict"  # torch.save of tensors (zip or legacy pickle)
    TORCHSCRIPT = "torchscript"
    SAFETENSORS = "safetensors"
    PRERNN = "prernn"  # our converted model: safetensors + ModelSpec metadata
    PICKLED_MODULE = "pickled_module"  # a whole nn.Module, only with trust_pickle


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


# ---------------------------------------------------------------- format detection


def _check_file(path: Path) -> None:
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist; check the path")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a directory; give the checkpoint file inside it")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes); it was not saved completely, save or copy it again")


def _safetensors_header(path: Path, head: bytes) -> Optional[dict]:
    """The JSON header when ``path`` looks like a safetensors file, else None."""
    if len(head) < 9:
        return None
    (length,) = struct.unpack("<Q", head[:8])
    if head[8:9] != b"{" or length < 2 or length > 100_000_000:
        return None
    size = path.stat().st_size
    if 8 + length > size:
        raise CheckpointError(f"checkpoint {path} is a truncated safetensors file (header says {length} bytes, file has {size - 8}); copy or save it again")
    with path.open("rb") as handle:
        handle.seek(8)
        raw = handle.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"checkpoint {path} has a corrupt safetensors header ({error}); save it again") from error
    if not isinstance(header, dict):
        raise CheckpointError(f"checkpoint {path} has a corrupt safetensors header (not a JSON object); save it again")
    end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__" and isinstance(entry, dict) and "data_offsets" in entry), default=0)
    if 8 + length + end > size:
        raise CheckpointError(f"checkpoint {path} is a truncated safetensors file ({size} bytes, its header needs {8 + length + end}); copy or save it again")
    return header


def _looks_like_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(char.isprintable() or char in "\r\n\t\f" for char in text[:-4] or text)


def detect_format(path: Path) -> CheckpointFormat:
    """Which format ``path`` holds, from its first bytes (a pickle may still turn out to hold a module).

    Raises:
        CheckpointError: a missing, empty, truncated, text or otherwise unreadable file.
    """
    path = Path(path)
    _check_file(path)
    with path.open("rb") as handle:
        head = handle.read(512)
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except zipfile.BadZipFile as error:
            raise CheckpointError(f"checkpoint {path} is a truncated or corrupt zip archive ({error}); copy or save it again") from error
        parts = {part for name in names for part in name.split("/")[1:2]}
        if "code" in parts or "constants.pkl" in parts:
            return CheckpointFormat.TORCHSCRIPT
        if "data.pkl" in parts:
            return CheckpointFormat.STATE_DICT
        raise CheckpointError(f"checkpoint {path} is a zip archive but neither a torch.save file nor TorchScript; give a .pt/.pth, TorchScript or safetensors file")
    header = _safetensors_header(path, head)
    if header is not None:
        metadata = header.get("__metadata__") or {}
        return CheckpointFormat.PRERNN if SPEC_METADATA_KEY in metadata else CheckpointFormat.SAFETENSORS
    if head[:1] == b"\x80" or head[:1] in (b"(", b"}", b"]"):  # pickle protocol 2+, or protocol 0/1 opcodes
        return CheckpointFormat.STATE_DICT
    if _looks_like_text(head):
        raise CheckpointError(f"checkpoint {path} is a text file, not a model checkpoint; give a .pt/.pth, TorchScript or safetensors file")
    raise CheckpointError(f"checkpoint {path} is not a format prernn reads (torch.save, TorchScript, safetensors); check the file")


# ---------------------------------------------------------------- pickles, without running them


def _pickle_globals(data: bytes, limit: int = 4) -> list[str]:
    """The ``module.name`` globals the pickle(s) in ``data`` would import, read without unpickling."""
    found: list[str] = []
    position = 0
    for _ in range(limit):
        strings: list[str] = []
        try:
            for opcode, arg, end in pickletools.genops(data[position:]):
                if opcode.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
                    strings.append(arg)
                elif opcode.name in ("GLOBAL", "INST"):
                    found.append(str(arg).replace(" ", "."))
                elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                    found.append(f"{strings[-2]}.{strings[-1]}")
                if opcode.name == "STOP":
                    position += end + 1
                    break
            else:
                break
        except Exception:  # noqa: BLE001 - raw tensor bytes after the pickles, or a truncated file
            break
    return list(dict.fromkeys(found))


def _file_globals(path: Path) -> list[str]:
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            name = next((n for n in archive.namelist() if n.endswith("/data.pkl")), None)
            data = archive.read(name) if name else b""
    else:
        data = path.read_bytes()
    return _pickle_globals(data)


_TENSOR_GLOBALS = ("torch.", "collections.OrderedDict", "builtins.", "__builtin__.", "copyreg.", "_codecs.encode", "numpy.")


def _refuse_pickle(path: Path) -> CheckpointError:
    suspicious = [name for name in _file_globals(path) if not name.startswith(_TENSOR_GLOBALS)]
    suspicious = suspicious or [name for name in _file_globals(path) if name.startswith("torch.nn.")]
    what = f" (it imports {', '.join(suspicious[:3])})" if suspicious else ""
    return CheckpointError(
        f"checkpoint {path} holds pickled Python objects{what}, not just weights; unpickling runs code named "
        f"by the file, so it is refused: {_TRUST_HINT}"
    )


def _torch_load(path: Path, trust_pickle: bool) -> Any:
    """``torch.load`` with ``weights_only=True``; a module or other objects only when trusted."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4": the load itself says what matters
            return torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as error:
        if "Weights only load failed" not in str(error):
            raise CheckpointError(f"checkpoint {path} is a corrupt pickle ({str(error).splitlines()[0]}); save it again") from error
        if not trust_pickle:
            raise _refuse_pickle(path) from None
    except (EOFError, RuntimeError, ValueError, OSError, struct.error) as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({first[:120]}); copy or save it again") from error
    logger.info("unpickling %s with --trust-pickle: this runs code from the file", path)
    try:
        return torch.load(path, weights_only=False, map_location="cpu")
    except Exception as first_error:  # noqa: BLE001 - a plain pickle.dump file is not torch's format
        try:
            with path.open("rb") as handle:
                return pickle.load(handle)  # noqa: S301 - the user passed --trust-pickle
        except Exception as error:  # noqa: BLE001 - the file's own code may raise anything
            raise CheckpointError(f"checkpoint {path} could not be unpickled ({type(first_error).__name__}: {str(first_error)[:100]}); check the file") from error


# ---------------------------------------------------------------- state_dicts


def _is_state_dict(value: Any) -> bool:
    return isinstance(value, Mapping) and bool(value) and all(isinstance(key, str) for key in value) and all(
        isinstance(item, Tensor) for item in value.values()
    )


def _strip_wrappers(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    result = dict(state_dict)
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if result and all(key.startswith(prefix) for key in result):
                result = {key[len(prefix):]: value for key, value in result.items()}
                logger.info("stripped the %r prefix from every key", prefix)
                changed = True
    return result


def extract_state_dict(obj: Any) -> Optional[dict[str, Tensor]]:
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


def _as_float32(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    converted = {}
    for key, value in state_dict.items():
        if value.is_floating_point() and value.dtype != torch.float32:
            value = value.float()
        converted[key] = value
    return converted


def _instantiate(match: ArchitectureMatch, state_dict: Mapping[str, Tensor]) -> nn.Module:
    """Build ``match`` and load ``state_dict`` into it strictly, without a costly random init."""
    state_dict = _as_float32(state_dict)
    model = build_empty_architecture(match.name, match.num_classes, **match.options)
    try:
        model.load_state_dict(state_dict, strict=True, assign=True)
        leftover = [name for name, tensor in [*model.named_parameters(), *model.named_buffers()] if tensor.is_meta]
    except RuntimeError:
        leftover = ["?"]
    if leftover:  # non-persistent buffers (or a builder that resists meta): build for real
        model = build_architecture(match.name, match.num_classes, **match.options)
        model.load_state_dict(state_dict, strict=True, assign=True)
    missing = [name for name, tensor in [*model.named_parameters(), *model.named_buffers()] if tensor.is_meta]
    if missing:
        raise CheckpointError(f"{path}: the file holds no values for {', '.join(missing[:3])}; save the model again")
    return model.eval()


def _model_from_weights(path: Path, state_dict: Mapping[str, Tensor], arch: Optional[str], fmt: CheckpointFormat) -> LoadedCheckpoint:
    if arch is not None:
        match = fit_architecture(arch, state_dict)
        identified = False
    else:
        match = match_architecture(state_dict)
        identified = True
    model = _instantiate(match, state_dict)
    return LoadedCheckpoint(
        model=model,
        format=fmt,
        architecture=match.name,
        input_spec=architecture_input(match.name),
        identified=identified,
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
        return LoadedCheckpoint(module.eval(), fmt, match.name, architecture_input(match.name), identified=arch is None,
                                num_classes=match.num_classes, input_known=has_known_input(match.name))
    name = None if fmt is CheckpointFormat.TORCHSCRIPT else f"{type(module).__module__}:{type(module).__qualname__}"
    input_spec, known = _unknown_input(name)
    return LoadedCheckpoint(module.eval(), fmt, name, input_spec, identified=False, input_known=known)


def _load_torchscript(path: Path) -> nn.Module:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, still the way to read TorchScript
            return torch.jit.load(str(path), map_location="cpu")
    except Exception as error:  # noqa: BLE001 - torch raises RuntimeError and friends for a bad archive
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise CheckpointError(f"checkpoint {path} is a TorchScript archive that cannot be loaded ({first[:120]}); export it again") from error


def _load_safetensors(path: Path) -> dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"checkpoint {path} is a corrupt safetensors file ({error}); save it again") from error


def load_checkpoint(path: Path | str, arch: Optional[str] = None, trust_pickle: bool = False) -> LoadedCheckpoint:
    """Load the network in ``path``, whatever its format, as an ``nn.Module`` in eval mode.

    Args:
        path: the checkpoint file.
        arch: the architecture bare weights belong to; identified from the weights when ``None``.
        trust_pickle: allow unpickling a whole ``nn.Module`` (runs code from the file).

    Raises:
        CheckpointError: unreadable file, weights that fit no (or not the given) architecture,
            a pickled module without ``trust_pickle``.
        ArchitectureError: an unknown ``arch``.
    """
    path = Path(path)
    fmt = detect_format(path)
    if arch is not None:
        arch = arch.strip()
        if not arch:
            raise ArchitectureError("--arch is empty; give an architecture name such as resnet50, vgg16 or c3d")
    if fmt is CheckpointFormat.PRERNN:
        model = load_converted(path)
        if arch is not None and arch != model.spec.base_architecture:
            raise CheckpointError(
                f"checkpoint {path} is a converted prernn model of {model.spec.base_architecture}, not {arch}; drop --arch (the file names its architecture)"
            )
        return LoadedCheckpoint(model, fmt, model.spec.base_architecture, model.spec.input, identified=False, spec=model.spec)
    if fmt is CheckpointFormat.SAFETENSORS:
        return _model_from_weights(path, _strip_wrappers(_load_safetensors(path)), arch, fmt)
    if fmt is CheckpointFormat.TORCHSCRIPT:
        return _from_module(path, _load_torchscript(path), arch, fmt)
    obj = _torch_load(path, trust_pickle)
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


# ---------------------------------------------------------------- our converted format


def _read_spec(path: Path) -> ModelSpec:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{path} is not a readable safetensors file ({error}); give a model saved by prernn") from error
    if SPEC_METADATA_KEY not in metadata:
        raise CheckpointError(f"{path} holds weights but no prernn model spec; convert a network first (prernn convert)")
    try:
        return ModelSpec.from_json(metadata[SPEC_METADATA_KEY])
    except (ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"{path} has an unreadable prernn spec ({error}); save the model again with this version of prernn") from error


def load_converted(path: Path | str) -> RecurrentModel:
    """Rebuild a converted model from our safetensors file, unpickling nothing (SPEC §5).

    The base architecture is built with random weights, converted as the stored spec
    says, then every tensor (pretrained and recurrent) is loaded strictly from the file.
    """
    from safetensors.torch import load_file

    path = Path(path)
    fmt = detect_format(path)
    if fmt is not CheckpointFormat.PRERNN:
        raise CheckpointError(
            f"{path} is a {fmt.value} checkpoint, not a converted prernn model; convert it first: "
            f"prernn convert {path} --layer LAYER -o model.safetensors"
        )
    spec = _read_spec(path)
    # Structure only (meta device): every tensor then comes from the file, none is initialised first.
    base = build_empty_architecture(spec.base_architecture, num_classes=spec.base_num_classes)
    try:
        model = build_recurrent_model(base, spec)
    except PrernnError:
        raise
    except Exception as error:  # noqa: BLE001 - a spec this version cannot rebuild
        raise CheckpointError(f"{path}: cannot rebuild the converted {spec.base_architecture} ({type(error).__name__}: {error}); save it again with this version of prernn") from error
    state_dict = load_file(str(path), device="cpu")
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    found = {key: tuple(value.shape) for key, value in state_dict.items()}
    if expected != found:
        raise CheckpointError(f"{path}: the weights do not fit its spec: {describe_mismatch(expected, found)}; save the model again")
    model.load_state_dict(state_dict, strict=True, assign=True)
    missing = [name for name, tensor in [*model.named_parameters(), *model.named_buffers()] if tensor.is_meta]
    if missing:
        raise CheckpointError(f"{path}: the file holds no values for {', '.join(missing[:3])}; save the model again")
    return model.eval()


def save_converted(model: RecurrentModel, path: Path | str) -> None:
    """Write ``model`` as one safetensors file with its spec in the metadata (atomic: no half-written file)."""
    from safetensors.torch import save_file

    tensors = {key: value.detach().to("cpu").contiguous().clone() for key, value in model.state_dict().items()}
    metadata = {"format": PRERNN_FORMAT, SPEC_METADATA_KEY: model.spec.to_json()}
    with atomic_path(Path(path)) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
