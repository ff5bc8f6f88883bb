"""A recurrent layer's whole sequence as one autograd node, with the layer's own backward pass."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable


def _needs_sequence_function(*tensors: Tensor) -> bool:
    """Whether a recurrence should run as one :class:`_SequenceFunction` node (training in eager mode)."""
    if not torch.is_grad_enabled() or not any(t.requires_grad for t in tensors):
        return False
    if torch.compiler.is_compiling() or torch.compiler.is_exporting() or torch.jit.is_tracing():
        return False
    device = tensors[0].device.type
    return device != "meta" and not torch.is_autocast_enabled(device)


class _SequenceFunction(torch.autograd.Function):
    """A layer's whole recurrence as one autograd node: :meth:`RecurrentLayer._steps` forward,
    :meth:`RecurrentLayer._backward` backward."""

    @staticmethod
    def forward(ctx, layer, observer, index, u, weight_hh, *state):
        outputs, last, saved = layer._steps(u, weight_hh, state, observer, index, keep=True)
        ctx.layer = layer
        ctx.save_for_backward(weight_hh, *saved)
        return (outputs, *last)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_outputs, *grad_last):
        weight_hh, *saved = ctx.saved_tensors
        grad_u, grad_weight, grad_state = ctx.layer._backward(
            tuple(saved), weight_hh, grad_outputs.transpose(0, 1), grad_last
        )
        return (None, None, None, grad_u, grad_weight, *grad_state)
