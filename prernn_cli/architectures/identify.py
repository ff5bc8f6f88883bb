"""Which known architecture a bare state_dict belongs to.

The key names and shapes of a checkpoint (its *signature*) are compared with those of
the known architectures, built on the ``meta`` device (no memory, no random init). The
signatures of the built-in architectures are cached on disk, so that a later run builds
nothing.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torchvision
from torchvision import models as tv_models

from prernn_cli.architectures.registry import (
    C3D_NAME,
    SAMPLE_ARCHITECTURES,
    build_empty_architecture,
    torchvision_models,
)
from prernn_cli.architectures.timm_models import is_timm_name, timm_candidates, timm_version
from prernn_cli.errors import CheckpointError

__all__ = [
    "ArchitectureMatch",
    "describe_mismatch",
    "fit_architecture",
    "identify_architecture",
    "match_architecture",
    "signature_cache_file",
]

logger = logging.getLogger(__name__)

Signature = Mapping[str, tuple[int, ...]]

# Torchvision models whose auxiliary classifiers (googlenet's aux1/aux2, inception_v3's AuxLogits)
# are often absent from saved weights: they are also tried built with aux_logits=False.
_AUX_LOGITS_MODELS = ("googlenet", "inception_v3")


@dataclass(frozen=True)
class ArchitectureMatch:
    """An architecture a state_dict fits, with what its build needs to load it strictly."""

    name: str
    num_classes: int | None = None  # None: the architecture's default output size
    options: Mapping[str, object] = field(default_factory=dict)  # builder keyword arguments


def _shapes(state_dict: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in state_dict.items() if isinstance(value, torch.Tensor)}


def signature_cache_file() -> Path:
    """Where the key names and shapes of the built-in architectures are cached between runs.

    ``$PRERNN_CACHE_DIR``, else ``$XDG_CACHE_HOME/prernn`` (``~/.cache/prernn``); one file per
    torch/torchvision version, since the architectures only change with them.
    """
    root = os.environ.get("PRERNN_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "prernn"
    )
    return Path(root) / f"architecture-signatures-torch{torch.__version__}-torchvision{torchvision.__version__}.json"


class _SignatureCache:
    """Signatures of the built-in architectures (default build), kept in memory and on disk."""

    def __init__(self) -> None:
        self.path: Path | None = None
        self.entries: dict[str, dict[str, list[int]]] = {}
        self.dirty = False

    def _sync_path(self) -> None:
        path = signature_cache_file()
        if path != self.path:
            self.path, self.entries, self.dirty = path, {}, False
            try:
                self.entries = json.loads(path.read_text())
            except (OSError, ValueError):
                self.entries = {}

    def get(self, name: str) -> Signature | None:
        self._sync_path()
        entry = self.entries.get(name)
        return {key: tuple(shape) for key, shape in entry.items()} if isinstance(entry, dict) else None

    def put(self, name: str, signature: Signature) -> None:
        self._sync_path()
        self.entries[name] = {key: list(shape) for key, shape in signature.items()}
        self.dirty = True

    def save(self) -> None:
        """Write new entries (best effort: a read-only home only costs speed)."""
        if not self.dirty or self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
            with os.fdopen(fd, "w") as handle:
                json.dump(self.entries, handle)
            os.replace(tmp, self.path)
            self.dirty = False
        except OSError as error:
            logger.info("could not write the architecture cache %s: %s", self.path, error)


_DISK_CACHE = _SignatureCache()


def _cacheable(name: str) -> bool:
    return name == C3D_NAME or name in torchvision_models() or is_timm_name(name)


@functools.cache
def _signature(name: str, num_classes: int | None, options: tuple[tuple[str, object], ...]) -> Signature:
    on_disk = num_classes is None and _cacheable(name)
    cache_key = name + "".join(f";{key}={value!r}" for key, value in options)
    if is_timm_name(name):
        cache_key += f";timm={timm_version()}"  # the file is per torch/torchvision version only
    if on_disk:
        cached = _DISK_CACHE.get(cache_key)
        if cached is not None:
            return cached
    model = build_empty_architecture(name, num_classes, **dict(options))
    signature = _shapes(model.state_dict())
    if on_disk:
        _DISK_CACHE.put(cache_key, signature)
    return signature


def _variants(name: str) -> list[dict[str, object]]:
    return [{}, {"aux_logits": False}] if name in _AUX_LOGITS_MODELS else [{}]


def _fmt_shape(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"


def describe_mismatch(expected: Signature, found: Signature, limit: int = 2) -> str:
    """One short line on how ``found`` (a checkpoint) differs from ``expected`` (an architecture)."""
    missing = [key for key in expected if key not in found]
    unexpected = [key for key in found if key not in expected]
    wrong = [key for key in expected if key in found and expected[key] != found[key]]
    parts = []
    if missing:
        parts.append(f"{len(missing)} key(s) missing (e.g. {', '.join(missing[:limit])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s) (e.g. {', '.join(unexpected[:limit])})")
    if wrong:
        examples = ", ".join(f"{key} {_fmt_shape(found[key])} vs {_fmt_shape(expected[key])}" for key in wrong[:limit])
        parts.append(f"{len(wrong)} shape mismatch(es) (e.g. {examples})")
    return "; ".join(parts) or "no difference"


def _head_classes(expected: Signature, found: Signature) -> int | None:
    """K when ``found`` differs from ``expected`` only in the output size of its head(s)."""
    if expected.keys() != found.keys():
        return None
    differing = [key for key in expected if expected[key] != found[key]]
    if not differing:
        return None
    sizes = set()
    for key in differing:
        a, b = expected[key], found[key]
        if len(a) != len(b) or a[1:] != b[1:]:
            return None
        sizes.add((a[0], b[0]))
    if len(sizes) != 1:
        return None
    return sizes.pop()[1]


def fit_architecture(name: str, state_dict: Mapping[str, torch.Tensor]) -> ArchitectureMatch:
    """How to build ``name`` so that ``state_dict`` loads strictly: its class count and builder options.

    Raises:
        CheckpointError: the weights do not fit ``name`` (saying briefly which keys/shapes disagree).
        ArchitectureError: ``name`` is unknown.
    """
    found = _shapes(state_dict)
    match, reason = _try_fit(name, found)
    if match is None:
        raise CheckpointError(
            f"the checkpoint does not fit architecture {name}: {reason}; pass the right --arch or omit it to identify it from the weights"
        )
    return match


def _try_fit(name: str, found: Signature) -> tuple[ArchitectureMatch | None, str]:
    first_reason = ""
    for options in _variants(name):
        key = tuple(sorted(options.items()))
        expected = _signature(name, None, key)
        if expected == found:
            return ArchitectureMatch(name, None, options), ""
        classes = _head_classes(expected, found)
        if classes is not None and _signature(name, classes, key) == found:
            return ArchitectureMatch(name, classes, options), ""
        first_reason = first_reason or describe_mismatch(expected, found)
    return None, first_reason


def _parameter_count(found: Signature) -> int:
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    return sum(math.prod(shape) for key, shape in found.items() if not key.endswith(buffers))


@functools.cache
def _published_parameter_counts() -> dict[str, int]:
    counts = {}
    for name in torchvision_models():
        entries = list(tv_models.get_model_weights(name))
        counts[name] = int(entries[0].meta.get("num_params", 0)) if entries else 0
    return counts


def _candidates(found: Signature) -> Iterator[str]:
    """Known architectures, the likeliest first (cheap checks before building anything).

    The small non-torchvision nets come first; torchvision models follow in order of how
    close their published parameter count is to the checkpoint's, so a checkpoint
    usually matches on the first or second model built. Common timm models come last (a
    torchvision model keeps priority when weights fit both), only those whose stem and
    classifier key names the checkpoint has.
    """
    total = max(_parameter_count(found), 1)
    counts = _published_parameter_counts()

    def distance(name: str) -> float:
        return abs(math.log(total / counts[name])) if counts.get(name) else math.inf

    yield from [C3D_NAME, *SAMPLE_ARCHITECTURES, *sorted(torchvision_models(), key=distance)]
    yield from timm_candidates(found)  # lazily: timm is imported only when no other architecture fits


def _key_overlap(expected: Signature, found: Signature) -> float:
    """How much of two signatures agrees: shared key names and shared shapes, each counted once."""
    common = len(expected.keys() & found.keys())
    same = sum(1 for key in expected.keys() & found.keys() if expected[key] == found[key])
    return (common + same) / (2 * len(expected.keys() | found.keys()))


def match_architecture(state_dict: Mapping[str, torch.Tensor]) -> ArchitectureMatch:
    """The known architecture whose key names and shapes ``state_dict`` has (the head may differ in size).

    Raises:
        CheckpointError: nothing matches; the message names the three closest candidates by key overlap.
    """
    found = _shapes(state_dict)
    if not found:
        raise CheckpointError("the checkpoint holds no tensors; give a file with a model's weights")
    overlaps: list[tuple[float, str]] = []
    for name in _candidates(found):
        match, _ = _try_fit(name, found)
        if match is not None:
            logger.info("identified architecture %s from the weights", name)
            _DISK_CACHE.save()
            return match
        overlaps.append((_key_overlap(_signature(name, None, ()), found), name))
    _DISK_CACHE.save()
    overlaps.sort(reverse=True)
    closest = ", ".join(f"{name} ({score:.0%} of keys)" for score, name in overlaps[:3])
    raise CheckpointError(
        f"the weights match no known architecture (closest: {closest}); pass --arch NAME, --arch timm:NAME for a timm "
        "model, or --arch package.module:callable for your own class"
    )


def identify_architecture(state_dict: Mapping[str, torch.Tensor]) -> str:
    """The name of the known architecture ``state_dict`` belongs to (see :func:`match_architecture`)."""
    return match_architecture(state_dict).name
