"""Known backbones: torchvision's classification and video models, C3D, the sample nets, user classes.

An architecture is named by a string:

* any torchvision classification or video model (``resnet50``, ``vgg16``, ``r3d_18`` …),
  built with ``torchvision.models.get_model(name, weights=None)``;
* ``c3d`` — :class:`~prernn_cli.architectures.c3d.C3D`, named as the common PyTorch port;
* ``digit_vgg``, ``digit_resnet``, ``digit_c3d`` — the sample nets of ``sample_models/``;
* ``package.module:callable`` — a user's own class or factory, called with no
  arguments (or ``num_classes=…`` when a class count is given).

:func:`identify_architecture` finds the architecture a bare state_dict belongs to by
comparing its key names and shapes with those of the known architectures, built on
the ``meta`` device (no memory, no random init).
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import importlib
import json
import logging
import math
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping

import torch
import torchvision
from torch import nn
from torchvision import models as tv_models

from prernn_cli.errors import ArchitectureError, CheckpointError
from prernn_cli.spec import FrameKind, InputSpec

__all__ = [
    "ArchitectureMatch",
    "architecture_input",
    "build_architecture",
    "build_empty_architecture",
    "fit_architecture",
    "has_known_input",
    "identify_architecture",
    "known_architectures",
    "match_architecture",
    "paper_aliases",
]

logger = logging.getLogger(__name__)

SAMPLE_ARCHITECTURES = ("digit_vgg", "digit_resnet", "digit_c3d")
C3D_NAME = "c3d"
_SAMPLE_CLASSES = {"digit_vgg": "DigitVGG", "digit_resnet": "DigitResNet", "digit_c3d": "DigitC3D"}
# torchvision families prernn does not convert (their heads are not a per-frame classifier).
_OTHER_TORCHVISION_FAMILIES = {
    tv_models.detection: "a detection model",
    tv_models.segmentation: "a segmentation model",
    tv_models.optical_flow: "an optical-flow model",
    tv_models.quantization: "a quantized model",
}
_VIDEO_SNIPPET_LENGTH = 16
# Torchvision models whose auxiliary classifiers are often absent from saved weights.
_AUX_LOGITS_MODELS = {"googlenet": ("aux1.", "aux2."), "inception_v3": ("AuxLogits.",)}


@functools.lru_cache(maxsize=None)
def _classification_models() -> tuple[str, ...]:
    return tuple(tv_models.list_models(module=tv_models))


@functools.lru_cache(maxsize=None)
def _video_models() -> tuple[str, ...]:
    return tuple(tv_models.list_models(module=tv_models.video))


def _torchvision_models() -> tuple[str, ...]:
    return _classification_models() + _video_models()


def known_architectures() -> list[str]:
    """Every architecture name :func:`build_architecture` accepts (besides ``package.module:callable``)."""
    return [*_torchvision_models(), C3D_NAME, *SAMPLE_ARCHITECTURES]


def _is_user_callable(name: str) -> bool:
    return ":" in name


def _unknown_architecture(name: str) -> ArchitectureError:
    for module, what in _OTHER_TORCHVISION_FAMILIES.items():
        if name in tv_models.list_models(module=module):
            return ArchitectureError(
                f"{name} is {what}; prernn converts classification and video backbones "
                "(e.g. resnet50, vgg16, r3d_18, c3d)"
            )
    close = difflib.get_close_matches(name, known_architectures(), n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    return ArchitectureError(
        f"unknown architecture {name!r}; {hint}use a torchvision classification or video model name, "
        "c3d, digit_vgg, digit_resnet, digit_c3d, or package.module:callable"
    )


def _load_user_callable(name: str) -> Callable[..., nn.Module]:
    module_name, _, attribute = name.partition(":")
    if not module_name or not attribute:
        raise ArchitectureError(f"architecture {name!r} is not of the form package.module:callable (e.g. mypkg.nets:MyNet)")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ArchitectureError(
            f"cannot import {module_name!r} for architecture {name!r} ({error}); make it importable (pip install it or add it to PYTHONPATH)"
        ) from error
    target = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ArchitectureError(f"module {module_name!r} has no attribute {attribute!r}; check the name after the colon in {name!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ArchitectureError(f"{name!r} is not callable; name a class or a function that returns an nn.Module")
    return target


def _construct(name: str, num_classes: int | None, options: Mapping[str, object]) -> nn.Module:
    kwargs: dict[str, object] = dict(options)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if name in _torchvision_models():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # googlenet / inception_v3 warn about their init scheme
            return tv_models.get_model(name, weights=None, **kwargs)
    if name == C3D_NAME:
        from prernn_cli.architectures.c3d import C3D

        return C3D(**kwargs)
    if name in _SAMPLE_CLASSES:
        from prernn_cli.architectures import samples

        return getattr(samples, _SAMPLE_CLASSES[name])(**kwargs)
    if _is_user_callable(name):
        factory = _load_user_callable(name)
        try:
            model = factory(**kwargs)
        except Exception as error:  # the user's own code: report it as one line
            raise ArchitectureError(f"calling {name}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())}) failed: {type(error).__name__}: {error}") from error
        if not isinstance(model, nn.Module):
            raise ArchitectureError(f"{name} returned a {type(model).__name__}, not a torch.nn.Module")
        return model
    raise _unknown_architecture(name)


def build_architecture(name: str, num_classes: int | None = None, **options: object) -> nn.Module:
    """Build architecture ``name`` with random weights (on the CPU, in eval mode).

    Args:
        name: a known architecture (see :func:`known_architectures`) or ``package.module:callable``.
        num_classes: size of the output layer; the architecture's own default when ``None``.
        options: extra keyword arguments for the torchvision builder (e.g. ``aux_logits=False``).

    Raises:
        ArchitectureError: unknown name (naming the closest known ones) or a builder that fails.
    """
    model = _construct(name, num_classes, options)
    return model.eval()


@contextlib.contextmanager
def _no_init() -> Iterator[None]:
    """Make every ``torch.nn.init`` initialiser a no-op (on ``meta`` they would run as slow reference code)."""

    def no_init(tensor: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        return tensor

    initialisers = {name: getattr(nn.init, name) for name in dir(nn.init) if name.endswith("_") and not name.startswith("_")}
    for name in initialisers:
        setattr(nn.init, name, no_init)
    try:
        yield
    finally:
        for name, function in initialisers.items():
            setattr(nn.init, name, function)


@contextlib.contextmanager
def _registered_on_meta() -> Iterator[None]:
    """Move every parameter and buffer to ``meta`` as it is registered.

    For builders that compute with tensors in ``__init__`` (regnet) and so fail under
    ``torch.device("meta")``: tensors are made on the CPU with ``torch.empty`` (pages
    never touched) and moved before anything initialises them.
    """
    register_parameter = nn.Module.register_parameter
    register_buffer = nn.Module.register_buffer

    def on_meta_parameter(self: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register_parameter(self, name, param)

    def on_meta_buffer(self: nn.Module, name: str, tensor: torch.Tensor | None, persistent: bool = True) -> None:
        if tensor is not None:
            tensor = tensor.to("meta")
        register_buffer(self, name, tensor, persistent)

    nn.Module.register_parameter = on_meta_parameter  # type: ignore[method-assign]
    nn.Module.register_buffer = on_meta_buffer  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = register_parameter  # type: ignore[method-assign]
        nn.Module.register_buffer = register_buffer  # type: ignore[method-assign]


def build_empty_architecture(name: str, num_classes: int | None = None, **options: object) -> nn.Module:
    """Build ``name`` with every parameter and buffer on the ``meta`` device (shapes only, no memory, no init)."""
    try:
        with _no_init(), torch.device("meta"):
            model = _construct(name, num_classes, options)
    except ArchitectureError:
        raise
    except Exception:  # noqa: BLE001 - a builder that computes with tensors while constructing
        with _no_init(), _registered_on_meta():
            model = _construct(name, num_classes, options)
    stray = [key for key, tensor in [*model.named_parameters(), *model.named_buffers()] if not tensor.is_meta]
    if stray:  # a module that bypasses register_parameter/register_buffer
        model = model.to("meta")
    return model.eval()


# ---------------------------------------------------------------- expected input


def _weights_input(name: str) -> InputSpec:
    entries = list(tv_models.get_model_weights(name))
    video = name in _video_models()
    transforms = [entry.transforms() for entry in entries]
    # The smallest crop among a model's published weights is the size its weights=None build expects
    # (ViTs fix their position embeddings at 224; the SWAG weights are fine-tuned larger).
    crop = min(int(t.crop_size[0]) for t in transforms)
    first = transforms[0]
    mean = tuple(float(v) for v in first.mean)
    std = tuple(float(v) for v in first.std)
    if video:
        temporal = max(int(entry.meta.get("min_temporal_size", 1)) for entry in entries)
        return InputSpec(
            frame_kind=FrameKind.SNIPPET,
            size=(crop, crop),
            snippet_length=max(_VIDEO_SNIPPET_LENGTH, temporal),
            mean=mean,
            std=std,
        )
    return InputSpec(frame_kind=FrameKind.IMAGE, size=(crop, crop), mean=mean, std=std)


def has_known_input(name: str | None) -> bool:
    """Whether :func:`architecture_input` knows ``name``'s input (otherwise it assumes a 224×224 RGB image)."""
    return name is not None and not _is_user_callable(name) and name in known_architectures()


