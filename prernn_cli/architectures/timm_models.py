"""timm models, named ``timm:NAME`` after a name in timm's registry (timm is an optional extra).

timm is imported only when a ``timm:`` name or a timm checkpoint needs it, so the base install
and ``prernn --help`` never load it. A name read from a file is data: it is looked up in
``timm.list_models()`` and built with ``timm.create_model``; nothing it names is imported.

The dataflow rule of :mod:`prernn_cli.surgery` reads some modules by type (conv, Linear,
BatchNorm, pooling, activations). Some timm modules are of those types but compute more, and
would be converted wrongly if read by type alone. timm's ``BatchNormAct2d`` (a ``BatchNorm2d``
that then applies ``drop`` and ``act``) becomes :class:`prernn_cli.surgery.norm_act.BatchNormAct2d`
(same state, same computation), which the rule reads as the BatchNorm followed by its activation.
The others (a subclass of it with its own forward; ``StdConv2d``/``ScaledStdConv2d``, which
standardise their weight; ``Conv2dSame``, which pads as TensorFlow does) each become an *opaque*
module: same parameters, buffers and forward, kept by torch.fx as one call (run in the model's
train or eval mode, like any torch layer), of no type the rule reads, so the rule does not convert
through it. timm's placeholders (``nn.Identity``
where a block has no drop-path, norm or final conv, ``nn.Dropout`` of rate 0) are traced
through, so they do not stand between a layer and its pooling.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import logging
from collections.abc import Mapping
from types import ModuleType

from torch import Tensor, nn

from prernn_cli.errors import ArchitectureError
from prernn_cli.spec import FrameKind, InputSpec
from prernn_cli.surgery.norm_act import BatchNormAct2d

__all__ = [
    "TIMM_NOT_INSTALLED",
    "TIMM_PREFIX",
    "build_timm",
    "is_timm_name",
    "is_timm_model",
    "timm_available",
    "timm_candidates",
    "timm_input",
    "timm_module",
    "timm_registry_name",
    "timm_version",
    "unknown_timm",
]

logger = logging.getLogger(__name__)

TIMM_PREFIX = "timm:"
TIMM_NOT_INSTALLED = "timm is not installed; pip install 'prernn[timm]'"

# Common timm models tried when bare weights are identified (after the torchvision models): one
# or a few sizes per family. The whole registry (over a thousand names) is never built for that.
_COMMON_MODELS = (
    "resnet10t",
    "resnet14t",
    "resnet18",
    "resnet18d",
    "resnet26",
    "resnet26d",
    "resnet34",
    "resnet34d",
    "resnet50",
    "resnet50d",
    "resnet101",
    "resnet152",
    "seresnet50",
    "resnext50_32x4d",
    "efficientnet_b0",
    "efficientnet_b1",
    "efficientnet_b2",
    "efficientnet_b3",
    "tf_efficientnet_b0",
    "efficientnet_lite0",
    "mobilenetv2_100",
    "mobilenetv3_small_050",
    "mobilenetv3_small_075",
    "mobilenetv3_small_100",
    "mobilenetv3_large_100",
    "mobilenetv4_conv_small",
    "regnetx_002",
    "regnetx_004",
    "regnetx_008",
    "regnety_002",
    "regnety_004",
    "regnety_008",
    "regnety_016",
    "convnext_atto",
    "convnext_femto",
    "convnext_pico",
    "convnext_nano",
    "convnext_tiny",
    "convnext_small",
    "convnext_base",
    "densenet121",
    "ghostnet_100",
    "mixnet_s",
    "vgg16",
    "vit_tiny_patch16_224",
    "vit_small_patch16_224",
    "vit_base_patch16_224",
    "deit_tiny_patch16_224",
)


def is_timm_name(name: object) -> bool:
    """Whether ``name`` has the form ``timm:NAME`` (whatever NAME is)."""
    return isinstance(name, str) and name.startswith(TIMM_PREFIX)


def timm_registry_name(name: str) -> str:
    """``NAME`` of ``timm:NAME``."""
    return name[len(TIMM_PREFIX) :]


def timm_module() -> ModuleType:
    """The ``timm`` package, imported on first use.

    Raises:
        ArchitectureError: timm is not installed (the message says how to install it).
    """
    try:
        return importlib.import_module("timm")
    except ImportError as error:
        raise ArchitectureError(TIMM_NOT_INSTALLED) from error


def timm_available() -> bool:
    """Whether timm can be imported."""
    try:
        timm_module()
    except ArchitectureError:
        return False
    return True


def timm_version() -> str:
    """timm's version (identification caches timm signatures per version)."""
    return str(timm_module().__version__)


