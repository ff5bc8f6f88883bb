"""The paper's recurrent layers: PreVRNN, PreLSTM, PreGRU, their SIH variants, and the traditional baselines.

This module is the one place where the paper's equations live (Yang, Molchanov,
Kautz, CVPR 2018; SPEC §2). A layer has two halves:

* :meth:`PreRecurrentLayer.project` — the input-to-hidden state ``a(x_t)`` of the
  pretrained layer, run on all ``B·T`` frames at once because it does not depend
  on the state. For an fc layer ``a(x) = W_xy x + b_xy``; for a conv layer
  ``a(x) = P(B(W_xy * x) + γ)`` with the layer's BatchNorm ``B`` (running
  statistics), the residual shortcut ``γ`` and global average pooling ``P``.
  The G gate copies (gate-dependent design) are one fused matmul or conv; SIH
  computes the single projection once.
* :meth:`PreRecurrentLayer.recur` — the sequential part, where only the small
  ``W_h·`` products run inside the time loop.

Parameter names and gate order follow :class:`torch.nn.RNNBase`: ``weight_ih``
(the G copies stacked along dim 0, or the single tensor for SIH), ``bias_ih``,
``weight_hh`` (``G·H × H``), LSTM gates (i, f, g, o), GRU gates (r, z, n).
Conv layers also hold the stacked BatchNorm copies ``bn_weight``, ``bn_bias`` and
buffers ``bn_running_mean``, ``bn_running_var``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from prernn_cli.kernels import WeightProduct, fused_rnn_usable, linear
from prernn_cli.spec import CellType, InitScheme, LayerKind

GateObserver = Callable[[int, dict[str, Tensor]], None]
LayerState = Union[Tensor, tuple[Tensor, Tensor]]

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": F.relu,
    "relu6": F.relu6,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "gelu": F.gelu,
    "silu": F.silu,
    "hardswish": F.hardswish,
    "leaky_relu": F.leaky_relu,
    "elu": F.elu,
    "identity": lambda x: x,
}


@dataclass(frozen=True)
class ConvGeometry:
    """How the pretrained conv is applied: dimensionality, stride, padding, dilation, and its BatchNorm."""

    dims: int  # 2 or 3
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    batchnorm: bool
    bn_eps: float = 1e-5
    shortcut: bool = False

    @classmethod
    def from_module(cls, conv: nn.Module, batchnorm: Optional[nn.Module], shortcut: bool) -> "ConvGeometry":
        if isinstance(conv.padding, str):
            raise ValueError(f"conv padding mode {conv.padding!r} is not supported; only explicit padding")
        return cls(
            dims=conv.weight.dim() - 2,
            kernel_size=tuple(conv.kernel_size),
            stride=tuple(conv.stride),
            padding=tuple(conv.padding),
            dilation=tuple(conv.dilation),
            batchnorm=batchnorm is not None,
            bn_eps=float(batchnorm.eps) if batchnorm is not None else 1e-5,
            shortcut=shortcut,
        )


class PreRecurrentLayer(nn.Module):
    r"""Base of every recurrent layer: a pretrained (or, for traditional designs, new) input-to-hidden map
    plus a recurrence whose hidden-to-hidden weights are new.

    Args:
        input_size: in_features of the fc layer, or C_in of the conv layer.
        hidden_size: out_features, or C_out (the hidden state is a vector of C_out channels).
        kind: :class:`LayerKind` ``FC`` / ``CONV`` for a converted layer, ``NEW`` for a traditional one.
        sih: share one input-to-hidden state between all gates (PreRNN-SIH, Eqs. 10–12).
        bias: whether the input-to-hidden map has a bias (as the pretrained layer does).
        conv: the conv's geometry (``kind=CONV`` only).
        activation: VRNN's H (the layer's own activation); ignored by LSTM and GRU.
        init_hh: how the new ``W_h·`` start (:class:`InitScheme`).
    """

    cell: CellType

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        kind: LayerKind = LayerKind.FC,
        sih: bool = False,
        bias: bool = True,
        conv: Optional[ConvGeometry] = None,
        activation: str = "relu",
        init_hh: InitScheme = InitScheme.UNIFORM,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        if input_size <= 0 or hidden_size <= 0:
            raise ValueError(f"input_size and hidden_size must be positive, got {input_size} and {hidden_size}")
        if sih and self.cell is CellType.VRNN:
            raise ValueError("SIH needs several gates to share one input-to-hidden state; a VRNN has a single one")
        if (kind is LayerKind.CONV) != (conv is not None):
            raise ValueError("a conv geometry is required for, and only for, kind=CONV")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; known: {', '.join(ACTIVATIONS)}")
        factory = {"device": device, "dtype": dtype}
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.kind = kind
        self.sih = sih
        self.conv = conv
        self.activation = activation
        self.init_hh = InitScheme(init_hh)
        gates = self.cell.num_gates
        copies = 1 if sih else gates
        if conv is None:
            ih_shape: tuple[int, ...] = (copies * hidden_size, input_size)
        else:
            ih_shape = (copies * hidden_size, input_size, *conv.kernel_size)
        self.weight_ih = nn.Parameter(torch.empty(ih_shape, **factory))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(copies * hidden_size, **factory))
        else:
            self.register_parameter("bias_ih", None)
        self.weight_hh = nn.Parameter(torch.empty(gates * hidden_size, hidden_size, **factory))
        if conv is not None and conv.batchnorm:
            self.bn_weight = nn.Parameter(torch.empty(copies * hidden_size, **factory))
            self.bn_bias = nn.Parameter(torch.empty(copies * hidden_size, **factory))
            self.register_buffer("bn_running_mean", torch.zeros(copies * hidden_size, **factory))
            self.register_buffer("bn_running_var", torch.ones(copies * hidden_size, **factory))
        self.reset_parameters()

    # ------------------------------------------------------------------ weights
    @property
    def input_copies(self) -> int:
        """How many input-to-hidden copies the layer holds: G (gate-dependent) or 1 (SIH)."""
        return 1 if self.sih else self.cell.num_gates

    def reset_parameters(self) -> None:
        """Initialise every weight as a new layer would; :meth:`load_pretrained` then overwrites W_xy copies."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        nn.init.uniform_(self.weight_ih, -bound, bound)
        if self.bias_ih is not None:
            nn.init.uniform_(self.bias_ih, -bound, bound)
        if hasattr(self, "bn_weight"):
            nn.init.ones_(self.bn_weight)
            nn.init.zeros_(self.bn_bias)
        self.reset_hidden_parameters()

    def reset_hidden_parameters(self) -> None:
        """Initialise the new hidden-to-hidden weights ``W_h·`` with :attr:`init_hh`, one H×H block per gate."""
        hidden = self.hidden_size
        with torch.no_grad():
            for block in self.weight_hh.split(hidden, dim=0):
                if self.init_hh is InitScheme.UNIFORM:
                    bound = 1.0 / math.sqrt(hidden)
                    nn.init.uniform_(block, -bound, bound)
                elif self.init_hh is InitScheme.ORTHOGONAL:
                    if block.device.type == "meta":
                        continue
                    nn.init.orthogonal_(block)
                elif self.init_hh is InitScheme.XAVIER:
                    nn.init.xavier_uniform_(block)
                else:
                    nn.init.zeros_(block)

    @torch.no_grad()
    def load_pretrained(self, weight: Tensor, bias: Optional[Tensor], batchnorm: Optional[nn.Module] = None) -> None:
        """Copy the pretrained layer into every input-to-hidden copy (one copy for SIH), BatchNorm included."""
        expected = tuple(self.weight_ih.shape[1:])
        if tuple(weight.shape[1:]) != expected or weight.shape[0] != self.hidden_size:
            raise ValueError(f"pretrained weight of shape {tuple(weight.shape)} does not fit a layer of hidden size {self.hidden_size} and input {expected}")
        if self.bias_ih is not None and bias is None:
            raise ValueError("the layer was built with a bias but the pretrained layer has none")
        if hasattr(self, "bn_weight") and batchnorm is None:
            raise ValueError("the layer was built with a BatchNorm but none was given")
        pairs = [(self.weight_ih, weight), (self.bias_ih, bias)]
        if hasattr(self, "bn_weight"):
            pairs += [
                (self.bn_weight, batchnorm.weight), (self.bn_bias, batchnorm.bias),
                (self.bn_running_mean, batchnorm.running_mean), (self.bn_running_var, batchnorm.running_var),
            ]
        for stacked, pretrained in pairs:
            if stacked is not None:
                for block in stacked.split(self.hidden_size, dim=0):  # in place: no G-times temporary
                    block.copy_(pretrained)

    # ------------------------------------------------------------------ a(x_t): batched over all frames
    def project(self, x: Tensor, shortcut: Optional[Tensor] = None) -> Tensor:
        """Input-to-hidden states of all gates for a batch of frames: ``[N, copies·H]``.

        ``x`` is what the pretrained layer received, for ``N = B·T`` frames at once:
        ``[N, in_features]`` (fc) or ``[N, C_in, (L,) h, w]`` (conv). ``shortcut`` is
        the residual ``γ`` added after the conv's BatchNorm, ``[N, C_out, (L,) h', w']``.
        """
        if self.conv is None:
            return linear(x, self.weight_ih, self.bias_ih)
        geometry = self.conv
        conv = F.conv2d if geometry.dims == 2 else F.conv3d
        z = conv(x, self.weight_ih, self.bias_ih, geometry.stride, geometry.padding, geometry.dilation)
        if geometry.batchnorm:
            z = F.batch_norm(
                z, self.bn_running_mean, self.bn_running_var, self.bn_weight, self.bn_bias,
                training=False, momentum=0.0, eps=geometry.bn_eps,
            )
        if shortcut is not None:
            n = z.shape[0]
            z = z.view(n, self.input_copies, self.hidden_size, *z.shape[2:]) + shortcut.unsqueeze(1)
            z = z.view(n, self.input_copies * self.hidden_size, *z.shape[3:])
        return z.mean(dim=tuple(range(2, z.dim())))  # P: global average pooling

    # ------------------------------------------------------------------ the recurrence
    def initial_state(self, batch_size: int, device=None, dtype=None) -> LayerState:
        """Zeros of the layer's state for ``batch_size`` sequences."""
        zeros = torch.zeros(batch_size, self.hidden_size, device=device, dtype=dtype)
        return (zeros, zeros.clone()) if self.cell.has_cell_state else zeros

    def recur(
        self,
        projected: Tensor,
        state: Optional[LayerState] = None,
        gate_observer: Optional[GateObserver] = None,
        layer_index: int = 0,
    ) -> tuple[Tensor, LayerState]:
        """Run the recurrence over ``projected`` ``[B, T, copies·H]``; return outputs ``[B, T, H]`` and the last state.

        While training, the sequence is one autograd node with its own backward pass
        (:class:`_SequenceFunction`): per step only ``∂L/∂h_{t-1}`` is multiplied by
        ``W_h·``, and ``∂L/∂W_h·`` is one matrix product over all steps. While exporting,
        compiling, under autocast, or when nothing needs a gradient, the same steps run
        as plain tensor operations.
        """
        if projected.dim() != 3 or projected.shape[-1] != self.input_copies * self.hidden_size:
            raise ValueError(
                f"expected projected inputs [B, T, {self.input_copies * self.hidden_size}], got {tuple(projected.shape)}"
            )
        if state is None:
            state = self.initial_state(projected.shape[0], projected.device, projected.dtype)
        states = (state,) if isinstance(state, Tensor) else tuple(state)
        if _needs_sequence_function(projected, self.weight_hh, *states):
            outputs, *last = _SequenceFunction.apply(self, gate_observer, layer_index, projected, self.weight_hh, *states)
        else:
            outputs, last, _ = self._steps(projected, self.weight_hh, states, gate_observer, layer_index, keep=False)
        return outputs, (last[0] if len(last) == 1 else tuple(last))

    def _preactivations(self, product: WeightProduct, u_t: Tensor, x: Tensor, count: int) -> Tensor:
        """``u_t(g) + W_hg x`` for ``count`` gates, ``[B, count·H]``; ``product`` holds those gates' rows of ``W_h·``.

        Gate-dependent: ``u_t`` holds the gates' own projections ``[B, count·H]``.
        SIH: ``u_t`` is the one shared ``v_t`` ``[B, H]``, added to every gate.
        """
        if not self.sih or count == 1:
            return product.addmm(u_t, x)
        return (product.mm(x).view(-1, count, self.hidden_size) + u_t.unsqueeze(1)).flatten(1)

    def _steps(
        self, u: Tensor, weight_hh: Tensor, state: tuple[Tensor, ...], observer: Optional[GateObserver], index: int, keep: bool
    ) -> tuple[Tensor, tuple[Tensor, ...], tuple[Tensor, ...]]:
        """The cell's equations over all steps of ``u`` ``[B, T, copies·H]``.

        Returns outputs ``[B, T, H]``, the last state, and (with ``keep``) what
        :meth:`_backward` needs, stacked over time.
        """
        raise NotImplementedError

    def _backward(
        self, saved: tuple[Tensor, ...], weight_hh: Tensor, grad_outputs: Tensor, grad_state: tuple[Tensor, ...]
    ) -> tuple[Tensor, Tensor, tuple[Tensor, ...]]:
        """Gradients of the inputs ``u``, of ``W_h·`` and of the initial state, from :meth:`_steps`' ``saved``.

        ``grad_outputs`` is ``[T, B, H]`` (time-major). The ``∂L/∂`` pre-activations of every
        step are collected in one ``[T, B, G·H]`` tensor so that ``∂L/∂W_h·`` is a single
        matrix product.
        """
        raise NotImplementedError

    def _gradient_of_inputs(self, grad_preactivations: Tensor) -> Tensor:
        """``∂L/∂u`` ``[B, T, copies·H]`` from the time-major ``[T, B, G·H]`` gradients of the pre-activations."""
        if self.sih:  # v_t fed every gate
            steps, batch = grad_preactivations.shape[:2]
            grad_preactivations = grad_preactivations.view(steps, batch, self.cell.num_gates, self.hidden_size).sum(2)
        return grad_preactivations.transpose(0, 1)

    def forward(
        self,
        x: Tensor,
        shortcut: Optional[Tensor] = None,
        state: Optional[LayerState] = None,
        gate_observer: Optional[GateObserver] = None,
        layer_index: int = 0,
    ) -> tuple[Tensor, LayerState]:
        """Whole layer on a sequence: ``x`` ``[B, T, ...]`` (what the pretrained layer received per frame).

        A small layer that is exactly a standard LSTM or Elman RNN (gate-dependent, fc)
        runs as torch's fused sequence op on CPU (:meth:`_fused_sequence`,
        :func:`~prernn_cli.kernels.fused_rnn_usable`); every other layer runs
        :meth:`project` over all frames, then :meth:`recur`.
        """
        batch, steps = x.shape[:2]
        if gate_observer is None and x.dim() == 3 and self._fused_op() is not None:
            states = [] if state is None else [state] if isinstance(state, Tensor) else list(state)
            if fused_rnn_usable(self.weight_hh, x, *self.parameters(), *states):
                return self._fused_sequence(x, state)
        flat_shortcut = shortcut.flatten(0, 1) if shortcut is not None else None
        projected = self.project(x.flatten(0, 1), flat_shortcut).view(batch, steps, -1)
        return self.recur(projected, state, gate_observer, layer_index)

    def _fused_op(self) -> Optional[Callable]:
        """torch's sequence op that computes exactly this layer, if there is one (see :meth:`_fused_sequence`)."""
        return None

    def _fused_sequence(self, x: Tensor, state: Optional[LayerState]) -> tuple[Tensor, LayerState]:
        """The layer as :func:`torch.lstm` / :func:`torch.rnn_relu` / :func:`torch.rnn_tanh`, the kernels of :mod:`torch.nn`'s RNNs.

        A gate-dependent fc PreLSTM is an :class:`torch.nn.LSTM` whose ``weight_ih`` are
        the pretrained copies and whose ``bias_hh`` is zero; a PreVRNN with ReLU or tanh
        is an :class:`torch.nn.RNN` alike. The op projects all frames in one product and
        runs the recurrence in native code, with its own backward pass.
        """
        if state is None:
            state = self.initial_state(x.shape[0], x.device, x.dtype)
        weights = [self.weight_ih, self.weight_hh]
        if self.bias_ih is not None:
            weights += [self.bias_ih, torch.zeros_like(self.bias_ih)]
        has_cell = self.cell.has_cell_state
        hx = (state[0].unsqueeze(0), state[1].unsqueeze(0)) if has_cell else state.unsqueeze(0)
        outputs, *last = self._fused_op()(x, hx, weights, self.bias_ih is not None, 1, 0.0, self.training, False, True)
        last = [t.squeeze(0) for t in last]
        return outputs, (tuple(last) if has_cell else last[0])

    def extra_repr(self) -> str:
        parts = [f"{self.input_size}, {self.hidden_size}", f"kind={self.kind.value}"]
        if self.sih:
            parts.append("sih=True")
        if self.conv is not None:
            parts.append(f"conv{self.conv.dims}d k={self.conv.kernel_size} bn={self.conv.batchnorm} shortcut={self.conv.shortcut}")
        if self.cell is CellType.VRNN:
            parts.append(f"activation={self.activation}")
        if self.bias_ih is None:
            parts.append("bias=False")
        return ", ".join(parts)


