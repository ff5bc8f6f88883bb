"""Which CPU kernels compute the recurrent layers' products: oneDNN, MKL (ATen's default), or torch's fused RNN ops.

A recurrent layer's time loop multiplies a small batch of hidden states by its
hidden-to-hidden weights, step after step. ATen's CPU ``addmm`` goes to MKL. On
some CPUs MKL's small-batch sgemm is several times slower than oneDNN's for big
weights, while for small weights oneDNN's higher fixed cost per call makes it
the slower one. Where the two cross over depends on the machine; the thresholds
below (:data:`ONEDNN_MIN_ELEMENTS`, the ``PACK_*`` and ``FUSED_RNN_*`` constants)
were measured with ``benchmarks/bench_cells.py`` on the development machine.

:class:`WeightProduct` picks the kernel per weight from these thresholds:

* oneDNN's linear (``torch.ops.mkldnn._linear_pointwise``, the kernel Inductor
  emits for CPU linears) for weights of at least 2^19 elements, with the weight
  reordered once into oneDNN's blocked layout when the sequence is long enough
  to pay for the reordering;
* ``addmm`` otherwise.

The results agree to float rounding. :func:`onednn_usable` keeps to plain ATen
ops in these cases:

* on GPU, for dtypes other than float32, and for tensor subclasses;
* while exporting, compiling or tracing, and under a dispatch mode (fake tensors,
  FLOP counting) or CPU autocast;
* when autograd would need to differentiate through the product, because the
  oneDNN op has no derivative;
* when the user turns oneDNN off with ``torch.backends.mkldnn.flags(enabled=False)``.

:func:`fused_rnn_usable` says when a layer that *is* a standard LSTM or Elman RNN
may run as torch's own sequence op (:func:`torch.lstm`, :func:`torch.rnn_relu`,
:func:`torch.rnn_tanh`), the kernel behind :class:`torch.nn.LSTM`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils._python_dispatch import _get_current_dispatch_mode

# Thresholds measured with benchmarks/bench_cells.py on the development machine (module docstring).
# oneDNN beats MKL from this many weight elements on.
ONEDNN_MIN_ELEMENTS = 1 << 19
# Reordering a weight into oneDNN's blocked layout costs as much as several products
# (more for bigger weights). It pays for long sequences.
PACK_MIN_USES = 16
PACK_MAX_ELEMENTS = 1 << 22
PACK_ALWAYS_USES = 64
# torch's fused RNN ops beat the layer's own loop below these sizes of W_h· (see fused_rnn_usable).
FUSED_RNN_MAX_ELEMENTS = 1 << 20
FUSED_RNN_MAX_ELEMENTS_TRAINING = 1 << 19

_PLAIN_TENSOR_TYPES = (Tensor, torch.nn.Parameter)  # not fake, functional or other subclass tensors


@functools.cache
def _onednn_linear_available() -> bool:
    if not torch.backends.mkldnn.is_available():
        return False
    try:  # looking an op up raises when this build of torch lacks it
        torch.ops.mkldnn._linear_pointwise.default  # noqa: B018
        torch.ops.mkldnn._reorder_linear_weight.default  # noqa: B018
    except (AttributeError, RuntimeError):
        return False
    return True


def _plain_eager_cpu(tensors: Sequence[Tensor]) -> bool:
    """Ordinary eager execution on plain CPU tensors: no export, compile, trace, dispatch mode or CPU autocast."""
    if (
        torch.compiler.is_compiling()
        or torch.compiler.is_exporting()
        or torch.jit.is_tracing()
        or torch.jit.is_scripting()
    ):
        return False
    if _get_current_dispatch_mode() is not None or torch.is_autocast_enabled("cpu"):
        return False
    return all(type(t) in _PLAIN_TENSOR_TYPES and t.device.type == "cpu" and t.layout == torch.strided for t in tensors)


def onednn_usable(*tensors: Tensor) -> bool:
    """Whether oneDNN's linear may compute products of these tensors, here and now."""
    if not (_onednn_linear_available() and torch.backends.mkldnn.enabled and _plain_eager_cpu(tensors)):
        return False
    grad = torch.is_grad_enabled()
    return all(t.dtype == torch.float32 and not (grad and t.requires_grad) for t in tensors)


def fused_rnn_usable(weight_hh: Tensor, *tensors: Tensor) -> bool:
    """Whether torch's fused CPU sequence op (:func:`torch.lstm`, ...) should run a layer with this ``W_h·``, here and now.

    Only for small layers: the fused op pays no per-step dispatch cost, but above
    :data:`FUSED_RNN_MAX_ELEMENTS` ``W_h·`` elements (:data:`FUSED_RNN_MAX_ELEMENTS_TRAINING`
    when training) our own loop with oneDNN products was faster, measured with
    ``benchmarks/bench_cells.py`` on the development machine. It has its own
    derivative, so training may use it too. CUDA is left to the layer's own loop:
    cuDNN wants its weights in one flat buffer, which a Pre-layer's parameters are not.
    """
    elements = weight_hh.numel()
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (weight_hh, *tensors))
    if elements > (FUSED_RNN_MAX_ELEMENTS_TRAINING if needs_grad else FUSED_RNN_MAX_ELEMENTS):
        return False
    tensors = (weight_hh, *tensors)
    return _plain_eager_cpu(tensors) and all(t.dtype in (torch.float32, torch.float64) for t in tensors)


class WeightProduct:
    """``x @ weight.T`` for many ``x`` against one weight, e.g. a recurrence's ``W_h·`` over its steps.

    The kernel is chosen once, here, for the products to come: the ``x`` and
    ``add`` tensors passed later must be like ``operands`` (device, dtype, no
    gradient needed), as a time loop's states and inputs are.

    Args:
        weight: ``[out, in]``; a transposed view works too (backward passes use ``W.T``).
        batch: the rows of the ``x`` that will come, used as a hint when packing.
        uses: how many products will be taken.
        operands: tensors like the ``x`` and ``add`` that will come.
    """

    def __init__(self, weight: Tensor, batch: int, uses: int, operands: Sequence[Tensor] = ()) -> None:
        self.weight_t = weight.t()
        self.kernel_weight = weight
        elements = weight.numel()
        self.onednn = False
        if elements >= ONEDNN_MIN_ELEMENTS and onednn_usable(weight, *operands):
            self.onednn = True
            if weight.is_contiguous() and (
                (uses >= PACK_MIN_USES and elements <= PACK_MAX_ELEMENTS) or uses >= PACK_ALWAYS_USES
            ):
                self.kernel_weight = torch.ops.mkldnn._reorder_linear_weight(weight, batch)

    def mm(self, x: Tensor) -> Tensor:
        """``x @ weight.T``."""
        if self.onednn:
            return torch.ops.mkldnn._linear_pointwise(x, self.kernel_weight, None, "none", [], "")
        return torch.mm(x, self.weight_t)

    def addmm(self, add: Tensor, x: Tensor) -> Tensor:
        """``add + x @ weight.T``, with ``add`` of the result's shape."""
        if self.onednn:
            return torch.ops.mkldnn._linear_pointwise.binary(x, add, self.kernel_weight, None, "add")
        return torch.addmm(add, x, self.weight_t)


def linear(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """:func:`torch.nn.functional.linear`, on oneDNN for big weights where :func:`onednn_usable` allows."""
    operands = (x, weight) if bias is None else (x, weight, bias)
    if x.dim() == 2 and weight.numel() >= ONEDNN_MIN_ELEMENTS and onednn_usable(*operands):
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)
