"""Checkpoints a training script saved: which weights to take, and the architecture the file names.

timm's ``train.py`` saves ``{'epoch', 'arch', 'version', 'args', 'state_dict', 'state_dict_ema',
'metric', …}``: ``args`` is its ``argparse.Namespace`` of options, ``state_dict_ema`` the
exponential moving average of the weights (when trained with ``--model-ema``). The plain
``state_dict`` is taken unless the user asks for the EMA weights (``--ema``).

``arch`` is read as data: it is used only when it is an exact name in timm's registry, and then
built as ``timm:NAME``; anything else is ignored and the architecture is identified from the
weights. Nothing the file names is imported or called.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from torch import Tensor

from prernn_cli.architectures import ArchitectureMatch, fit_architecture, match_architecture
from prernn_cli.architectures.timm_models import TIMM_NOT_INSTALLED, TIMM_PREFIX, is_timm_model, timm_available
from prernn_cli.errors import ArchitectureError, CheckpointError

__all__ = ["EMA_KEY", "PLAIN_KEY", "TrainingWeights", "fit_named", "no_ema", "training_weights"]

logger = logging.getLogger(__name__)

PLAIN_KEY = "state_dict"
EMA_KEY = "state_dict_ema"


@dataclass(frozen=True)
class TrainingWeights:
    """The weights taken from a training checkpoint, and what else the file offers."""

    weights: Any  # the chosen entry (a state_dict, as the file holds it)
    key: str  # which entry: "state_dict" or "state_dict_ema"
    other: Optional[str]  # the other entry the file holds, if any
    architecture: Optional[str]  # "timm:NAME" when the file names a model of timm's registry


def no_ema(path: Path, what: str) -> CheckpointError:
    """The error for ``--ema`` on a file without EMA weights (``what`` says what the file is)."""
    return CheckpointError(f"checkpoint {path} is {what} and holds no EMA weights ({EMA_KEY!r}); drop --ema")


def is_timm_checkpoint(obj: object) -> bool:
    """Whether ``obj`` has the shape of a checkpoint saved by timm's ``train.py``."""
    return (
        isinstance(obj, Mapping)
        and isinstance(obj.get("arch"), str)
        and PLAIN_KEY in obj
        and ("version" in obj or EMA_KEY in obj or isinstance(obj.get("args"), argparse.Namespace))
    )


def _named_architecture(path: Path, name: str) -> Optional[str]:
    """``timm:NAME`` when ``name`` (read from the file) is in timm's registry; None otherwise.

    Raises:
        ArchitectureError: timm is not installed (the file is a timm checkpoint).
    """
    if not timm_available():
        raise ArchitectureError(f"{path} is a timm checkpoint and {TIMM_NOT_INSTALLED}")
    candidate = TIMM_PREFIX + name
    if is_timm_model(candidate):
        return candidate
    logger.info("%s names architecture %r, not a timm model: identifying it from the weights", path, name[:80])
    return None


def training_weights(path: Path, obj: object, ema: bool, read_arch: bool = True) -> Optional[TrainingWeights]:
    """The weights to load from a training checkpoint (a timm one, or any holding EMA weights); None for other files.

    ``read_arch``: resolve the architecture a timm checkpoint names (not needed when the user gave one).

    Raises:
        CheckpointError: ``ema`` and the file holds no EMA weights.
        ArchitectureError: a timm checkpoint and timm is not installed.
    """
    has_ema = isinstance(obj, Mapping) and isinstance(obj.get(EMA_KEY), Mapping)
    if ema and not has_ema:
        raise no_ema(path, "a checkpoint without them" if isinstance(obj, Mapping) else "not a training checkpoint")
    timm_style = is_timm_checkpoint(obj)
    if not isinstance(obj, Mapping) or not (has_ema or timm_style):
        return None
    key = EMA_KEY if ema else PLAIN_KEY
    other = (PLAIN_KEY if ema else EMA_KEY) if has_ema and PLAIN_KEY in obj else None
    architecture = _named_architecture(path, obj["arch"]) if timm_style and read_arch else None
    logger.info("%s: loading its %r weights", path, key)
    return TrainingWeights(obj.get(key), key, other, architecture)


def fit_named(path: Path, name: str, state_dict: Mapping[str, Tensor]) -> ArchitectureMatch:
    """Fit the weights to the architecture the file names; identify them when they do not fit it."""
    try:
        return fit_architecture(name, state_dict)
    except CheckpointError as error:
        logger.warning("%s names %s, but %s; identifying the architecture from the weights", path, name, error)
        return match_architecture(state_dict)
