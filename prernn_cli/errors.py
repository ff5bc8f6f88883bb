"""Errors the tool raises.

Every message is one line that names the problem and the fix. The CLI prints
``str(error)`` on stderr and exits with ``error.exit_code``: 2 for a user's
mistake (bad input, bad option), 1 for a failure at run time.
"""

from __future__ import annotations


class PrernnError(Exception):
    """A failure at run time (exit code 1)."""

    exit_code = 1


class UserInputError(PrernnError):
    """The user's input is wrong: a path, an option, a file's content (exit code 2)."""

    exit_code = 2


class CheckpointError(UserInputError):
    """A checkpoint cannot be read or matched to an architecture."""


class ArchitectureError(UserInputError):
    """An unknown or unbuildable architecture name."""


class LayerError(UserInputError):
    """An unknown layer, or one that cannot be converted."""


class ConversionError(UserInputError):
    """A conversion request that cannot be honoured (e.g. SIH with a VRNN)."""


class DataError(UserInputError):
    """A clip folder, manifest or target file that cannot be used."""


class ExportError(UserInputError):
    """An export request that cannot be honoured (bad opset, steps, path)."""


class ExportValidationError(PrernnError):
    """An exported model does not match the PyTorch model."""


class ShapeMismatchError(ExportValidationError):
    """An exported output has the wrong shape."""


class ToleranceError(ExportValidationError):
    """An exported output differs from PyTorch beyond the tolerance."""


class TrainingError(PrernnError):
    """Training cannot go on (e.g. the loss became NaN)."""