@functools.lru_cache(maxsize=None)
def architecture_input(name: str) -> InputSpec:
    """The input one time step of ``name`` expects: 2D image or 3D snippet, size, normalisation.

    Torchvision models take theirs from the metadata of their published weights
    (crop size, mean, std, minimum snippet length); C3D takes 16×112×112 snippets
    with the port's Caffe means; the sample nets 32×32 images (digit_c3d: snippets
    of 4). A user's own class is assumed to take 224×224 RGB images (see
    :func:`has_known_input`).
    """
    if name in _torchvision_models():
        return _weights_input(name)
    if name == C3D_NAME:
        from prernn_cli.architectures.c3d import C3D_MEAN, C3D_STD

        return InputSpec(frame_kind=FrameKind.SNIPPET, size=(112, 112), snippet_length=16, mean=C3D_MEAN, std=C3D_STD)
    if name in SAMPLE_ARCHITECTURES:
        half = (0.5, 0.5, 0.5)
        if name == "digit_c3d":
            return InputSpec(frame_kind=FrameKind.SNIPPET, size=(32, 32), snippet_length=4, mean=half, std=half)
        return InputSpec(frame_kind=FrameKind.IMAGE, size=(32, 32), mean=half, std=half)
    if _is_user_callable(name):
        logger.info("no known input for %s; assuming 224x224 RGB images", name)
        return InputSpec()
    raise _unknown_architecture(name)


