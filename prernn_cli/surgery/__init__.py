"""Find the layers a network lets us convert, and cut the network around them.

:mod:`~prernn_cli.surgery.tracing` traces the model with :mod:`torch.fx` and
propagates shapes on fake tensors; :mod:`~prernn_cli.surgery.convertibility`
reports every layer and whether (and as what) it can be converted (reading a
BatchNorm that applies its activation itself with :mod:`~prernn_cli.surgery.norm_act`);
:mod:`~prernn_cli.surgery.cutting` cuts the graph around the converted layers.
"""

from prernn_cli.surgery.convertibility import LayerReport, NetworkReport, network_report, resolve_layers
from prernn_cli.surgery.cutting import ConvertedSite, FeedForwardPart, SplitNetwork, split_at_features, split_network

__all__ = [
    "ConvertedSite",
    "FeedForwardPart",
    "LayerReport",
    "NetworkReport",
    "SplitNetwork",
    "network_report",
    "resolve_layers",
    "split_at_features",
    "split_network",
]
