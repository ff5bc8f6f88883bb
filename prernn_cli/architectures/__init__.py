"""Known backbones: torchvision's classification and video models, C3D, the sample nets, user classes.

* :mod:`~prernn_cli.architectures.registry` — the known names; building with random
  weights, or on the ``meta`` device (shapes only); a name read from a file is built
  from the registry only, never imported;
* :mod:`~prernn_cli.architectures.inputs` — the input each expects, and the paper's
  layer names (fc6, fc7, res5c) on it;
* :mod:`~prernn_cli.architectures.identify` — which architecture a bare state_dict
  belongs to, from its key names and shapes.
"""

from prernn_cli.architectures.identify import (
    ArchitectureMatch,
    describe_mismatch,
    fit_architecture,
    identify_architecture,
    match_architecture,
    signature_cache_file,
)
from prernn_cli.architectures.inputs import architecture_input, has_known_input, paper_aliases
from prernn_cli.architectures.registry import (
    build_architecture,
    build_empty_architecture,
    build_registered_architecture,
    is_registered,
    is_user_callable,
    known_architectures,
)

__all__ = [
    "ArchitectureMatch",
    "architecture_input",
    "build_architecture",
    "build_empty_architecture",
    "build_registered_architecture",
    "describe_mismatch",
    "fit_architecture",
    "has_known_input",
    "identify_architecture",
    "is_registered",
    "is_user_callable",
    "known_architectures",
    "match_architecture",
    "paper_aliases",
    "signature_cache_file",
]
