"""Load any checkpoint a user has; save and load our converted-model format.

* :mod:`~prernn_cli.checkpoint.formats` — what a file holds, from its content;
* :mod:`~prernn_cli.checkpoint.pickles` — ``torch.load(weights_only=True)``, refusing
  pickled objects unless trusted;
* :mod:`~prernn_cli.checkpoint.loading` — :func:`load_checkpoint`: any format, rebuilt on
  its (given or identified) architecture;
* :mod:`~prernn_cli.checkpoint.converted` — our safetensors + spec format (SPEC §5).
"""

from prernn_cli.checkpoint.converted import load_converted, save_converted
from prernn_cli.checkpoint.formats import CheckpointFormat, detect_format
from prernn_cli.checkpoint.loading import LoadedCheckpoint, extract_state_dict, load_checkpoint

__all__ = [
    "CheckpointFormat",
    "LoadedCheckpoint",
    "detect_format",
    "extract_state_dict",
    "load_checkpoint",
    "load_converted",
    "save_converted",
]
