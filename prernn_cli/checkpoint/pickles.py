"""Reading pickles safely: ``torch.load(weights_only=True)``, and naming what a refused pickle would import.

A whole pickled ``nn.Module`` is only unpickled with ``trust_pickle=True``: unpickling
calls whatever functions the file names, so a malicious file could run any command.
Besides tensors and containers, a load accepts only :data:`_DATA_GLOBALS`: plain records
of values (timm's ``train.py`` saves its ``argparse.Namespace`` of options), which
unpickling fills without running code of the file's choosing.
"""

from __future__ import annotations

import argparse
import logging
import pickle
import pickletools
import struct
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from prernn_cli.archives import check_archive
from prernn_cli.errors import CheckpointError

__all__ = ["load_pickle"]

logger = logging.getLogger(__name__)

_TRUST_HINT = (
    "pass --trust-pickle only if you trust the file, or re-save it as weights: torch.save(model.state_dict(), path)"
)
_STRING_OPCODES = ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8")
# Globals a file of plain weights imports: tensors, their storages and containers.
_TENSOR_GLOBALS = (
    "torch.",
    "collections.OrderedDict",
    "builtins.",
    "__builtin__.",
    "copyreg.",
    "_codecs.encode",
    "numpy.",
    "argparse.Namespace",
)
# Classes a weights-only load may rebuild (scoped to that load): records of plain values.
_DATA_GLOBALS = [argparse.Namespace]


def _pickle_globals(data: bytes, limit: int = 4) -> list[str]:
    """The ``module.name`` globals the pickle(s) in ``data`` would import, read without unpickling."""
    found: list[str] = []
    position = 0
    for _ in range(limit):
        strings: list[str] = []
        try:
            for opcode, arg, end in pickletools.genops(data[position:]):
                if opcode.name in _STRING_OPCODES:
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
        except ValueError:  # pickletools' reading of raw tensor bytes after the pickles, or of a truncated file
            break
    return list(dict.fromkeys(found))


def _is_torch_zip(path: Path) -> bool:
    """Whether ``torch.load`` reads ``path`` as a zip archive: it looks at the first four bytes only."""
    with path.open("rb") as handle:
        return handle.read(4) == b"PK\x03\x04"


def _file_globals(path: Path) -> list[str]:
    if zipfile.is_zipfile(path):
        check_archive(path)  # data.pkl is read whole below
        with zipfile.ZipFile(path) as archive:
            name = next((n for n in archive.namelist() if n.endswith("/data.pkl")), None)
            data = archive.read(name) if name else b""
    else:
        data = path.read_bytes()
    return _pickle_globals(data)


def _refuse_pickle(path: Path) -> CheckpointError:
    imported = _file_globals(path)
    suspicious = [name for name in imported if not name.startswith(_TENSOR_GLOBALS)]
    suspicious = suspicious or [name for name in imported if name.startswith("torch.nn.")]
    what = f" (it imports {', '.join(suspicious[:3])})" if suspicious else ""
    return CheckpointError(
        f"checkpoint {path} holds pickled Python objects{what}, not just weights; unpickling runs code named "
        f"by the file, so it is refused: {_TRUST_HINT}"
    )


def _load_trusted(path: Path) -> Any:
    """Unpickle anything (the user passed ``--trust-pickle``): torch's format, else a plain ``pickle.dump`` file."""
    logger.info("unpickling %s with --trust-pickle: this runs code from the file", path)
    try:
        return torch.load(path, weights_only=False, map_location="cpu")
    except Exception as first_error:  # noqa: BLE001 - the file's own code may raise anything, and a plain pickle is not torch's format
        try:
            with path.open("rb") as handle:
                return pickle.load(handle)  # noqa: S301 - the user passed --trust-pickle
        except Exception as error:  # noqa: BLE001 - the file's own code may raise anything
            raise CheckpointError(
                f"checkpoint {path} could not be unpickled ({type(first_error).__name__}: {str(first_error)[:100]}); check the file"
            ) from error


def load_pickle(path: Path, trust_pickle: bool) -> Any:
    """``torch.load`` with ``weights_only=True``; a module or other objects only when trusted.

    Raises:
        CheckpointError: a corrupt or truncated file, or one holding Python objects without ``trust_pickle``
            (naming what it would import), or a zip archive whose declared sizes are hostile.
    """
    path = Path(path)
    if _is_torch_zip(path):
        check_archive(path)  # before torch.load allocates and inflates what the archive declares
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4": the load itself says what matters
            with torch.serialization.safe_globals(_DATA_GLOBALS):
                return torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as error:
        if "Weights only load failed" not in str(error):
            raise CheckpointError(
                f"checkpoint {path} is a corrupt pickle ({str(error).splitlines()[0]}); save it again"
            ) from error
        if not trust_pickle:
            raise _refuse_pickle(path) from None
    except (EOFError, RuntimeError, ValueError, OSError, struct.error) as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise CheckpointError(
            f"checkpoint {path} is truncated or corrupt ({first[:120]}); copy or save it again"
        ) from error
    return _load_trusted(path)
