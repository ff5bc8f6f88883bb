"""A BatchNorm that applies its activation itself (timm's ``BatchNormAct2d``), in a form the dataflow rule reads.

timm's ``BatchNormAct2d`` is a ``BatchNorm2d`` whose forward is torch's BatchNorm, then ``self.drop``,
then ``self.act``, all in one module. :class:`BatchNormAct2d` here computes exactly that with
torch's own BatchNorm forward; an architecture builder gives such modules this class, and the
rule of :mod:`~prernn_cli.surgery.convertibility` reads one as its BatchNorm followed by its
activation. Nothing here imports timm.
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from prernn_cli.surgery.tracing import module_activation


class BatchNormAct2d(nn.BatchNorm2d):
    """``BatchNorm2d``, then ``self.drop``, then ``self.act`` (timm's ``BatchNormAct2d``, same state and names).

    torch.fx keeps it as one call (it is a BatchNorm), so it runs in the model's train or eval
    mode like any BatchNorm wherever it is not converted.
    """

    act: nn.Module
    drop: nn.Module

    def forward(self, input: Tensor) -> Tensor:  # noqa: A002 - nn.BatchNorm2d's own argument name
        return self.act(self.drop(super().forward(input)))


def fused_activation(norm: nn.Module) -> tuple[Optional[str], Optional[str]]:
    """The activation a BatchNorm applies itself, as ``(name, None)``, or ``(None, why it cannot be converted)``.

    ``("identity", None)`` for a plain BatchNorm or one whose ``act`` is an identity. The name is one
    of the recurrent cells' activations.
    """
    if not isinstance(norm, BatchNormAct2d):
        return "identity", None
    if not isinstance(norm.drop, nn.Identity):
        return None, f"its BatchNorm applies {type(norm.drop).__name__} inside, which a recurrent layer cannot"
    if isinstance(norm.act, nn.Identity):
        return "identity", None
    name = module_activation(norm.act)
    if name is None:
        return None, f"its BatchNorm applies {norm.act!r}, an activation the recurrent cells do not have"
    return name, None
