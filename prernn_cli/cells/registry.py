"""The recurrent layer class of each cell type."""

from __future__ import annotations

from prernn_cli.cells.gru import PreGRU
from prernn_cli.cells.layer import RecurrentLayer
from prernn_cli.cells.lstm import PreLSTM
from prernn_cli.cells.vrnn import PreVRNN
from prernn_cli.spec import CellType

CELL_CLASSES: dict[CellType, type[RecurrentLayer]] = {
    CellType.VRNN: PreVRNN,
    CellType.LSTM: PreLSTM,
    CellType.GRU: PreGRU,
}


def recurrent_layer_class(cell: CellType) -> type[RecurrentLayer]:
    """The layer class for a cell type."""
    return CELL_CLASSES[CellType(cell)]
