"""Writing files so that a failure never leaves one half-written, and no output replaces an input.

* :func:`atomic_path` writes through a temporary file renamed over the target only once
  complete (and flushed to disk); an OS error while writing (a full disk, a read-only
  folder) becomes a one-line :class:`~prernn_cli.errors.PrernnError` naming the file and
  the cause, and leaves no temporary file behind. :func:`atomic_file` adds a file object
  for writers that hide the OS error behind their own (``torch.save``).
* :func:`refuse_overwriting` and :func:`refuse_folder_over_inputs` stop a command before
  it writes over one of its own inputs, whichever way the path names it (symlinks, ``..``,
  hard links).
* :func:`finite_json` is the JSON the tool writes: ``null`` where a number is not finite,
  never the ``NaN``/``Infinity`` that JSON does not have.
* :func:`output_folder` creates a folder for a command's files and removes it again when
  the command fails before writing anything into it.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from prernn_cli.errors import PrernnError, UserInputError


def check_writable_output(path: Path) -> Path:
    """Fail early, with the fix, when ``path`` cannot be written as a file."""
    path = Path(path)
    if path.is_dir():
        raise UserInputError(f"output path {path} is a directory; give a file name, e.g. {path / 'model.safetensors'}")
    if path.exists() and not path.is_file():  # a device or a pipe: the rename would replace it, not write to it
        raise UserInputError(f"output path {path} is not a regular file; give a file name")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.exists():
        raise UserInputError(f"output folder {parent} does not exist; create it first (mkdir -p {parent})")
    if not os.access(parent, os.W_OK):
        raise UserInputError(f"output folder {parent} is not writable; choose another -o path")
    return path


def _finite(value):
    """``value`` with every non-finite float (NumPy's too) replaced by None, NumPy scalars as Python numbers."""
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # a NumPy or torch scalar
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def finite_json(value, **options) -> str:
    """``json.dumps`` for anything the tool writes: non-finite numbers become ``null`` (JSON has no NaN)."""
    return json.dumps(_finite(value), allow_nan=False, **options)


def cannot_write(path: Path, error: OSError) -> PrernnError:
    """The one-line error for an OS error while writing ``path`` (exit 1: the disk, not the user)."""
    return PrernnError(f"cannot write {path}: {error.strerror or error}")


_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def os_error_in(error: Exception) -> OSError | None:
    """The OS error a Rust-backed writer (safetensors) reports only in its message, e.g. "(os error 28)"."""
    match = _RUST_OS_ERROR.search(str(error))
    if match is None:
        return None
    number = int(match.group(1))
    return OSError(number, os.strerror(number))


def _sync(path: Path) -> None:
    """Flush ``path`` (a file or a folder) to the disk: a rename must never publish unwritten data."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only on success.

    An ``OSError`` while writing (no space left, a read-only file system) becomes a
    :class:`PrernnError` naming ``path`` and the cause; the temporary file is removed.
    """
    path = check_writable_output(Path(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as error:
        raise cannot_write(path, error) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        umask = os.umask(0)
        os.umask(umask)
        # mkstemp (and some writers replacing the file) leave 0600: give it the mode a plain open() would
        os.chmod(tmp_path, 0o666 & ~umask)
        _sync(tmp_path)
        os.replace(tmp_path, path)
    except OSError as error:
        raise cannot_write(path, error) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
    with contextlib.suppress(OSError):  # the file is in place; some file systems cannot sync a folder
        _sync(path.parent)


class _Sink(io.RawIOBase):
    """A file object over a descriptor that writes everything it is given and remembers an OS error."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self.fd = fd
        self.error: OSError | None = None

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        try:
            while view:
                view = view[os.write(self.fd, view) :]
        except OSError as error:
            self.error = error
            raise
        return len(data)


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """:func:`atomic_path`, opened for writing.

    ``torch.save`` reports a full disk as a ``RuntimeError`` ("unexpected pos"): the OS
    error the file saw is raised instead, so it reads like any other write failure.
    """
    with atomic_path(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_TRUNC)
        sink = _Sink(fd)
        try:
            yield sink
        except Exception:
            if sink.error is not None:
                raise sink.error from None
            raise
        finally:
            os.close(fd)


# ---------------------------------------------------------------- outputs that would replace inputs


@dataclass(frozen=True)
class _Place:
    """Where a path leads: its resolved path and, when it exists, its (device, inode)."""

    path: Path
    inode: tuple[int, int] | None

    @classmethod
    def of(cls, path: Path) -> _Place:
        resolved = Path(os.path.realpath(path))
        try:
            stat = os.stat(resolved)
        except OSError:
            return cls(resolved, None)
        return cls(resolved, (stat.st_dev, stat.st_ino))

    def same_as(self, other: _Place) -> bool:
        return self.path == other.path or (self.inode is not None and self.inode == other.inode)

    def inside(self, folder: _Place) -> bool:
        """Whether this place lies under ``folder`` (by path, or by the inode of an existing parent)."""
        if folder.path in self.path.parents:
            return True
        if folder.inode is None:
            return False
        return any(_Place.of(parent).inode == folder.inode for parent in self.path.parents if parent.exists())


def same_place(a: Path, b: Path) -> bool:
    """Whether two paths lead to the same file or folder (symlinks and ``..`` resolved; hard links by inode)."""
    return _Place.of(a).same_as(_Place.of(b))


def refuse_overwriting(output: Path, *inputs: Path | None, option: str = "-o") -> None:
    """Refuse (exit 2) an ``output`` file that is one of ``inputs`` or lies inside an input folder.

    The output and the inputs are compared after resolving symlinks and ``..``, and by
    (device, inode) when both exist, so a hard link to an input is refused too.
    """
    place = _Place.of(output)
    for source in inputs:
        if source is None:
            continue
        other = _Place.of(source)
        if place.same_as(other):
            raise UserInputError(f"{option} {output} would overwrite the input {source}; write to another path")
        if other.inode is not None and Path(other.path).is_dir() and place.inside(other):
            raise UserInputError(
                f"{option} {output} is inside the input folder {source}; write outside it, e.g. "
                f"{option} {Path(other.path).parent / output.name}"
            )


def refuse_folder_over_inputs(folder: Path, names: Iterable[str], *inputs: Path | None) -> None:
    """Refuse (exit 2) an output ``folder`` that is an input, lies inside an input folder, or
    would receive a file (one of ``names``) that is an input."""
    refuse_overwriting(folder, *inputs)
    for name in names:
        refuse_overwriting(Path(folder) / name, *inputs)


# ---------------------------------------------------------------- a command's output folder


def _missing_folders(folder: Path) -> list[Path]:
    """``folder`` and its parents that do not exist yet, deepest first."""
    missing = []
    for path in (folder, *folder.parents):
        if path.exists() or path.is_symlink():
            break
        missing.append(path)
    return missing


@contextlib.contextmanager
def output_folder(folder: Path, what: str = "output folder") -> Iterator[Path]:
    """Create ``folder`` (and its parents) for a command's files; writable or a one-line error (exit 1).

    When the body fails, the folders this call created are removed again if they stayed
    empty: a failed command leaves no empty folder behind, and never removes a file.
    """
    folder = Path(folder)
    created = _missing_folders(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe_fd, probe = tempfile.mkstemp(prefix=".prernn-probe.", dir=folder)
        os.close(probe_fd)
        os.unlink(probe)
    except FileExistsError:
        raise UserInputError(f"{what} {folder} is a file; give a folder with -o") from None
    except OSError as error:
        _remove_empty(created)
        raise PrernnError(f"cannot write {what} {folder}: {error.strerror or error}") from None
    try:
        yield folder
    except BaseException:
        _remove_empty(created)
        raise


def _remove_empty(folders: list[Path]) -> None:
    for path in folders:  # deepest first
        try:
            path.rmdir()
        except OSError:  # not empty (something was written), or already gone
            return
