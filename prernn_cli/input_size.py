"""The input size a model runs at: chosen at ``convert`` (``--input-size``, ``--snippet-length``), changed at ``train``.

:func:`input_at` applies the user's choice to a network's own :class:`~prernn_cli.spec.InputSpec`;
:func:`report_at` and :func:`resolve_at` trace the network there and say, naming the size, when
it does not run or a layer is not convertible at it; :func:`resize_model` moves an already
converted model to another size after a dry run on the meta device proves its weights still fit.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Optional

import torch
from torch import nn

from prernn_cli.architectures import build_empty_architecture, build_registered_architecture, is_registered
from prernn_cli.errors import ConversionError, LayerError
from prernn_cli.model import RecurrentModel, build_recurrent_model
from prernn_cli.spec import FrameKind, InputSpec, Modality, ModelSpec
from prernn_cli.surgery import LayerReport, NetworkReport, network_report, resolve_layers
from prernn_cli.surgery.first_conv import with_input_channels

__all__ = ["MAX_INPUT_SIDE", "MAX_SNIPPET_LENGTH", "input_at", "input_words", "report_at", "resize_model", "resolve_at"]

log = logging.getLogger(__name__)

MAX_INPUT_SIDE = 4096  # --input-size: 4K video's long side; a larger frame is a typo, not a video
MAX_SNIPPET_LENGTH = 1024  # --snippet-length: frames per step of a 3D backbone


def input_words(spec: InputSpec) -> str:
    """An input size as messages name it: ``112×112 frames`` or ``snippets of 16 112×112 frames``."""
    frames = "×".join(str(side) for side in spec.size) + " frames"
    return f"snippets of {spec.frames_per_step} {frames}" if spec.frame_kind is FrameKind.SNIPPET else frames


def input_at(own: InputSpec, size: Optional[Sequence[int]] = None, snippet_length: Optional[int] = None) -> InputSpec:
    """``own`` at the frame size (height, width) and, for a 3D backbone, the frames per step the user chose.

    Raises:
        ConversionError: a side or a snippet length out of range, or a snippet length for a 2D backbone.
    """
    changes: dict = {}
    if size is not None:
        height, width = (int(side) for side in size)
        if not (1 <= height <= MAX_INPUT_SIDE and 1 <= width <= MAX_INPUT_SIDE):
            raise ConversionError(
                f"--input-size {height if height == width else f'{height}x{width}'} is outside 1..{MAX_INPUT_SIDE} "
                "pixels a side; give e.g. 112 or 112x160"
            )
        changes["size"] = (height, width)
    if snippet_length is not None:
        if own.frame_kind is not FrameKind.SNIPPET:
            raise ConversionError(
                "--snippet-length is for 3D backbones, whose steps are snippets of frames; "
                "this network takes one frame per step: drop --snippet-length"
            )
        if not 1 <= snippet_length <= MAX_SNIPPET_LENGTH:
            raise ConversionError(f"--snippet-length {snippet_length} is outside 1..{MAX_SNIPPET_LENGTH} frames")
        changes["snippet_length"] = int(snippet_length)
    return replace(own, **changes)


def _size_flags(spec: InputSpec) -> str:
    """The options that choose ``spec``'s size, for a message's fix."""
    return "an --input-size and --snippet-length" if spec.frame_kind is FrameKind.SNIPPET else "an --input-size"


def report_at(
    model: nn.Module, architecture: str, input_spec: InputSpec, aliases: Mapping[str, str], own: InputSpec
) -> NetworkReport:
    """:func:`~prernn_cli.surgery.network_report` at ``input_spec``, refusing a chosen size the network does not run at.

    Raises:
        ConversionError: ``input_spec`` is not the network's ``own`` input and the network does not run on it.
    """
    report = network_report(model, input_spec, aliases)
    if not report.traced and input_spec != own:
        raise ConversionError(
            f"at {input_words(input_spec)}: {report.trace_error}; {architecture} runs on {input_words(own)}: "
            f"choose {_size_flags(own)} it runs at"
        )
    return report


def resolve_at(
    report: NetworkReport, names: Sequence[str], aliases: Mapping[str, str], input_spec: InputSpec, own: InputSpec
) -> list[LayerReport]:
    """:func:`~prernn_cli.surgery.resolve_layers`, naming the chosen input size when a layer is not convertible there."""
    try:
        return resolve_layers(report, names, aliases)
    except LayerError as error:
        if input_spec == own:
            raise
        raise LayerError(f"at {input_words(input_spec)}: {error}") from error


def _empty_base(spec: ModelSpec, user_class: Optional[str]) -> nn.Module:
    """``spec``'s base network on the meta device; a user's class only as the user named it to load the model."""
    if is_registered(spec.base_architecture):
        base = build_registered_architecture(spec.base_architecture, spec.base_num_classes)
        if spec.input.modality is not Modality.RGB:  # a depth or flow stream: its first convolution's channels
            base = with_input_channels(base, spec.input.channels, init=False)
        return base
    if user_class != spec.base_architecture:
        raise ConversionError(f"the model was built on the user class {spec.base_architecture}; pass --arch with it")
    return build_empty_architecture(user_class, num_classes=spec.base_num_classes)


def _dims(shape: Sequence[int]) -> str:
    return "×".join(str(size) for size in shape)


def _check_same_shapes(model: RecurrentModel, resized: RecurrentModel) -> None:
    """Raise ConversionError where ``resized`` would hand its layers other per-frame shapes, or need other weights."""
    spec, words = model.spec, input_words(resized.spec.input)
    keep = f"keep {input_words(spec.input)}, or convert the network again at this size"
    names = [layer.name for layer in spec.layers]
    for old, new, after in zip(
        [*model.between_shapes, model.head_shape], [*resized.between_shapes, resized.head_shape], names
    ):
        if tuple(old) != tuple(new):
            raise ConversionError(
                f"at {words}, what follows {after} would get {_dims(new)} per frame where the model has {_dims(old)}; {keep}"
            )
    old_shapes = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    new_shapes = {key: tuple(value.shape) for key, value in resized.state_dict().items()}
    for key in sorted(old_shapes.keys() | new_shapes.keys()):
        if old_shapes.get(key) != new_shapes.get(key):
            raise ConversionError(
                f"at {words}, {spec.base_architecture}'s {key} would be {new_shapes.get(key)} where the model has "
                f"{old_shapes.get(key)}; {keep}"
            )


def resize_model(
    model: RecurrentModel,
    size: Optional[Sequence[int]] = None,
    snippet_length: Optional[int] = None,
    user_class: Optional[str] = None,
) -> RecurrentModel:
    """Set a converted ``model`` to run on another input size, when its network allows it (``train --input-size``).

    A dry run on the meta device checks the size: the base network runs there, the converted layers
    stay convertible, the model runs end to end, and every per-frame shape after a recurrent layer
    (the parts between them, the head) and every weight keep their shapes. Only the spec's input changes.

    Raises:
        ConversionError, LayerError: a size the network does not allow, naming it and why.
    """
    spec = model.spec
    target = input_at(spec.input, size, snippet_length)
    if target == spec.input:
        return model
    base = _empty_base(spec, user_class)
    report = report_at(base, spec.base_architecture, target, {}, spec.input)
    if not spec.traditional:
        resolve_at(report, [layer.name for layer in spec.layers], {}, target, spec.input)
    try:
        resized = build_recurrent_model(base, spec.with_updates(input=target), report)
    except LayerError as error:
        raise LayerError(f"at {input_words(target)}: {error}") from error
    _check_same_shapes(model, resized)
    with torch.no_grad():  # shapes only: the meta device computes nothing
        resized(torch.empty(1, 1, *target.step_shape(), device="meta"))
    log.info("input set to %s (was %s)", input_words(target), input_words(spec.input))
    model.spec = resized.spec
    return model