@functools.cache
def _registry() -> frozenset[str]:
    return frozenset(timm_module().list_models())


def is_timm_model(name: object) -> bool:
    """Whether ``name`` is ``timm:NAME`` with NAME in timm's registry (an exact name, no pretrained tag).

    Raises:
        ArchitectureError: ``name`` is a ``timm:`` name and timm is not installed.
    """
    return is_timm_name(name) and timm_registry_name(str(name)) in _registry()


def unknown_timm(name: str) -> ArchitectureError:
    """The error for a ``timm:`` name timm does not know, naming the closest ones (or that timm is missing)."""
    if not timm_available():
        return ArchitectureError(TIMM_NOT_INSTALLED)
    bare = timm_registry_name(name)
    close = difflib.get_close_matches(bare, sorted(_registry()), n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(TIMM_PREFIX + match for match in close)}? " if close else ""
    return ArchitectureError(
        f"unknown timm model {bare!r}; {hint}list the names with python -c 'import timm; print(timm.list_models())'"
    )


# The module types torch.fx keeps as single calls and the dataflow rule reads by type.
_READ_BY_TYPE = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.Linear,
    nn.modules.batchnorm._BatchNorm,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.ReLU,
    nn.ReLU6,
    nn.Tanh,
    nn.Sigmoid,
    nn.GELU,
    nn.SiLU,
    nn.Hardswish,
    nn.LeakyReLU,
    nn.ELU,
)


class _TracedIdentity(nn.Identity):
    """``nn.Identity`` that torch.fx traces through (not a ``torch.nn`` leaf): no node in the graph."""

    def forward(self, input: Tensor) -> Tensor:  # noqa: A002 - nn.Identity's own argument name
        return input


def _torch_base(cls: type) -> type:
    return next(base for base in cls.__mro__ if base.__module__.startswith("torch."))


def _computes_otherwise(module: nn.Module, equivalent: tuple[type, ...]) -> bool:
    """Whether ``module`` is of a type the rule reads by type, but its own forward computes something else."""
    cls = type(module)
    if not isinstance(module, _READ_BY_TYPE) or cls.__module__.startswith("torch.") or cls in equivalent:
        return False
    if cls.forward is _torch_base(cls).forward:
        return False
    act, drop = getattr(module, "act", None), getattr(module, "drop", None)
    fused = isinstance(module, nn.modules.batchnorm._BatchNorm) and (act is not None or drop is not None)
    return not (fused and isinstance(act, nn.Identity) and isinstance(drop, nn.Identity))  # else a plain BatchNorm


# torch.fx keeps a module whose class lives in torch.nn as one call (its default leaf rule, which
# the tracer of prernn_cli.surgery extends by type). The opaque classes claim that namespace so
# that each stays one call, which runs in the model's train or eval mode (traced into, a
# BatchNorm's eval branch would be fixed in the graph), and which the rule reads as no layer.
_OPAQUE_NAMESPACE = "torch.nn.prernn_opaque"


@functools.cache
def _opaque_class(cls: type) -> type:
    """A plain ``nn.Module`` class with the methods ``cls`` adds to its torch base (its forward among them)."""
    namespace: dict[str, object] = {}
    for klass in reversed(cls.__mro__[: cls.__mro__.index(_torch_base(cls))]):
        namespace.update({key: value for key, value in vars(klass).items() if key not in ("__dict__", "__weakref__")})
    namespace.update(__module__=_OPAQUE_NAMESPACE, __qualname__=f"Opaque{cls.__name__}")
    return type(f"Opaque{cls.__name__}", (nn.Module,), namespace)


