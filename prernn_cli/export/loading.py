"""What an export or a validation reads besides the ONNX file: the converted model, a clip's steps."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
from torch import nn

from prernn_cli.checkpoint import load_converted
from prernn_cli.data import read_clip_steps
from prernn_cli.errors import ExportError, UserInputError
from prernn_cli.spec import SPEC_METADATA_KEY, ModelSpec


def load_model_for_export(path: Path, user_class: Optional[str] = None) -> nn.Module:
    """Load a converted model, or say what to run first when ``path`` is not one.

    ``user_class``: the user's class the model may be built on, approved on the command line (``--arch``).
    """
    path = Path(path)
    if not path.exists():
        raise UserInputError(
            f"{path} does not exist; give a converted model (.safetensors written by `prernn convert`)"
        )
    if path.is_dir():
        raise UserInputError(f"{path} is a folder; give a converted model (.safetensors written by `prernn convert`)")
    if not _has_prernn_spec(path):
        raise ExportError(
            f"{path} is not a converted prernn model; run `prernn convert {path} --layer LAYER -o model.safetensors` first and export that"
        )
    return load_converted(path, user_class=user_class)


def _has_prernn_spec(path: Path) -> bool:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return SPEC_METADATA_KEY in (handle.metadata() or {})
    except (SafetensorError, OSError):  # not a safetensors file at all, or not readable
        return False


def load_clip_steps(clip: Path | None, model_spec: ModelSpec, resize: bool = False) -> np.ndarray | None:
    """The preprocessed steps ``[N, *step]`` of ``clip`` for ``model_spec``'s input; None without a clip."""
    if clip is None:
        return None
    steps, _ = read_clip_steps(Path(clip), model_spec.input, resize=resize)
    return steps
