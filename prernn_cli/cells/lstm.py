"""PreLSTM: the LSTM layer made from a pretrained layer, gate-dependent (Eqs. 7, 8) or SIH (Eqs. 10, 11)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Optional

import torch

from prernn_cli.cells.layer import RecurrentLayer
from prernn_cli.kernels import WeightProduct
from prernn_cli.spec import CellType


class PreLSTM(RecurrentLayer):
    r"""LSTM layer made from a pretrained layer: gate-dependent (Eqs. 7, 8) or SIH (Eqs. 10, 11).

    .. math::
        \begin{aligned}
        i_t &= \sigma(u_t(i) + W_{hi} h_{t-1}) & f_t &= \sigma(u_t(f) + W_{hf} h_{t-1}) \\
        o_t &= \sigma(u_t(o) + W_{ho} h_{t-1}) & \tilde c_t &= \tanh(u_t(c) + W_{hc} h_{t-1}) \\
        c_t &= f_t \odot c_{t-1} + i_t \odot \tilde c_t & h_t &= o_t \odot \tanh(c_t)
        \end{aligned}

    Gate-dependent: ``u_t(g) = a_g(x_t)``, each gate with its own copy of the
    pretrained weights. SIH: ``u_t(g) = v_t = a(x_t)`` for every gate.
    Gate order in ``weight_ih``/``weight_hh``: (i, f, g = c̃, o), as :class:`torch.nn.LSTM`.
    """

    cell = CellType.LSTM

    def _fused_op(self) -> Optional[Callable]:
        return torch.lstm if self.conv is None and not self.sih else None

    def _steps(self, u, weight_hh, state, observer, index, keep):
        hidden = self.hidden_size
        batch, steps = u.shape[:2]
        product = WeightProduct(weight_hh, batch, steps, (u, *state))
        h, c = state
        outputs, activations, cells = [], [], []
        for u_t in u.transpose(0, 1).contiguous().unbind(0):  # time-major: each step's inputs contiguous
            gates = self._preactivations(product, u_t, h, 4)
            # One sigmoid over all 4H pre-activations (the c̃ block's is unused) instead of three calls.
            sig = torch.sigmoid(gates)
            i, f, _, o = sig.view(-1, 4, hidden).unbind(1)
            g = torch.tanh(gates[:, 2 * hidden : 3 * hidden])
            c = torch.addcmul(f * c, i, g)  # f ⊙ c + i ⊙ c̃
            h = o * torch.tanh(c)
            if observer is not None:
                observer(index, {"i": i, "f": f, "o": o, "g": g})
            if keep:
                sig[:, 2 * hidden : 3 * hidden] = g  # (i, f, c̃, o), no autograd here
                activations.append(sig)
                cells.append(c)
            outputs.append(h)
        saved = ()
        if keep:
            saved = (torch.stack(activations), torch.stack([state[1], *cells]), torch.stack([state[0], *outputs[:-1]]))
        return torch.stack(outputs, dim=1), (h, c), saved

    def _backward(self, saved, weight_hh, grad_outputs, grad_state):
        activations, cells, previous = saved
        steps, batch = activations.shape[:2]
        hidden = self.hidden_size
        i, f, g, o = activations.split(hidden, dim=2)
        tanh_c = torch.tanh(cells[1:])
        # ∂h_t/∂c_t, and per-gate factors of ∂L/∂pre-activation, for all steps at once.
        cell_from_h = o * (1 - tanh_c * tanh_c)
        ifg_factors = torch.stack([g * i * (1 - i), cells[:-1] * f * (1 - f), i * (1 - g * g)], dim=2)  # [T, B, 3, H]
        o_factor = tanh_c * o * (1 - o)
        product_t = WeightProduct(weight_hh.t(), batch, steps, (grad_outputs, *grad_state))
        grad_pre = torch.empty_like(activations)
        grad_h, grad_c = grad_state
        for t in reversed(range(steps)):
            grad_h = grad_h + grad_outputs[t]
            grad_c = torch.addcmul(grad_c, grad_h, cell_from_h[t])
            torch.mul(ifg_factors[t], grad_c.unsqueeze(1), out=grad_pre[t, :, : 3 * hidden].view(batch, 3, hidden))
            torch.mul(grad_h, o_factor[t], out=grad_pre[t, :, 3 * hidden :])
            grad_c = grad_c * f[t]
            grad_h = product_t.mm(grad_pre[t])
        grad_weight = torch.mm(grad_pre.flatten(0, 1).t(), previous.flatten(0, 1))
        return self._gradient_of_inputs(grad_pre), grad_weight, (grad_h, grad_c)
