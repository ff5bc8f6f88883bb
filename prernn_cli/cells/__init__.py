"""The paper's recurrent layers: PreVRNN, PreLSTM, PreGRU, their SIH variants, and the traditional baselines.

This package is the one place where the paper's equations live (Yang, Molchanov,
Kautz, CVPR 2018; SPEC §2): :mod:`~prernn_cli.cells.layer` holds what every layer
shares (the input-to-hidden projection, the time loop, torch's fused path),
:mod:`~prernn_cli.cells.vrnn`, :mod:`~prernn_cli.cells.lstm` and
:mod:`~prernn_cli.cells.gru` one cell's equations each, and
:mod:`~prernn_cli.cells.sequence` the autograd node that runs a whole sequence
with the cell's own backward pass.
"""

from prernn_cli.cells.gru import PreGRU
from prernn_cli.cells.layer import ACTIVATIONS, ConvGeometry, GateObserver, LayerState, RecurrentLayer
from prernn_cli.cells.lstm import PreLSTM
from prernn_cli.cells.registry import CELL_CLASSES, recurrent_layer_class
from prernn_cli.cells.vrnn import PreVRNN

__all__ = [
    "ACTIVATIONS",
    "CELL_CLASSES",
    "ConvGeometry",
    "GateObserver",
    "LayerState",
    "PreGRU",
    "PreLSTM",
    "PreVRNN",
    "RecurrentLayer",
    "recurrent_layer_class",
]
