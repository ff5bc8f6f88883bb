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
            return F.linear(x, self.weight_ih, self.bias_ih)
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

    def gate_inputs(self, projected: Tensor) -> Tensor:
        """``u_t(g)`` for every gate, ``[B, T, G·H]``: the copies as they are, or SIH's ``v_t`` for every gate."""
        if self.sih:
            return projected.repeat(1, 1, self.cell.num_gates)
        return projected

    def recur(
        self,
        projected: Tensor,
        state: Optional[LayerState] = None,
        gate_observer: Optional[GateObserver] = None,
        layer_index: int = 0,
    ) -> tuple[Tensor, LayerState]:
        """Run the recurrence over ``projected`` ``[B, T, copies·H]``; return outputs ``[B, T, H]`` and the last state."""
        if projected.dim() != 3 or projected.shape[-1] != self.input_copies * self.hidden_size:
            raise ValueError(
                f"expected projected inputs [B, T, {self.input_copies * self.hidden_size}], got {tuple(projected.shape)}"
            )
        if state is None:
            state = self.initial_state(projected.shape[0], projected.device, projected.dtype)
        return self._recur(self.gate_inputs(projected), state, gate_observer, layer_index)

    def _recur(self, u: Tensor, state: LayerState, observer: Optional[GateObserver], index: int) -> tuple[Tensor, LayerState]:
        raise NotImplementedError

    def forward(
        self,
        x: Tensor,
        shortcut: Optional[Tensor] = None,
        state: Optional[LayerState] = None,
        gate_observer: Optional[GateObserver] = None,
    ) -> tuple[Tensor, LayerState]:
        """Whole layer on a sequence: ``x`` ``[B, T, ...]`` (what the pretrained layer received per frame)."""
        batch, steps = x.shape[:2]
        flat_shortcut = shortcut.flatten(0, 1) if shortcut is not None else None
        projected = self.project(x.flatten(0, 1), flat_shortcut).view(batch, steps, -1)
        return self.recur(projected, state, gate_observer)

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

    def _recur(self, u: Tensor, state: Tensor, observer: Optional[GateObserver], index: int) -> tuple[Tensor, Tensor]:
        act = ACTIVATIONS[self.activation]
        w_hh_t = self.weight_hh.t()
        h = state
        outputs = []
        for u_t in u.unbind(1):  # views, no per-step indexing ops
            h = act(torch.addmm(u_t, h, w_hh_t))
            outputs.append(h)
        return torch.stack(outputs, dim=1), h


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

    def _recur(self, u: Tensor, state: tuple[Tensor, Tensor], observer: Optional[GateObserver], index: int):
        hidden = self.hidden_size
        w_hh_t = self.weight_hh.t()
        h, c = state
        outputs = []
        for u_t in u.unbind(1):  # views, no per-step indexing ops
            gates = torch.addmm(u_t, h, w_hh_t)
            # One sigmoid over all 4H pre-activations (the g block's is unused) instead of three calls.
            sig = torch.sigmoid(gates)
            i, f, o = sig[:, :hidden], sig[:, hidden : 2 * hidden], sig[:, 3 * hidden :]
            g = torch.tanh(gates[:, 2 * hidden : 3 * hidden])
            c = torch.addcmul(f * c, i, g)  # f ⊙ c + i ⊙ g
            h = o * torch.tanh(c)
            if observer is not None:
                observer(index, {"i": i, "f": f, "o": o, "g": g})
            outputs.append(h)
        return torch.stack(outputs, dim=1), (h, c)


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

    def _recur(self, u: Tensor, state: Tensor, observer: Optional[GateObserver], index: int) -> tuple[Tensor, Tensor]:
        hidden = self.hidden_size
        w_rz_t = self.weight_hh[: 2 * hidden].t()
        w_n_t = self.weight_hh[2 * hidden :].t()
        h = state
        outputs = []
        for u_t in u.unbind(1):  # views, no per-step indexing ops
            rz = torch.sigmoid(torch.addmm(u_t[:, : 2 * hidden], h, w_rz_t))
            r, z = rz.chunk(2, dim=1)
            n = torch.tanh(torch.addmm(u_t[:, 2 * hidden :], r * h, w_n_t))
            h = h + z * (n - h)  # (1 - z) ⊙ h + z ⊙ h̃
            if observer is not None:
                observer(index, {"r": r, "z": z})
            outputs.append(h)
        return torch.stack(outputs, dim=1), h


CELL_CLASSES: dict[CellType, type[PreRecurrentLayer]] = {
    CellType.VRNN: PreVRNN,
    CellType.LSTM: PreLSTM,
    CellType.GRU: PreGRU,
}


def recurrent_layer_class(cell: CellType) -> type[PreRecurrentLayer]:
    """The layer class for a cell type."""
    return CELL_CLASSES[CellType(cell)]
