"""What a checkpoint file holds, decided from its content, never its extension.

* a zip written by ``torch.save`` (holding ``data.pkl``), or a legacy/plain pickle;
* a TorchScript archive (a zip holding ``code/`` and ``constants.pkl``);
* a safetensors file (8-byte little-endian header length, then a JSON header);
* our converted format: safetensors whose metadata holds the model's
  :class:`~prernn_cli.spec.ModelSpec` under ``prernn_spec`` (SPEC §5).
"""

from __future__ import annotations

import json
import struct
from enum import Enum
from pathlib import Path
from typing import Optional

from prernn_cli.archives import check_archive
from prernn_cli.errors import CheckpointError
from prernn_cli.spec import SPEC_METADATA_KEY

__all__ = ["CheckpointFormat", "detect_format"]

_MAX_SAFETENSORS_HEADER = 100_000_000  # bytes; safetensors itself refuses larger headers


class CheckpointFormat(str, Enum):
    """What a checkpoint file holds."""

    STATE_DICT = "state_dict"  # torch.save of tensors (zip or legacy pickle)
    TORCHSCRIPT = "torchscript"
    SAFETENSORS = "safetensors"
    PRERNN = "prernn"  # our converted model: safetensors + ModelSpec metadata
    PICKLED_MODULE = "pickled_module"  # a whole nn.Module, only with trust_pickle


def _check_file(path: Path) -> None:
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist; check the path")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a directory; give the checkpoint file inside it")
    if path.stat().st_size == 0:
        raise CheckpointError(
            f"checkpoint {path} is empty (0 bytes); it was not saved completely, save or copy it again"
        )


def _safetensors_header(path: Path, head: bytes) -> Optional[dict]:
    """The JSON header when ``path`` (whose first bytes are ``head``) looks like a safetensors file, else None.

    Raises:
        CheckpointError: a safetensors file that is truncated or whose header is corrupt.
    """
    if len(head) < 9:
        return None
    (length,) = struct.unpack("<Q", head[:8])
    if head[8:9] != b"{" or length < 2 or length > _MAX_SAFETENSORS_HEADER:
        return None
    size = path.stat().st_size
    if 8 + length > size:
        raise CheckpointError(
            f"checkpoint {path} is a truncated safetensors file (header says {length} bytes, file has {size - 8}); copy or save it again"
        )
    with path.open("rb") as handle:
        handle.seek(8)
        raw = handle.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"checkpoint {path} has a corrupt safetensors header ({error}); save it again") from error
    if not isinstance(header, dict):
        raise CheckpointError(f"checkpoint {path} has a corrupt safetensors header (not a JSON object); save it again")
    end = _data_end(path, header)
    if 8 + length + end > size:
        raise CheckpointError(
            f"checkpoint {path} is a truncated safetensors file ({size} bytes, its header needs {8 + length + end}); copy or save it again"
        )
    return header


def _is_offset(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _data_end(path: Path, header: dict) -> int:
    """Where the last tensor's bytes end, once every entry of ``header`` has the shape safetensors writes.

    Raises:
        CheckpointError: metadata that is not text by name, an entry without two whole-number offsets.
    """

    def corrupt(what: str) -> CheckpointError:
        return CheckpointError(
            f"checkpoint {path} is not a prernn model or is corrupt: its safetensors header {what}; save it again"
        )

    metadata = header.get("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(value, str) for value in metadata.values()):
        raise corrupt("has metadata that is not a map of names to text")
    end = 0
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(map(_is_offset, offsets)):
            raise corrupt(f"gives tensor {key[:60]!r} no valid data_offsets (two whole numbers)")
        if offsets[0] > offsets[1]:
            raise corrupt(f"gives tensor {key[:60]!r} data_offsets that end before they begin")
        end = max(end, offsets[1])
    return end


def _looks_like_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(char.isprintable() or char in "\r\n\t\f" for char in text[:-4] or text)


def _zip_format(path: Path) -> CheckpointFormat:
    """A zip archive: TorchScript or a ``torch.save`` file, from the names of its entries (sizes checked first)."""
    names = check_archive(path)
    parts = {part for name in names for part in name.split("/")[1:2]}
    if "code" in parts or "constants.pkl" in parts:
        return CheckpointFormat.TORCHSCRIPT
    if "data.pkl" in parts:
        return CheckpointFormat.STATE_DICT
    raise CheckpointError(
        f"checkpoint {path} is a zip archive but neither a torch.save file nor TorchScript; give a .pt/.pth, TorchScript or safetensors file"
    )


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
        return _zip_format(path)
    header = _safetensors_header(path, head)
    if header is not None:
        metadata = header.get("__metadata__", {})
        return CheckpointFormat.PRERNN if SPEC_METADATA_KEY in metadata else CheckpointFormat.SAFETENSORS
    if head[:1] == b"\x80" or head[:1] in (b"(", b"}", b"]"):  # pickle protocol 2+, or protocol 0/1 opcodes
        return CheckpointFormat.STATE_DICT
    if _looks_like_text(head):
        raise CheckpointError(
            f"checkpoint {path} is a text file, not a model checkpoint; give a .pt/.pth, TorchScript or safetensors file"
        )
    raise CheckpointError(
        f"checkpoint {path} is not a format prernn reads (torch.save, TorchScript, safetensors); check the file"
    )
