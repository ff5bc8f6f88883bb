"""Writing files so that a failure never leaves one half-written."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from prernn_cli.errors import UserInputError


def check_writable_output(path: Path) -> Path:
    """Fail early, with the fix, when ``path`` cannot be written as a file."""
    path = Path(path)
    if path.is_dir():
        raise UserInputError(f"output path {path} is a directory; give a file name, e.g. {path / 'model.safetensors'}")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.exists():
        raise UserInputError(f"output folder {parent} does not exist; create it first (mkdir -p {parent})")
    if not os.access(parent, os.W_OK):
        raise UserInputError(f"output folder {parent} is not writable; choose another -o path")
    return path


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only on success."""
    path = check_writable_output(Path(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        umask = os.umask(0)
        os.umask(umask)
        # mkstemp (and some writers replacing the file) leave 0600: give it the mode a plain open() would
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()
