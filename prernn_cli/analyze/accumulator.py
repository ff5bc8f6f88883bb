"""Gate saturation counts of a converted model's recurrent layers (Sec. 4.1, Figure 2).

A gate unit is *left-saturated* at a time step when its post-sigmoid
activation is below 0.1, *right-saturated* when it is above 0.9, and
*unsaturated* otherwise. :class:`GateAccumulator` keeps, per recurrent layer,
gate and unit, the counts of left- and right-saturated activations and the
number of observations, plus a 10-bin histogram per gate. Memory is bounded by
those accumulators, not by the number of clips.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from prernn_cli.errors import PrernnError, UserInputError
from prernn_cli.spec import CellType

LEFT_SATURATION = 0.1
"""An activation below this is left-saturated (the gate is closed)."""
RIGHT_SATURATION = 0.9
"""An activation above this is right-saturated (the gate is open)."""
HISTOGRAM_BINS = 10
"""Equal-width bins over [0, 1]: [0, 0.1), [0.1, 0.2), ..., [0.9, 1.0]."""
MOSTLY_SATURATED = 0.5
"""A layer whose saturated share reaches this has 'mostly saturated' gates."""
RARELY_SATURATED = 0.2
"""A layer whose saturated share is at most this has gates that 'rarely saturate'."""
LONG_MEMORY_FRACTION = 0.5
"""An LSTM forget-gate unit right-saturated more than this fraction of the time is a long-memory cell."""

GATES: dict[CellType, tuple[str, ...]] = {
    CellType.LSTM: ("i", "f", "o"),
    CellType.GRU: ("r", "z"),
}
"""The gates analysed per cell, in the order the figure shows them."""

GATE_NAMES = {"i": "input gate", "f": "forget gate", "o": "output gate", "r": "reset gate", "z": "update gate"}

_BIN_EDGES = torch.tensor([k / HISTOGRAM_BINS for k in range(1, HISTOGRAM_BINS)])  # inner edges 0.1 ... 0.9 (float32)


class GateAccumulator:
    """Fixed-size saturation counts for every recurrent layer, gate and unit.

    Use an instance as the ``gate_observer`` of
    :meth:`prernn_cli.model.RecurrentModel.forward`: each call adds one time
    step of activations ``{gate: Tensor[B, H]}`` of layer ``layer_index``.
    Gates not in :data:`GATES` for the cell (the LSTM candidate ``g``) are
    ignored. The counts live on the device of the first activations seen, so a
    GPU run does not copy every step to the host.

    Counts per (layer, gate), as ``left[layer][gate]`` etc.: ``left[u]`` /
    ``right[u]`` — how many activations of unit ``u`` were < 0.1 / > 0.9;
    ``observations[layer]`` — how many activations each unit had (batch ×
    steps); ``histogram[k]`` — activations of all units in bin ``k`` of
    :data:`HISTOGRAM_BINS`.
    """

    def __init__(self, cell: CellType, hidden_sizes: Sequence[int]) -> None:
        if cell not in GATES:
            raise UserInputError(f"{cell.value.upper()} has no gates; analyze needs an LSTM or GRU model")
        self.cell = cell
        self.gates = GATES[cell]
        self.hidden_sizes = tuple(int(size) for size in hidden_sizes)
        count = len(self.gates)
        # one [G, H] (or [G, bins]) tensor per layer, rows in the order of self.gates
        self._left = [torch.zeros(count, h, dtype=torch.int64) for h in self.hidden_sizes]
        self._right = [torch.zeros(count, h, dtype=torch.int64) for h in self.hidden_sizes]
        self._histogram = [torch.zeros(count, HISTOGRAM_BINS, dtype=torch.int64) for _ in self.hidden_sizes]
        self._edges = _BIN_EDGES.clone()
        self._offsets = torch.arange(count).view(count, 1) * HISTOGRAM_BINS
        self.observations = [0] * len(self.hidden_sizes)

    def _rows(self, tensors: list[Tensor]) -> list[dict[str, Tensor]]:
        return [{gate: t[k].cpu() for k, gate in enumerate(self.gates)} for t in tensors]

    @property
    def left(self) -> list[dict[str, Tensor]]:
        return self._rows(self._left)

    @property
    def right(self) -> list[dict[str, Tensor]]:
        return self._rows(self._right)

    @property
    def histogram(self) -> list[dict[str, Tensor]]:
        return self._rows(self._histogram)

    def _to(self, device: torch.device) -> None:
        if self._edges.device != device:
            move = lambda tensors: [t.to(device) for t in tensors]  # noqa: E731
            self._left, self._right, self._histogram = move(self._left), move(self._right), move(self._histogram)
            self._edges, self._offsets = self._edges.to(device), self._offsets.to(device)

    @torch.no_grad()
    def __call__(self, layer_index: int, gates: Mapping[str, Tensor]) -> None:
        if not 0 <= layer_index < len(self.hidden_sizes):
            raise ValueError(f"layer_index {layer_index} out of range for {len(self.hidden_sizes)} recurrent layers")
        missing = [gate for gate in self.gates if gate not in gates]
        if missing:
            raise ValueError(f"gates {missing} missing from the observed gates {sorted(gates)} of layer {layer_index}")
        shapes = {tuple(gates[gate].shape) for gate in self.gates}
        hidden = self.hidden_sizes[layer_index]
        if len(shapes) != 1 or len(next(iter(shapes))) != 2 or next(iter(shapes))[1] != hidden:
            raise ValueError(
                f"gates of layer {layer_index} have shapes {sorted(shapes)}; expected one shape [batch, {hidden}]"
            )
        values = torch.stack([gates[gate].detach() for gate in self.gates]).float()  # [G, B, H]
        self._to(values.device)
        if torch.isnan(values).any():
            raise PrernnError(f"the gates of layer {layer_index + 1} produced NaN; the model's weights are broken")
        self._left[layer_index] += (values < LEFT_SATURATION).sum(dim=1)
        self._right[layer_index] += (values > RIGHT_SATURATION).sum(dim=1)
        bins = torch.bucketize(values.flatten(1), self._edges, right=True) + self._offsets  # [G, B*H]
        counts = torch.bincount(bins.flatten(), minlength=len(self.gates) * HISTOGRAM_BINS)
        self._histogram[layer_index] += counts.view(len(self.gates), HISTOGRAM_BINS)
        self.observations[layer_index] += values.shape[1]