# ---------------------------------------------------------------- paper aliases


def _family(name: str) -> str:
    return name.rsplit(":", 1)[-1].lower()


def paper_aliases(name: str | None, model: nn.Module) -> dict[str, str]:
    """The paper's layer names on ``model``: ``{"fc6": "classifier.0", "fc7": "classifier.3"}`` etc.

    * modules literally named ``fc6``/``fc7`` (C3D and its sample) are their own aliases;
    * VGG-style nets (``vgg*``, ``alexnet``, ``digit_vgg``): the first two Linear layers of
      ``classifier`` are fc6 and fc7;
    * ResNet-style nets (``resnet*``, ``resnext*``, ``wide_resnet*``, ``digit_resnet``):
      ``res5c`` is the last conv of the last residual block (``conv3`` of a Bottleneck,
      ``conv2`` of a BasicBlock); ``res5c-branch2c`` too for a Bottleneck.
    """
    modules = dict(model.named_modules())
    aliases: dict[str, str] = {}
    family = _family(name or "")
    for alias in ("fc6", "fc7"):
        if isinstance(modules.get(alias), nn.Linear):
            aliases[alias] = alias
    if not aliases and (family.startswith(("vgg", "alexnet")) or family == "digit_vgg"):
        classifier = modules.get("classifier")
        if isinstance(classifier, nn.Sequential):
            linears = [f"classifier.{index}" for index, child in enumerate(classifier) if isinstance(child, nn.Linear)]
            if len(linears) >= 3:
                aliases["fc6"], aliases["fc7"] = linears[0], linears[1]
    if family.startswith(("resnet", "resnext", "wide_resnet")) or family == "digit_resnet":
        stages = sorted(
            (module_name for module_name in modules if module_name.startswith("layer") and module_name[5:].isdigit()),
            key=lambda module_name: int(module_name[5:]),
        )
        if stages:
            last_stage = modules[stages[-1]]
            if isinstance(last_stage, nn.Sequential) and len(last_stage):
                block = f"{stages[-1]}.{len(last_stage) - 1}"
                if isinstance(modules.get(f"{block}.conv3"), nn.Conv2d):
                    # both names; "res5c" last, so that it is the one shown (a name's last alias wins)
                    aliases["res5c-branch2c"] = aliases["res5c"] = f"{block}.conv3"
                elif isinstance(modules.get(f"{block}.conv2"), nn.Conv2d):
                    aliases["res5c"] = f"{block}.conv2"
    return aliases


