"""What is done to the tensors read from a file before a model takes them: float32, module versions.

* every floating tensor becomes float32, the precision the tool trains and exports in: a
  float64 tensor would otherwise make its whole model float64 and fail deep inside the
  exporter; the conversion is logged as a warning;
* ``state_dict._metadata`` (each module's version, which ``torch.save`` keeps beside the
  tensors) survives every rebuilt dict, its keys following the tensors' when a wrapper
  prefix is stripped. A module reads its version from it while loading: torchvision's
  MNASNet refuses to load without one.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor, nn

__all__ = ["as_float32", "float32_module", "strip_prefix", "with_versions"]

logger = logging.getLogger(__name__)


def _metadata(state_dict: Mapping[str, Tensor]) -> Optional[dict]:
    metadata = getattr(state_dict, "_metadata", None)
    return metadata if isinstance(metadata, Mapping) else None


def _carrying(tensors: dict[str, Tensor], metadata: Optional[Mapping]) -> dict[str, Tensor]:
    """``tensors`` as an OrderedDict with ``metadata`` attached (a plain dict cannot carry it)."""
    if metadata is None:
        return tensors
    result = OrderedDict(tensors)
    result._metadata = dict(metadata)  # type: ignore[attr-defined] - as torch's own state_dict() does
    return result


def strip_prefix(state_dict: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """``state_dict`` with ``prefix`` (e.g. ``module.``) cut from every key, and from its modules' versions."""
    tensors = {key[len(prefix) :]: value for key, value in state_dict.items()}
    metadata = _metadata(state_dict)
    if metadata is not None:
        wrapper = prefix[:-1]  # the wrapper module's own entry becomes the root's
        metadata = {
            ("" if key == wrapper else key[len(prefix) :]): value
            for key, value in metadata.items()
            if key == wrapper or key.startswith(prefix)
        }
    return _carrying(tensors, metadata)


def as_float32(state_dict: Mapping[str, Tensor], path: Path | str) -> dict[str, Tensor]:
    """Every floating tensor of ``state_dict`` (read from ``path``) as float32; a warning names what was converted."""
    converted: dict[str, Tensor] = {}
    changed: dict[str, int] = {}
    for key, value in state_dict.items():
        if value.is_floating_point() and value.dtype != torch.float32:
            dtype = str(value.dtype).removeprefix("torch.")
            changed[dtype] = changed.get(dtype, 0) + 1
            value = value.float()
        converted[key] = value
    if changed:
        what = ", ".join(f"{count} {dtype}" for dtype, count in changed.items())
        logger.warning("%s: converted %s tensor(s) to float32 at load", path, what)
    return _carrying(converted, _metadata(state_dict))


def float32_module(module: nn.Module, path: Path | str) -> nn.Module:
    """``module`` with its floating parameters and buffers in float32 (a warning when any were not)."""
    others = {
        str(tensor.dtype).removeprefix("torch.")
        for tensor in [*module.parameters(), *module.buffers()]
        if tensor.is_floating_point() and tensor.dtype != torch.float32
    }
    if not others:
        return module
    logger.warning("%s: converted its %s weights to float32 at load", path, "/".join(sorted(others)))
    return module.float()


def with_versions(state_dict: Mapping[str, Tensor], model: nn.Module) -> Mapping[str, Tensor]:
    """``state_dict`` with module versions to load into ``model``: its own, else ``model``'s current ones.

    A file saved without them (safetensors, a rebuilt dict) holds tensors in the current layout,
    which is what a module assumes when it is told its current version.
    """
    if _metadata(state_dict) is not None:
        return state_dict
    return _carrying(dict(state_dict), _metadata(model.state_dict()))
