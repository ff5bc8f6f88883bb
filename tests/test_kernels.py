"""The oneDNN route for the recurrence's matrix products, against plain ATen, and when it must not be taken."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close
from torch.utils.flop_counter import FlopCounterMode

from prernn_cli.cells import PreGRU, PreLSTM, PreVRNN
from prernn_cli.kernels import (
    ONEDNN_MIN_ELEMENTS,
    PACK_MIN_USES,
    WeightProduct,
    fused_rnn_usable,
    linear,
    onednn_usable,
)

ONEDNN = torch.backends.mkldnn.is_available()


def test_onednn_is_used_on_cpu_float32_for_big_weights():
    assert onednn_usable(torch.randn(12, 5)) is ONEDNN
    with torch.no_grad():
        assert onednn_usable(torch.nn.Parameter(torch.randn(12, 5))) is ONEDNN  # a layer's own weights
    small, big = torch.randn(128, 256), torch.randn(ONEDNN_MIN_ELEMENTS // 256, 256)
    assert not WeightProduct(small, batch=8, uses=1000).onednn  # MKL's lower cost per call wins
    dense = WeightProduct(big, batch=8, uses=1)
    assert dense.onednn is ONEDNN and dense.kernel_weight is big
    packed = WeightProduct(big, batch=8, uses=PACK_MIN_USES)  # a long sequence: reordered once
    assert packed.onednn is ONEDNN and (packed.kernel_weight is not big) is ONEDNN


def test_onednn_is_not_used_where_it_cannot_be():
    assert not onednn_usable(torch.randn(3, 3, dtype=torch.float64))
    assert not onednn_usable(torch.randn(3, 3, device="meta"))
    assert not onednn_usable(torch.randn(3, 3, requires_grad=True))  # no derivative
    with torch.no_grad():
        assert onednn_usable(torch.randn(3, 3, requires_grad=True)) is ONEDNN
    with torch.backends.mkldnn.flags(enabled=False):
        assert not onednn_usable(torch.randn(3, 3))
    with FlopCounterMode(display=False):  # dispatch modes must see the ordinary matmul ops
        assert not onednn_usable(torch.randn(3, 3))


@pytest.mark.parametrize(
    "rows,uses",
    [(16, 1), (ONEDNN_MIN_ELEMENTS // 64, 1), (ONEDNN_MIN_ELEMENTS // 64, PACK_MIN_USES)],
    ids=["mkl", "onednn", "onednn-packed"],
)
@pytest.mark.parametrize("transposed", [False, True])
def test_weight_product_equals_matmul(rows, uses, transposed):
    weight = torch.randn(64, rows).t() if transposed else torch.randn(rows, 64)
    product = WeightProduct(weight, batch=3, uses=uses)
    x, add = torch.randn(3, 64), torch.randn(3, rows)
    assert_close(product.mm(x), x @ weight.t(), rtol=1e-4, atol=1e-4)
    assert_close(product.addmm(add, x), add + x @ weight.t(), rtol=1e-4, atol=1e-4)
    strided = torch.randn(3, 192)[:, 64:128]  # a column slice, as the GRU's backward passes
    assert_close(product.mm(strided), strided @ weight.t(), rtol=1e-4, atol=1e-4)
    assert product.mm(torch.randn(7, 64)).shape == (7, rows)  # another batch than packed for


def test_linear_equals_functional_linear():
    x, weight, bias = (
        torch.randn(6, 256),
        torch.randn(ONEDNN_MIN_ELEMENTS // 256, 256),
        torch.randn(ONEDNN_MIN_ELEMENTS // 256),
    )
    assert onednn_usable(x, weight, bias) is ONEDNN
    assert_close(linear(x, weight, bias), torch.nn.functional.linear(x, weight, bias), rtol=1e-4, atol=1e-4)
    assert_close(linear(x, weight, None), x @ weight.t(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "cls,sih", [(PreVRNN, False), (PreLSTM, False), (PreLSTM, True), (PreGRU, False), (PreGRU, True)]
)
def test_layers_give_the_same_sequence_with_and_without_onednn(cls, sih):
    layer = cls(64, 1024, sih=sih, activation="gelu")  # W_h· ≥ 2^19 elements: oneDNN (gelu: the VRNN's own loop)
    x = torch.randn(2, PACK_MIN_USES, 64)  # long enough for the packed weight
    with torch.no_grad():
        fast, _ = layer(x)
        with torch.backends.mkldnn.flags(enabled=False):
            plain, _ = layer(x)
    assert_close(fast, plain, rtol=1e-4, atol=1e-5)


def test_fused_rnn_ops_only_for_small_layers_on_plain_cpu_tensors():
    small, big = torch.randn(4 * 256, 256), torch.randn(4 * 1024, 1024)
    assert fused_rnn_usable(small)
    assert not fused_rnn_usable(big)  # the own loop with oneDNN products is faster there
    assert fused_rnn_usable(torch.randn(4 * 512, 512))  # inference up to 2^20 elements
    assert not fused_rnn_usable(torch.randn(4 * 512, 512, requires_grad=True))  # training: below 2^19
    assert not fused_rnn_usable(small.half())
    assert not fused_rnn_usable(small.to("meta"))
    with FlopCounterMode(display=False):
        assert not fused_rnn_usable(small)