class PreVRNN(PreRecurrentLayer):
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


class PreLSTM(PreRecurrentLayer):
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


class PreGRU(PreRecurrentLayer):
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
            grad_h = product_rz_t.addmm(torch.addcmul(grad_h * keep_factor[t], grad_r_h, r[t]), grad_pre[t, :, : 2 * hidden])
        flat = grad_pre.flatten(0, 1)
        grad_weight = torch.cat([
            torch.mm(flat[:, : 2 * hidden].t(), previous.flatten(0, 1)),
            torch.mm(flat[:, 2 * hidden :].t(), reset.flatten(0, 1)),
        ])
        return self._gradient_of_inputs(grad_pre), grad_weight, (grad_h,)


def _needs_sequence_function(*tensors: Tensor) -> bool:
    """Whether a recurrence should run as one :class:`_SequenceFunction` node (training in eager mode)."""
    if not torch.is_grad_enabled() or not any(t.requires_grad for t in tensors):
        return False
    if torch.compiler.is_compiling() or torch.compiler.is_exporting() or torch.jit.is_tracing():
        return False
    device = tensors[0].device.type
    return device != "meta" and not torch.is_autocast_enabled(device)


class _SequenceFunction(torch.autograd.Function):
    """A layer's whole recurrence as one autograd node: :meth:`PreRecurrentLayer._steps` forward,
    :meth:`PreRecurrentLayer._backward` backward."""

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
        grad_u, grad_weight, grad_state = ctx.layer._backward(tuple(saved), weight_hh, grad_outputs.transpose(0, 1), grad_last)
        return (None, None, None, grad_u, grad_weight, *grad_state)


CELL_CLASSES: dict[CellType, type[PreRecurrentLayer]] = {
    CellType.VRNN: PreVRNN,
    CellType.LSTM: PreLSTM,
    CellType.GRU: PreGRU,
}


def recurrent_layer_class(cell: CellType) -> type[PreRecurrentLayer]:
    """The layer class for a cell type."""
    return CELL_CLASSES[CellType(cell)]
