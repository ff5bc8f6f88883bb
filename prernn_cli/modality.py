"""The input of a depth or optical-flow stream, made from the RGB network's own (``prernn convert --modality``).

Only the channels and the normalisation change; the frame size and, for a 3D network,
the snippet length stay those of the RGB input:

* depth: 1 channel, mean 0.5 and std 0.25 of the depth scaled to [0, 1] by its bit depth
  (a documented default; depth has no ImageNet statistics to inherit);
* flow on a 2D network: L flow frames (``--flow-stack``, default 10, as Simonyan & Zisserman)
  stacked into 2L channels x1, y1, x2, y2, ...; on a 3D network: 2 channels per frame, the
  snippet running along time. Mean 0.5 and std 0.5 per channel make a flow image's 0..255
  the displacement / bound in [-1, 1].

The network's first convolution is then changed to take those channels
(:func:`~prernn_cli.surgery.first_conv.with_input_channels`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

from prernn_cli.errors import ConversionError
from prernn_cli.spec import DEFAULT_FLOW_BOUND, FrameKind, InputSpec, Modality

DEPTH_MEAN, DEPTH_STD = 0.5, 0.25
FLOW_MEAN, FLOW_STD = 0.5, 0.5
DEFAULT_FLOW_STACK = 10
MAX_FLOW_STACK = 64
MAX_FLOW_BOUND = 1000.0


def _check_flow_options(
    modality: Modality, own: InputSpec, flow_stack: Optional[int], flow_bound: Optional[float]
) -> None:
    if modality is not Modality.FLOW:
        for flag, value in (("--flow-stack", flow_stack), ("--flow-bound", flow_bound)):
            if value is not None:
                raise ConversionError(f"{flag} is for --modality flow, not {modality.value}: drop {flag}")
        return
    if flow_stack is not None and own.frame_kind is FrameKind.SNIPPET:
        raise ConversionError(
            "--flow-stack is for 2D networks; a 3D network reads flow frame by frame along time: "
            "drop --flow-stack (--snippet-length sets its frames per step)"
        )
    if flow_stack is not None and not 1 <= flow_stack <= MAX_FLOW_STACK:
        raise ConversionError(f"--flow-stack {flow_stack} is outside 1..{MAX_FLOW_STACK} flow frames")
    if flow_bound is not None and not 0 < flow_bound <= MAX_FLOW_BOUND:
        raise ConversionError(f"--flow-bound {flow_bound} is outside (0, {MAX_FLOW_BOUND:g}] pixels; the default is 20")


def modality_input(
    own: InputSpec,
    modality: Modality | str = Modality.RGB,
    flow_stack: Optional[int] = None,
    flow_bound: Optional[float] = None,
) -> InputSpec:
    """``own`` (an RGB network's input) as the input of a ``modality`` stream.

    Raises:
        ConversionError: a flow option without ``--modality flow``, ``flow_stack`` for a 3D network, or out of range.
    """
    modality = Modality(modality)
    _check_flow_options(modality, own, flow_stack, flow_bound)
    if modality is Modality.RGB:
        return own
    if modality is Modality.DEPTH:
        return replace(own, modality=modality, channels=1, mean=(DEPTH_MEAN,), std=(DEPTH_STD,))
    stack = None if own.frame_kind is FrameKind.SNIPPET else (flow_stack or DEFAULT_FLOW_STACK)
    channels = 2 * (stack or 1)
    return replace(
        own,
        modality=modality,
        channels=channels,
        mean=(FLOW_MEAN,) * channels,
        std=(FLOW_STD,) * channels,
        flow_stack=stack,
        flow_bound=float(flow_bound if flow_bound is not None else DEFAULT_FLOW_BOUND),
    )


@dataclass(frozen=True)
class ModalityChoice:
    """``prernn convert``'s --modality, --flow-stack and --flow-bound, applied by :meth:`apply`."""

    modality: Modality = Modality.RGB
    flow_stack: Optional[int] = None
    flow_bound: Optional[float] = None

    def apply(self, own: InputSpec) -> InputSpec:
        """:func:`modality_input` of ``own`` with these choices."""
        return modality_input(own, self.modality, self.flow_stack, self.flow_bound)
