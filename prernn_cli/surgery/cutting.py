"""Cut a network around its converted layers into the feed-forward parts a recurrent model runs.

:func:`split_network` cuts the traced graph into the pieces
:class:`~prernn_cli.model.RecurrentModel` runs: the trunk (frames → inputs of the
first converted layer), the feed-forward parts between converted layers, and
the head. :func:`split_at_features` cuts before the output layer, for the
traditional design.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

from torch import fx, nn

from prernn_cli.errors import LayerError
from prernn_cli.spec import InputSpec
from prernn_cli.surgery.convertibility import NetworkReport, _output_layer, _Region, _region_for
from prernn_cli.surgery.tracing import _shape, _Trace, _trace


@dataclass
class FeedForwardPart:
    """A feed-forward piece of the network and the per-sample shape of what it receives."""

    module: fx.GraphModule
    input_shape: tuple[int, ...]


@dataclass
class ConvertedSite:
    """What the model needs to build one recurrent layer in place of a pretrained one."""

    layer: nn.Module  # the pretrained nn.Linear / nn.Conv
    batchnorm: Optional[nn.Module]
    has_shortcut: bool


@dataclass
class SplitNetwork:
    """A network cut around its converted layers: trunk → site 0 → between 0 → site 1 → … → head."""

    trunk: fx.GraphModule
    sites: list[ConvertedSite]
    between: list[FeedForwardPart]
    head: FeedForwardPart


def _extract(
    graph_module: fx.GraphModule, inputs: Sequence[fx.Node], outputs: Sequence[fx.Node] | fx.Node, as_tuple: bool
) -> fx.GraphModule:
    """A GraphModule computing ``outputs`` from ``inputs`` with the nodes of ``graph_module`` between them."""
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for index, node in enumerate(inputs):
        env[node] = graph.placeholder(f"input_{index}" if len(inputs) > 1 else "x")
    wanted: set[fx.Node] = set()
    stack = list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
    while stack:
        node = stack.pop()
        if node in wanted or node in env:
            continue
        if node.op == "placeholder":
            raise ValueError(f"segment needs the network input {node.name} besides its own input")
        wanted.add(node)
        stack.extend(node.all_input_nodes)
    for node in graph_module.graph.nodes:
        if node in wanted:
            env[node] = graph.node_copy(node, lambda arg: env[arg])
    if as_tuple:
        graph.output(tuple(env[node] for node in outputs))
    else:
        graph.output(fx.map_arg(outputs, lambda arg: env[arg]))
    graph.lint()
    return fx.GraphModule(graph_module, graph)


def _trace_of(model: nn.Module, input_spec: InputSpec, report: Optional[NetworkReport]) -> _Trace:
    """The trace behind ``report`` (made from this very model), or a new one."""
    return report.trace if report is not None and report.trace is not None else _trace(model, input_spec)


def split_network(
    model: nn.Module, input_spec: InputSpec, layer_names: Sequence[str], report: Optional[NetworkReport] = None
) -> SplitNetwork:
    """Cut ``model`` around the named (already resolved, convertible) layers, in network order.

    ``report``, when given, must come from :func:`~prernn_cli.surgery.network_report` on this same model: its trace is reused.
    """
    trace = _trace_of(model, input_spec, report)
    modules = dict(trace.graph_module.named_modules())
    by_node = {str(node.target): node for node in trace.nodes if node.op == "call_module"}
    regions: list[_Region] = []
    for name in layer_names:
        region = _region_for(trace, by_node[name], modules)
        if isinstance(region, str):
            raise LayerError(f"layer {name} cannot be converted: {region}")
        regions.append(region)
    for first, second in zip(regions, regions[1:]):
        if second.layer not in trace.descendants(first.end):
            raise LayerError(
                f"layers {first.layer.target} and {second.layer.target} are not one after the other on the main path; convert layers of one chain"
            )
    trunk = _extract(trace.graph_module, [trace.placeholder], regions[0].inputs, as_tuple=True)
    between = [
        FeedForwardPart(_extract(trace.graph_module, [first.end], second.inputs, as_tuple=True), _shape(first.end))
        for first, second in zip(regions, regions[1:])
    ]
    head = FeedForwardPart(
        _extract(trace.graph_module, [regions[-1].end], trace.output.args[0], as_tuple=False), _shape(regions[-1].end)
    )
    sites = [
        ConvertedSite(
            layer=modules[region.layer.target],
            batchnorm=modules[region.batchnorm] if region.batchnorm else None,
            has_shortcut=region.shortcut is not None,
        )
        for region in regions
    ]
    return SplitNetwork(trunk=trunk, sites=sites, between=between, head=head)


def split_at_features(
    model: nn.Module, input_spec: InputSpec, report: Optional[NetworkReport] = None
) -> tuple[fx.GraphModule, nn.Module, int]:
    """Cut ``model`` before its output layer, for a traditional design: (backbone, output layer, feature size)."""
    trace = _trace_of(model, input_spec, report)
    modules = dict(trace.graph_module.named_modules())
    output_node = _output_layer(trace, modules)
    if output_node is None or not isinstance(modules[output_node.target], nn.Linear):
        raise LayerError(
            "the network has no fc output layer to put a traditional recurrent layer under; convert a layer instead"
        )
    features = output_node.args[0]
    shape = _shape(features)
    if shape is None or len(shape) != 1:
        raise LayerError(
            f"the output layer {output_node.target} does not receive one feature vector per frame; a traditional design needs one"
        )
    backbone = _extract(trace.graph_module, [trace.placeholder], [features], as_tuple=True)
    return backbone, modules[output_node.target], shape[0]
