"""PreGRU: the GRU layer made from a pretrained layer, gate-dependent (Eqs. 7, 9) or SIH (Eqs. 10, 12)."""

from __future__ import annotations

import torch

from prernn_cli.cells.layer import RecurrentLayer
from prernn_cli.kernels import WeightProduct
from prernn_cli.spec import CellType


class PreGRU(RecurrentLayer):
    r"""GRU layer made from a pretrained layer: gate-dependent (Eqs. 7, 9) or SIH (Eqs. 10, 12).

    .. math::
        \begin{aligned}
        r_t &= \sigma(u_t(r) + W_{hr} h_{t-1}) \qquad z_t = \sigma(u_t(z) + W_{hz} h_{t-1}) \\
        \tilde h_t &= \tanh\big(u_t(h) + W_{hh} (r_t \odot h_{t-1})\big) \\
        h_t &= (1 - z_t) \odot h_{t-1} + z_t \odot \tilde h_t
        \end{aligned}

    This is Cho et al.'s form used by the paper — the reset gate acts *before* the
    hidden matrix and ``z`` weights the new state — not :class:`torch.nn.GRU`'s.
    Gate order in ``weight_ih``/``weight_hh``: (r, z, n = h̃).
    """

    cell = CellType.GRU

    def _steps(self, u, weight_hh, state, observer, index, keep):
        hidden = self.hidden_size
        batch, steps = u.shape[:2]
        product_rz = WeightProduct(weight_hh[: 2 * hidden], batch, steps, (u, *state))
        product_n = WeightProduct(weight_hh[2 * hidden :], batch, steps, (u, *state))
        (h,) = state
        outputs, gates_rz, candidates, previous, reset = [], [], [], [], []
        # Time-major, and the (r, z) and n inputs apart: every step's operands are contiguous.
        time_major = u.transpose(0, 1)
        if self.sih:
            u_rz = u_n = time_major.contiguous().unbind(0)
        else:
            u_rz = time_major[..., : 2 * hidden].contiguous().unbind(0)
            u_n = time_major[..., 2 * hidden :].contiguous().unbind(0)
        for u_rz_t, u_n_t in zip(u_rz, u_n):
            rz = torch.sigmoid(self._preactivations(product_rz, u_rz_t, h, 2))
            r, z = rz.chunk(2, dim=1)
            r_h = r * h
            n = torch.tanh(self._preactivations(product_n, u_n_t, r_h, 1))
            if keep:
                gates_rz.append(rz)
                candidates.append(n)
                previous.append(h)
                reset.append(r_h)
            h = torch.lerp(h, n, z)  # (1 - z) ⊙ h + z ⊙ h̃
            if observer is not None:
                observer(index, {"r": r, "z": z})
            outputs.append(h)
        saved = ()
        if keep:  # (r, z, h̃) as one [T, B, 3H] tensor, joined once rather than per step
            activations = torch.cat([torch.stack(gates_rz), torch.stack(candidates)], dim=2)
            saved = (activations, torch.stack(previous), torch.stack(reset))
        return torch.stack(outputs, dim=1), (h,), saved

    def _backward(self, saved, weight_hh, grad_outputs, grad_state):
        activations, previous, reset = saved
        steps, batch = activations.shape[:2]
        hidden = self.hidden_size
        r, z, n = activations.split(hidden, dim=2)
        n_factor = z * (1 - n * n)
        z_factor = (n - previous) * z * (1 - z)
        r_factor = previous * r * (1 - r)
        keep_factor = 1 - z
        operands = (grad_outputs, *grad_state)
        product_rz_t = WeightProduct(weight_hh[: 2 * hidden].t(), batch, steps, operands)
        product_n_t = WeightProduct(weight_hh[2 * hidden :].t(), batch, steps, operands)
        grad_pre = torch.empty_like(activations)
        (grad_h,) = grad_state
        for t in reversed(range(steps)):
            grad_h = grad_h + grad_outputs[t]
            torch.mul(grad_h, n_factor[t], out=grad_pre[t, :, 2 * hidden :])
            torch.mul(grad_h, z_factor[t], out=grad_pre[t, :, hidden : 2 * hidden])
            grad_r_h = product_n_t.mm(grad_pre[t, :, 2 * hidden :])  # ∂L/∂(r ⊙ h_{t-1})
            torch.mul(grad_r_h, r_factor[t], out=grad_pre[t, :, :hidden])
            grad_h = product_rz_t.addmm(
                torch.addcmul(grad_h * keep_factor[t], grad_r_h, r[t]), grad_pre[t, :, : 2 * hidden]
            )
        flat = grad_pre.flatten(0, 1)
        grad_weight = torch.cat(
            [
                torch.mm(flat[:, : 2 * hidden].t(), previous.flatten(0, 1)),
                torch.mm(flat[:, 2 * hidden :].t(), reset.flatten(0, 1)),
            ]
        )
        return self._gradient_of_inputs(grad_pre), grad_weight, (grad_h,)
