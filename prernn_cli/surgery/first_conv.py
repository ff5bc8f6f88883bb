"""The network's first convolution, found from the input, and its input channels changed for another modality.

Depth (1 channel) and optical-flow (2L channels) streams start from an RGB network. The
first convolution, the one that reads the input, is found by tracing the dataflow from
the input with :mod:`torch.fx` (not by its name), and replaced by a copy that takes the
new channel count. Its filters are the RGB filters *summed* over the colour channels and
divided by the new channel count, the same on every new channel:

.. math::
    W'_{o,c} = \\frac{1}{C'} \\sum_{k=1}^{3} W_{o,k} \\quad (c = 1 \\dots C')

This is TSN's "cross-modality pre-training" (the RGB filters averaged over colour and
replicated) with one rescaling, by 3/C': the new convolution on an input ``x`` then gives
exactly what the RGB convolution gives on the grey image ``m = mean_c(x)`` repeated over
its three channels, ``conv'(x) = conv((m, m, m))``, bias included. For depth (C' = 1) that
is ``conv'(g) = conv((g, g, g))``. TSN does not rescale, which multiplies the response to
a uniform input by C'/3 (×6.7 for a stack of 10 flow frames, ×1/3 for depth); the
rescaling keeps the activations at the scale the next BatchNorm's running statistics and
the rest of the network were trained on.
"""

from __future__ import annotations

import copy

import torch
from torch import fx, nn
from torch.fx.proxy import TraceError

from prernn_cli.errors import ConversionError

_CONV_TYPES = (nn.Conv2d, nn.Conv3d)


class _ConvTracer(fx.Tracer):
    """torch.fx's tracer, keeping convolutions (subclasses too, e.g. torchvision's ``Conv3DSimple``) as single calls."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return isinstance(module, _CONV_TYPES) or super().is_leaf_module(module, qualified_name)


def first_conv_name(model: nn.Module) -> str:
    """Dotted name of the one convolution that reads the network's input (no convolution before it).

    Raises:
        ConversionError: the network cannot be traced, or its input reaches no convolution or several.
    """
    try:
        graph = _ConvTracer().trace(model)
    except (TraceError, RuntimeError, TypeError, ValueError, NotImplementedError, AssertionError) as error:
        raise ConversionError(
            f"cannot trace the network to find its first convolution ({type(error).__name__}: {str(error)[:200]})"
        ) from None
    modules = dict(model.named_modules())
    reached: dict[fx.Node, bool] = {}  # the node depends on the input through no convolution
    first: list[str] = []
    for node in graph.nodes:
        fed = node.op == "placeholder" or any(reached.get(arg, False) for arg in node.all_input_nodes)
        is_conv = node.op == "call_module" and isinstance(modules.get(str(node.target)), _CONV_TYPES)
        if fed and is_conv:
            first.append(str(node.target))
        reached[node] = fed and not is_conv
    names = list(dict.fromkeys(first))
    if len(names) != 1:
        found = f"several ({', '.join(names)})" if names else "none"
        raise ConversionError(
            f"the network's input must go to one convolution to change its channels, and it reaches {found}"
        )
    return names[0]


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def with_input_channels(model: nn.Module, channels: int, *, init: bool = True) -> nn.Module:
    """``model`` (changed in place, and returned) with its first convolution taking ``channels`` input channels.

    ``init``: the new filters are the cross-modality initialisation of the module docstring;
    else they are left uninitialised (for loading a saved model's weights into). A network whose
    first convolution already takes ``channels`` is returned unchanged.

    Raises:
        ConversionError: no single first convolution, or a grouped one.
    """
    name = first_conv_name(model)
    conv = model.get_submodule(name)
    if conv.in_channels == channels:
        return model
    if conv.groups != 1:
        raise ConversionError(
            f"the first convolution {name} is grouped ({conv.groups} groups); its channels cannot change"
        )
    weight = conv.weight.detach()
    shape = (weight.shape[0], channels, *weight.shape[2:])
    if init:
        new = (weight.sum(dim=1, keepdim=True) / channels).expand(shape).clone()
    else:
        new = torch.empty(shape, dtype=weight.dtype, device=weight.device)
    replaced = copy.deepcopy(conv)
    replaced.weight = nn.Parameter(new, requires_grad=conv.weight.requires_grad)
    replaced.in_channels = channels
    _set_module(model, name, replaced)
    return model
