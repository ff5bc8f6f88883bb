"""The architectures prernn knows by name, and building them with random weights or on the meta device.

An architecture is named by a string:

* any torchvision classification or video model (``resnet50``, ``vgg16``, ``r3d_18`` …),
  built with ``torchvision.models.get_model(name, weights=None)``;
* ``c3d`` — :class:`~prernn_cli.architectures.c3d.C3D`, named as the common PyTorch port;
* ``digit_vgg``, ``digit_resnet``, ``digit_c3d`` — the sample nets of ``sample_models/``;
* ``timm:NAME`` — a model of timm's registry, built with ``timm.create_model(NAME, pretrained=False)``
  (timm is an optional extra, imported only for such a name: see
  :mod:`~prernn_cli.architectures.timm_models`);
* ``package.module:callable`` — a user's own class or factory, called with no
  arguments (or ``num_classes=…`` when a class count is given).

Importing a user's class runs its module's code, so only a name the user typed (``--arch``)
may be one: :func:`build_architecture` and :func:`build_empty_architecture` take such names.
A name read from a file goes to :func:`build_registered_architecture`, which builds the names
above the last one and never imports anything.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import logging
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torchvision import models as tv_models

from prernn_cli.architectures.c3d import C3D
from prernn_cli.architectures.samples import DigitC3D, DigitResNet, DigitVGG
from prernn_cli.architectures.timm_models import build_timm, is_timm_model, is_timm_name, unknown_timm
from prernn_cli.errors import ArchitectureError

__all__ = [
    "C3D_NAME",
    "SAMPLE_ARCHITECTURES",
    "build_architecture",
    "build_empty_architecture",
    "build_registered_architecture",
    "is_registered",
    "is_user_callable",
    "known_architectures",
    "torchvision_models",
    "unknown_architecture",
    "video_models",
]

logger = logging.getLogger(__name__)

C3D_NAME = "c3d"
_SAMPLE_CLASSES: dict[str, type[nn.Module]] = {
    "digit_vgg": DigitVGG,
    "digit_resnet": DigitResNet,
    "digit_c3d": DigitC3D,
}
SAMPLE_ARCHITECTURES = tuple(_SAMPLE_CLASSES)
# torchvision families prernn does not convert (their heads are not a per-frame classifier).
_OTHER_TORCHVISION_FAMILIES = {
    tv_models.detection: "a detection model",
    tv_models.segmentation: "a segmentation model",
    tv_models.optical_flow: "an optical-flow model",
    tv_models.quantization: "a quantized model",
}


@functools.cache
def _classification_models() -> tuple[str, ...]:
    return tuple(tv_models.list_models(module=tv_models))


@functools.cache
def video_models() -> tuple[str, ...]:
    """The torchvision video models (they take snippets)."""
    return tuple(tv_models.list_models(module=tv_models.video))


def torchvision_models() -> tuple[str, ...]:
    """The torchvision classification and video models prernn builds."""
    return _classification_models() + video_models()


def known_architectures() -> list[str]:
    """Every architecture name :func:`build_architecture` accepts (besides ``package.module:callable``)."""
    return [*torchvision_models(), C3D_NAME, *SAMPLE_ARCHITECTURES]


def is_user_callable(name: str) -> bool:
    """Whether ``name`` has the form ``package.module:callable`` (``timm:NAME`` names a timm model instead)."""
    return ":" in name and not is_timm_name(name)


def is_registered(name: object) -> bool:
    """Whether ``name`` is one prernn builds itself (never a user's class): safe to build whatever its source.

    Raises:
        ArchitectureError: ``name`` is a ``timm:`` name and timm is not installed.
    """
    return isinstance(name, str) and (name in known_architectures() or is_timm_model(name))


def unknown_architecture(name: str) -> ArchitectureError:
    """The error for a name prernn does not build, naming the closest known ones."""
    if is_timm_name(name):
        return unknown_timm(name)
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
        "c3d, digit_vgg, digit_resnet, digit_c3d, timm:NAME, or package.module:callable"
    )


def _load_user_callable(name: str) -> Callable[..., nn.Module]:
    module_name, _, attribute = name.partition(":")
    if not module_name or not attribute:
        raise ArchitectureError(
            f"architecture {name!r} is not of the form package.module:callable (e.g. mypkg.nets:MyNet)"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ArchitectureError(
            f"cannot import {module_name!r} for architecture {name!r} ({error}); make it importable (pip install it or add it to PYTHONPATH)"
        ) from error
    target = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ArchitectureError(
                f"module {module_name!r} has no attribute {attribute!r}; check the name after the colon in {name!r}"
            )
        target = getattr(target, part)
    if not callable(target):
        raise ArchitectureError(f"{name!r} is not callable; name a class or a function that returns an nn.Module")
    return target


def _call_user_callable(name: str, kwargs: Mapping[str, object]) -> nn.Module:
    factory = _load_user_callable(name)
    try:
        model = factory(**kwargs)
    except Exception as error:  # noqa: BLE001 - the user's own code may raise anything: report it as one line
        arguments = ", ".join(f"{key}={value!r}" for key, value in kwargs.items())
        raise ArchitectureError(f"calling {name}({arguments}) failed: {type(error).__name__}: {error}") from error
    if not isinstance(model, nn.Module):
        raise ArchitectureError(f"{name} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def _construct(
    name: str, num_classes: int | None, options: Mapping[str, object], user_callable: bool = True
) -> nn.Module:
    kwargs: dict[str, object] = dict(options)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if name in torchvision_models():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # googlenet / inception_v3 warn about their init scheme
            return tv_models.get_model(name, weights=None, **kwargs)
    if name == C3D_NAME:
        return C3D(**kwargs)
    if name in _SAMPLE_CLASSES:
        return _SAMPLE_CLASSES[name](**kwargs)
    if is_timm_name(name):
        return build_timm(name, num_classes, options)
    if user_callable and is_user_callable(name):
        return _call_user_callable(name, kwargs)
    raise unknown_architecture(name)


def build_architecture(name: str, num_classes: int | None = None, **options: object) -> nn.Module:
    """Build architecture ``name`` with random weights (on the CPU, in eval mode).

    Args:
        name: a known architecture (see :func:`known_architectures`) or ``package.module:callable``
            (imported and called: only for a name the user gave, never one read from a file).
        num_classes: size of the output layer; the architecture's own default when ``None``.
        options: extra keyword arguments for the torchvision builder (e.g. ``aux_logits=False``).

    Raises:
        ArchitectureError: unknown name (naming the closest known ones) or a builder that fails.
    """
    model = _construct(name, num_classes, options)
    return model.eval()


# ---------------------------------------------------------------- building on the meta device

# The public initialisers torch hands to a function mode before running them, and the in-place
# tensor methods the others are made of: on a meta tensor each only sets values it does not have.
_INITIALISERS = frozenset(
    getattr(nn.init, name) for name in dir(nn.init) if name.endswith("_") and not name.startswith("_")
)
_VALUE_METHODS = frozenset(
    getattr(torch.Tensor, name)
    for name in ("uniform_", "normal_", "fill_", "zero_", "erfinv_", "mul_", "add_", "sub_", "div_", "clamp_", "copy_")
)
_SKIPPED_ON_META = _INITIALISERS | _VALUE_METHODS
# The factories that make new tensors (those torch.device("meta") redirects, less the exotic ones).
# A tensor made by another one is created on the CPU and moved to meta once the model is built.
_FACTORIES = frozenset(
    (
        torch.empty,
        torch.empty_strided,
        torch.zeros,
        torch.ones,
        torch.full,
        torch.eye,
        torch.arange,
        torch.linspace,
        torch.logspace,
        torch.rand,
        torch.randn,
        torch.randint,
        torch.randperm,
        torch.tensor,
        torch.as_tensor,
        torch.asarray,
        torch.scalar_tensor,
        torch.tril_indices,
        torch.triu_indices,
    )
)


class _MetaConstruction(TorchFunctionMode):
    """While a model is built: make the tensors of ``factories`` on meta, and leave meta tensors uninitialised.

    A meta tensor has a shape but no values, so initialising it changes nothing; torch would
    still run each initialiser's Python reference code to check shapes, which makes a large
    model several times slower to build. One mode does both (a second mode, as
    ``torch.device("meta")`` is, would double the cost of every torch call while building).
    Like every function mode it acts in the current thread only, inside its ``with`` block
    only, whatever the builder raises.
    """

    def __init__(self, factories: frozenset[Callable[..., torch.Tensor]]) -> None:
        super().__init__()
        self.factories = factories

    def __torch_function__(
        self, func: Callable[..., Any], types: Any, args: tuple = (), kwargs: dict | None = None
    ) -> Any:
        kwargs = kwargs or {}
        if func in self.factories:
            if kwargs.get("device") is None:
                kwargs["device"] = "meta"
        elif func in _SKIPPED_ON_META:
            target = args[0] if args else kwargs["tensor"]
            if target.is_meta:
                return target
        return func(*args, **kwargs)


def build_empty_architecture(name: str, num_classes: int | None = None, **options: object) -> nn.Module:
    """Build ``name`` with every parameter and buffer on the ``meta`` device (shapes only, no memory, no init).

    ``name`` may be a user's ``package.module:callable``: only for a name the user gave.
    """
    return _build_empty(name, num_classes, options, user_callable=True)


def build_registered_architecture(name: str, num_classes: int | None = None) -> nn.Module:
    """:func:`build_empty_architecture` for a name read from a file: registered names only, nothing imported.

    Raises:
        ArchitectureError: any other name, a user's ``package.module:callable`` included.
    """
    if not is_registered(name):
        raise unknown_architecture(str(name))
    return _build_empty(name, num_classes, {}, user_callable=False)


def _build_empty(name: str, num_classes: int | None, options: Mapping[str, object], user_callable: bool) -> nn.Module:
    try:
        with _MetaConstruction(_FACTORIES):
            model = _construct(name, num_classes, options, user_callable)
    except (NotImplementedError, RuntimeError) as error:  # what torch raises for reading values of a meta tensor
        # A builder that computes with tensors while constructing (regnet derives its widths with
        # torch.arange): only torch.empty, with which torch's layers allocate their parameters, makes
        # meta tensors; its computations, and small buffers made with torch.zeros/ones, stay on the CPU.
        logger.debug(
            "%s computes with tensors while it is built (%s); only its parameters are made on meta", name, error
        )
        with _MetaConstruction(frozenset({torch.empty})):
            model = _construct(name, num_classes, options, user_callable)
    if any(not tensor.is_meta for tensor in [*model.parameters(), *model.buffers()]):
        model = model.to("meta")  # tensors made by other factories, or on a device the builder chose
    return model.eval()
