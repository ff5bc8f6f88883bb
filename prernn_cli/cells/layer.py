"""The base of every recurrent layer (:class:`RecurrentLayer`): the input-to-hidden map and the time loop around a cell.

A layer has two halves:

* :meth:`RecurrentLayer.project` — the input-to-hidden state ``a(x_t)`` of the
  pretrained layer, run on all ``B·T`` frames at once because it does not depend
  on the state. For an fc layer ``a(x) = W_xy x + b_xy``; for a conv layer
  ``a(x) = P(B(W_xy * x) + γ)`` with the layer's BatchNorm ``B`` (running
  statistics), the residual shortcut ``γ`` and global average pooling ``P``.
  The G gate copies (gate-dependent design) are one fused matmul or conv; SIH
  computes the single projection once.
* :meth:`RecurrentLayer.recur` — the sequential part, where only the small
  ``W_h·`` products run inside the time loop.

Parameter names and gate order follow :class:`torch.nn.RNNBase`: ``weight_ih``
(the G copies stacked along dim 0, or the single tensor for SIH), ``bias_ih``,
``weight_hh`` (``G·H × H``), LSTM gates (i, f, g, o), GRU gates (r, z, n).
Conv layers also hold the stacked BatchNorm copies ``bn_weight``, ``bn_bias`` and
buffers ``bn_running_mean``, ``bn_running_var``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prernn_cli.cells.sequence import _needs_sequence_function, _SequenceFunction
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
    def from_module(cls, conv: nn.Module, batchnorm: Optional[nn.Module], shortcut: bool) -> ConvGeometry:
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


class RecurrentLayer(nn.Module):
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
            raise ValueError(
                f"pretrained weight of shape {tuple(weight.shape)} does not fit a layer of hidden size {self.hidden_size} and input {expected}"
            )
        if self.bias_ih is not None and bias is None:
            raise ValueError("the layer was built with a bias but the pretrained layer has none")
        if hasattr(self, "bn_weight") and batchnorm is None:
            raise ValueError("the layer was built with a BatchNorm but none was given")
        pairs = [(self.weight_ih, weight), (self.bias_ih, bias)]
        if hasattr(self, "bn_weight"):
            pairs += [
                (self.bn_weight, batchnorm.weight),
                (self.bn_bias, batchnorm.bias),
                (self.bn_running_mean, batchnorm.running_mean),
                (self.bn_running_var, batchnorm.running_var),
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
                z,
                self.bn_running_mean,
                self.bn_running_var,
                self.bn_weight,
                self.bn_bias,
                training=False,
                momentum=0.0,
                eps=geometry.bn_eps,
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
            outputs, *last = _SequenceFunction.apply(
                self, gate_observer, layer_index, projected, self.weight_hh, *states
            )
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
        self,
        u: Tensor,
        weight_hh: Tensor,
        state: tuple[Tensor, ...],
        observer: Optional[GateObserver],
        index: int,
        keep: bool,
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
            parts.append(
                f"conv{self.conv.dims}d k={self.conv.kernel_size} bn={self.conv.batchnorm} shortcut={self.conv.shortcut}"
            )
        if self.cell is CellType.VRNN:
            parts.append(f"activation={self.activation}")
        if self.bias_ih is None:
            parts.append("bias=False")
        return ", ".join(parts)