def _prepare_for_tracing(model: nn.Module, timm: ModuleType) -> list[str]:
    """Keep the dataflow rule from misreading timm's modules (see the module's docstring); the names of those changed.

    Placeholders (``nn.Identity``, ``nn.Dropout`` of rate 0) are traced through. timm's own
    ``BatchNormAct2d`` becomes prernn's, read as BatchNorm then activation. Any other module of a type
    the dataflow rule reads by type whose forward computes something else (a BatchNorm that applies
    an activation, a weight-standardised or "same"-padded conv) becomes an opaque module with the same
    parameters, buffers and forward: one call in the graph, of no type the rule reads. timm's
    ``Linear`` computes what ``nn.Linear`` does and stays one.
    """
    equivalent = (timm.layers.Linear, BatchNormAct2d)  # read by the rule as what they compute
    changed = []
    for name, module in model.named_modules():
        if type(module) is nn.Identity or (type(module) is nn.Dropout and module.p == 0):
            module.__class__ = _TracedIdentity  # both return their input, in training too
        elif type(module) is timm.layers.BatchNormAct2d:  # exactly timm's: its forward is BN, drop, act
            module.__class__ = BatchNormAct2d
        elif _computes_otherwise(module, equivalent):
            if "super" in type(module).forward.__code__.co_names:
                raise ArchitectureError(
                    f"timm module {name} ({type(module).__name__}) computes more than its type says and "
                    "cannot be made opaque to prernn's tracing; use another model or report it"
                )
            module.__class__ = _opaque_class(type(module))
            changed.append(name)
    return changed


def build_timm(name: str, num_classes: int | None, options: Mapping[str, object]) -> nn.Module:
    """``timm.create_model(NAME, pretrained=False, …)`` for ``timm:NAME`` (random weights: the caller loads them).

    Raises:
        ArchitectureError: timm is not installed, NAME is not in its registry, or the build fails.
    """
    timm = timm_module()
    if not is_timm_model(name):
        raise unknown_timm(name)
    kwargs = dict(options)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    try:
        model = timm.create_model(timm_registry_name(name), pretrained=False, **kwargs)
    except (TypeError, ValueError) as error:  # options it does not take (a RuntimeError goes to the meta-device retry)
        raise ArchitectureError(f"timm could not build {name} ({type(error).__name__}: {error})") from error
    changed = _prepare_for_tracing(model, timm)
    if changed:
        logger.debug("%s: opaque to the dataflow rule: %s", name, ", ".join(changed[:5]))
    return model


def timm_input(name: str) -> InputSpec:
    """The input ``timm:NAME`` expects: its default pretrained config's size, mean and std."""
    timm = timm_module()
    if not is_timm_model(name):
        raise unknown_timm(name)
    config = timm.models.get_pretrained_cfg(timm_registry_name(name))
    if config is None:
        logger.info("timm has no pretrained config for %s; assuming 224x224 RGB images", name)
        return InputSpec()
    channels, height, width = (int(side) for side in config.input_size)
    return InputSpec(
        frame_kind=FrameKind.IMAGE,
        channels=channels,
        size=(height, width),
        mean=tuple(float(value) for value in config.mean),
        std=tuple(float(value) for value in config.std),
    )


def timm_candidates(keys: Mapping[str, object]) -> list[str]:
    """The common timm models (``timm:NAME``) whose stem and classifier key names ``keys`` holds.

    Read from timm's pretrained configs (``first_conv``, ``classifier``): nothing is built. Empty
    when timm is not installed.
    """
    if not timm_available():
        return []
    timm = timm_module()
    found = []
    for bare in _COMMON_MODELS:
        if bare not in _registry():
            continue
        config = timm.models.get_pretrained_cfg(bare)
        first_conv = getattr(config, "first_conv", None)
        classifier = getattr(config, "classifier", None)
        needed = [f"{layer}.weight" for layer in (first_conv, classifier) if isinstance(layer, str)]
        if all(key in keys for key in needed):
            found.append(TIMM_PREFIX + bare)
    return found
