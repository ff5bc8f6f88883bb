"""What each architecture expects as one time step's input, and the paper's names for its layers."""

from __future__ import annotations

import functools
import logging

from torch import nn
from torchvision import models as tv_models

from prernn_cli.architectures.c3d import C3D_MEAN, C3D_STD
from prernn_cli.architectures.registry import (
    C3D_NAME,
    SAMPLE_ARCHITECTURES,
    is_user_callable,
    known_architectures,
    torchvision_models,
    unknown_architecture,
    video_models,
)
from prernn_cli.architectures.samples import SAMPLE_MEAN, SAMPLE_STD
from prernn_cli.architectures.timm_models import is_timm_model, timm_input
from prernn_cli.spec import FrameKind, InputSpec

__all__ = ["architecture_input", "has_known_input", "paper_aliases"]

logger = logging.getLogger(__name__)

_VIDEO_SNIPPET_LENGTH = 16


def _weights_input(name: str) -> InputSpec:
    entries = list(tv_models.get_model_weights(name))
    transforms = [entry.transforms() for entry in entries]
    # The smallest crop among a model's published weights is the size its weights=None build expects
    # (ViTs fix their position embeddings at 224; the SWAG weights are fine-tuned larger).
    crop = min(int(t.crop_size[0]) for t in transforms)
    first = transforms[0]
    mean = tuple(float(v) for v in first.mean)
    std = tuple(float(v) for v in first.std)
    if name in video_models():
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
    if name is not None and is_timm_model(name):
        return True
    return name is not None and not is_user_callable(name) and name in known_architectures()


@functools.cache
def architecture_input(name: str) -> InputSpec:
    """The input one time step of ``name`` expects: 2D image or 3D snippet, size, normalisation.

    Torchvision models take theirs from the metadata of their published weights
    (crop size, mean, std, minimum snippet length); C3D takes 16×112×112 snippets
    with the port's Caffe means; the sample nets 32×32 images (digit_c3d: snippets
    of 4). A user's own class is assumed to take 224×224 RGB images (see
    :func:`has_known_input`).
    """
    if name in torchvision_models():
        return _weights_input(name)
    if name == C3D_NAME:
        return InputSpec(frame_kind=FrameKind.SNIPPET, size=(112, 112), snippet_length=16, mean=C3D_MEAN, std=C3D_STD)
    if name in SAMPLE_ARCHITECTURES:
        if name == "digit_c3d":
            return InputSpec(
                frame_kind=FrameKind.SNIPPET, size=(32, 32), snippet_length=4, mean=SAMPLE_MEAN, std=SAMPLE_STD
            )
        return InputSpec(frame_kind=FrameKind.IMAGE, size=(32, 32), mean=SAMPLE_MEAN, std=SAMPLE_STD)
    if is_timm_model(name):
        return timm_input(name)
    if is_user_callable(name):
        logger.info("no known input for %s; assuming 224x224 RGB images", name)
        return InputSpec()
    raise unknown_architecture(name)


# ---------------------------------------------------------------- paper aliases


def _family(name: str) -> str:
    return name.rsplit(":", 1)[-1].lower()


def _fc_aliases(family: str, modules: dict[str, nn.Module]) -> dict[str, str]:
    """fc6 and fc7: modules of those names, else the first two Linear layers of a VGG-style ``classifier``."""
    aliases = {alias: alias for alias in ("fc6", "fc7") if isinstance(modules.get(alias), nn.Linear)}
    if not aliases and (family.startswith(("vgg", "alexnet")) or family == "digit_vgg"):
        classifier = modules.get("classifier")
        if isinstance(classifier, nn.Sequential):
            linears = [f"classifier.{index}" for index, child in enumerate(classifier) if isinstance(child, nn.Linear)]
            if len(linears) >= 3:
                aliases["fc6"], aliases["fc7"] = linears[0], linears[1]
    return aliases


def _res5c_aliases(family: str, modules: dict[str, nn.Module]) -> dict[str, str]:
    """res5c (and res5c-branch2c for a Bottleneck): the last conv of a ResNet-style net's last block."""
    if not (family.startswith(("resnet", "resnext", "wide_resnet")) or family == "digit_resnet"):
        return {}
    stages = sorted(
        (module_name for module_name in modules if module_name.startswith("layer") and module_name[5:].isdigit()),
        key=lambda module_name: int(module_name[5:]),
    )
    if not stages:
        return {}
    last_stage = modules[stages[-1]]
    if not isinstance(last_stage, nn.Sequential) or not len(last_stage):
        return {}
    block = f"{stages[-1]}.{len(last_stage) - 1}"
    if isinstance(modules.get(f"{block}.conv3"), nn.Conv2d):
        # both names; "res5c" last, so that it is the one shown (a name's last alias wins)
        return {"res5c-branch2c": f"{block}.conv3", "res5c": f"{block}.conv3"}
    if isinstance(modules.get(f"{block}.conv2"), nn.Conv2d):
        return {"res5c": f"{block}.conv2"}
    return {}


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
    family = _family(name or "")
    return {**_fc_aliases(family, modules), **_res5c_aliases(family, modules)}
