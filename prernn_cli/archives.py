"""Refusing a hostile zip archive (``torch.save`` / TorchScript) before anything reads its members.

``torch.load`` and ``torch.jit.load`` allocate what the archive's central directory declares
for a member, then inflate it: a 2 MB file holding a deflated ``data.pkl`` of 2 GiB of zeros
costs gigabytes and tens of seconds before anything can refuse it. Everything checked here
comes from the end-of-central-directory record and the central directory alone (a few
kilobytes), so a hostile archive is refused in milliseconds with bounded memory.

``torch.save`` writes every member STORED (uncompressed), so declared sizes equal stored
ones; TorchScript deflates its ``code/`` text, which shrinks a few times, never a hundred.

This module imports neither torch nor anything that does: the CLI checks a checkpoint with
:func:`refuse_hostile_archive` before it imports torch, so a hostile file is refused before
the (large) cost of that import too. The loaders check again before they read.
"""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

from prernn_cli.errors import CheckpointError

__all__ = ["check_archive", "refuse_hostile_archive"]

# More members than any checkpoint has: torch.save writes one per tensor storage (a few thousand
# for the largest published models) plus a handful of records. Bounding the count before the
# central directory is parsed bounds the memory its entries take (a few hundred bytes each).
MAX_MEMBERS = 100_000
# A deflated member may expand at most this much (text code shrinks ~2-10x; zeros ~1000x).
MAX_RATIO = 100
# Members smaller than this are never a threat, whatever their ratio (a short, repetitive code file).
RATIO_FLOOR = 1 << 20
# data.pkl pickles the structure of what was saved: per tensor a key, a storage reference, dtype,
# shape and strides, about 200 bytes; the tensors' bytes live in data/<n>. 256 MiB would describe
# over a million tensors, a hundred times the largest state_dicts, and still leaves room for the
# plain Python values (history lists, configs) a training script saves beside them.
MAX_PICKLE_BYTES = 256 << 20
# All members together may declare at most this many times the file's size, plus a margin:
# STORED members declare exactly their stored size; deflated code a few times more.
MAX_EXPANSION = 4
EXPANSION_MARGIN = 64 << 20

_EOCD = struct.Struct("<4s4H2LH")  # end of central directory: signature … total entries, size, offset, comment
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")
_TAIL = _EOCD.size + 0xFFFF  # the record, and a comment of at most 64 KiB after it


def _refused(path: Path, why: str) -> CheckpointError:
    return CheckpointError(
        f"checkpoint {path} looks like a decompression bomb or a corrupt archive ({why}); "
        "refused before reading it: save it again with torch.save"
    )


def _declared_members(path: Path) -> int | None:
    """The entry count the end-of-central-directory record declares; None when there is none (zipfile says why)."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        handle.seek(max(0, size - _TAIL))
        tail = handle.read()
        at = tail.rfind(b"PK\x05\x06")
        if at < 0 or len(tail) - at < _EOCD.size:
            return None
        count = _EOCD.unpack_from(tail, at)[4]  # total entries
        locator_at = at - _ZIP64_LOCATOR.size
        if count != 0xFFFF or locator_at < 0 or tail[locator_at : locator_at + 4] != b"PK\x06\x07":
            return count
        offset = _ZIP64_LOCATOR.unpack_from(tail, locator_at)[2]
        if offset + _ZIP64_EOCD.size > size:
            return None
        handle.seek(offset)
        record = handle.read(_ZIP64_EOCD.size)
    if record[:4] != b"PK\x06\x06":
        return None
    return _ZIP64_EOCD.unpack(record)[7]  # total entries


def _check_member(path: Path, info: zipfile.ZipInfo, file_size: int) -> None:
    if info.filename.endswith("data.pkl") and info.file_size > MAX_PICKLE_BYTES:
        raise _refused(
            path, f"{info.filename} declares {info.file_size >> 20} MiB, over {MAX_PICKLE_BYTES >> 20} MiB for a pickle"
        )
    if info.compress_size > file_size:
        raise _refused(path, f"{info.filename} claims {info.compress_size} stored bytes in a {file_size}-byte file")
    if info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size:
        raise _refused(path, f"{info.filename} is stored uncompressed yet declares {info.file_size} bytes")
    if info.file_size > RATIO_FLOOR and info.file_size > MAX_RATIO * max(info.compress_size, 1):
        raise _refused(
            path, f"{info.filename} inflates {info.compress_size} bytes to {info.file_size}, over {MAX_RATIO}x"
        )


def check_archive(path: Path) -> list[str]:
    """The member names of the zip archive ``path``, once its declared sizes are safe to read.

    Raises:
        CheckpointError: not a readable zip, too many members, a member compressed far beyond
            ``torch.save``'s own (uncompressed) writing, an oversized ``data.pkl``, or declared
            sizes far above the file's.
    """
    path = Path(path)
    size = path.stat().st_size
    declared = _declared_members(path)
    if declared is not None and declared > MAX_MEMBERS:
        raise _refused(path, f"{declared} members, over {MAX_MEMBERS}")
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, struct.error) as error:
        raise CheckpointError(
            f"checkpoint {path} is a truncated or corrupt zip archive ({error}); copy or save it again"
        ) from error
    if len(members) > MAX_MEMBERS:
        raise _refused(path, f"{len(members)} members, over {MAX_MEMBERS}")
    for info in members:
        _check_member(path, info, size)
    total = sum(info.file_size for info in members)
    if total > MAX_EXPANSION * size + EXPANSION_MARGIN:
        raise _refused(path, f"its members declare {total} bytes in a {size}-byte file")
    return [info.filename for info in members]


def refuse_hostile_archive(path: Path | str) -> None:
    """:func:`check_archive` for a file ``torch.load`` would read as a zip archive; anything else is left alone.

    Whatever this does not refuse (a missing file, a pickle, safetensors) the loaders judge later.
    """
    path = Path(path)
    try:
        if not path.is_file():
            return
        with path.open("rb") as handle:
            if handle.read(4) != b"PK\x03\x04":  # what torch.load and torch.jit.load look at
                return
    except OSError:  # unreadable: the loader names the problem
        return
    check_archive(path)