# ---------------------------------------------------------------- identification from weights

Signature = Mapping[str, tuple[int, ...]]


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
    root = os.environ.get("PRERNN_CACHE_DIR") or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "prernn")
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
    return name == C3D_NAME or name in _torchvision_models()


@functools.lru_cache(maxsize=None)
def _signature(name: str, num_classes: int | None, options: tuple[tuple[str, object], ...]) -> Signature:
    on_disk = num_classes is None and _cacheable(name)
    cache_key = name + "".join(f";{key}={value!r}" for key, value in options)
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
        raise CheckpointError(f"the checkpoint does not fit architecture {name}: {reason}; pass the right --arch or omit it to identify it from the weights")
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


@functools.lru_cache(maxsize=None)
def _published_parameter_counts() -> dict[str, int]:
    counts = {}
    for name in _torchvision_models():
        entries = list(tv_models.get_model_weights(name))
        counts[name] = int(entries[0].meta.get("num_params", 0)) if entries else 0
    return counts


def _candidates(found: Signature) -> list[str]:
    """Known architectures, the likeliest first (cheap checks before building anything).

    The small non-torchvision nets come first; torchvision models follow in order of how
    close their published parameter count is to the checkpoint's, so a checkpoint
    usually matches on the first or second model built.
    """
    total = max(_parameter_count(found), 1)
    counts = _published_parameter_counts()

    def distance(name: str) -> float:
        return abs(math.log(total / counts[name])) if counts.get(name) else math.inf

    return [C3D_NAME, *SAMPLE_ARCHITECTURES, *sorted(_torchvision_models(), key=distance)]


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
        expected = _signature(name, None, ())
        common = len(expected.keys() & found.keys())
        same = sum(1 for key in expected.keys() & found.keys() if expected[key] == found[key])
        overlaps.append(((common + same) / (2 * len(expected.keys() | found.keys())), name))
    _DISK_CACHE.save()
    overlaps.sort(reverse=True)
    closest = ", ".join(f"{name} ({score:.0%} of keys)" for score, name in overlaps[:3])
    raise CheckpointError(
        f"the weights match no known architecture (closest: {closest}); pass --arch NAME, or --arch package.module:callable for your own class"
    )


def identify_architecture(state_dict: Mapping[str, torch.Tensor]) -> str:
    """The name of the known architecture ``state_dict`` belongs to (see :func:`match_architecture`)."""
    return match_architecture(state_dict).name
