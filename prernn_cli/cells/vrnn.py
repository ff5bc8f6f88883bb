"""PreVRNN: the vanilla recurrent layer made from a pretrained layer (Eqs. 5, 6)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Optional

import torch

from prernn_cli.cells.layer import ACTIVATIONS, RecurrentLayer
from prernn_cli.kernels import WeightProduct
from prernn_cli.spec import CellType


class PreVRNN(RecurrentLayer):
    r"""Vanilla recurrent layer made from a pretrained layer (Eqs. 5, 6).

    .. math::
        y_t = H\big(a(x_t) + W_{hh}\, y_{t-1}\big)

    ``H`` is the pretrained layer's own activation (ReLU for VGG, C3D, ResNet).
    With ``W_hh = 0`` the layer is the pretrained feed-forward layer, frame by frame.
    """

    cell = CellType.VRNN

    def _fused_op(self) -> Optional[Callable]:
        if self.conv is not None:
            return None
        return {"relu": torch.rnn_relu, "tanh": torch.rnn_tanh}.get(self.activation)

    def _steps(self, u, weight_hh, state, observer, index, keep):
        act = ACTIVATIONS[self.activation]
        batch, steps = u.shape[:2]
        product = WeightProduct(weight_hh, batch, steps, (u, *state))
        (h,) = state
        outputs, preactivations = [], []
        for u_t in u.transpose(0, 1).contiguous().unbind(0):  # time-major: each step's inputs contiguous
            a = product.addmm(u_t, h)
            h = act(a)
            if keep:
                preactivations.append(a)
            outputs.append(h)
        saved = ()
        if keep:
            previous = torch.stack([state[0], *outputs[:-1]])
            saved = (torch.stack(preactivations), previous)
        return torch.stack(outputs, dim=1), (h,), saved

    def _backward(self, saved, weight_hh, grad_outputs, grad_state):
        preactivations, previous = saved
        with torch.enable_grad():  # H'(a) for every step at once, for any elementwise H
            a = preactivations.detach().requires_grad_()
            (derivative,) = torch.autograd.grad(ACTIVATIONS[self.activation](a), a, torch.ones_like(a))
        steps, batch = preactivations.shape[:2]
        product_t = WeightProduct(weight_hh.t(), batch, steps, (grad_outputs, *grad_state))
        grad_pre = torch.empty_like(preactivations)
        (grad_h,) = grad_state
        for t in reversed(range(steps)):
            grad_h = grad_h + grad_outputs[t]
            torch.mul(grad_h, derivative[t], out=grad_pre[t])
            grad_h = product_t.mm(grad_pre[t])
        grad_weight = torch.mm(grad_pre.flatten(0, 1).t(), previous.flatten(0, 1))
        return self._gradient_of_inputs(grad_pre), grad_weight, (grad_h,)
