"""Find the layers a network lets us convert, and cut the network around them.

Convertibility is decided from the model's real dataflow, traced with
:mod:`torch.fx` and shape-propagated on fake tensors (no compute, no memory for
activations):

* an **fc** layer (``nn.Linear``) is convertible when it maps one vector per frame
  (a 2-D input), it is a cut point of the graph (everything after it depends on
  the input only through it), and it is not the output layer;
* a **conv** layer (``nn.Conv2d``/``nn.Conv3d``) is convertible when its output
  reaches global average pooling through only its BatchNorm, a residual add and
  an activation, and the pooled vector is a cut point (SPEC §2's
  ``P(B(W * x) + γ)``).

The activation right after an fc layer, and the BatchNorm/add/activation/pool
after a conv, are absorbed into the recurrent layer. :func:`split_network` then
cuts the graph into the segments :class:`~prernn_cli.model.RecurrentModel` runs:
the trunk (frames → inputs of the first converted layer), the feed-forward parts
between converted layers, and the head.
"""

from __future__ import annotations

import contextlib
import difflib
import io
import logging
import operator
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from prernn_cli.errors import LayerError
from prernn_cli.spec import InputSpec, LayerKind

log = logging.getLogger(__name__)

_ACTIVATION_MODULES: dict[type, str] = {
    nn.ReLU: "relu", nn.ReLU6: "relu6", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid", nn.GELU: "gelu",
    nn.SiLU: "silu", nn.Hardswish: "hardswish", nn.LeakyReLU: "leaky_relu", nn.ELU: "elu",
}
_ACTIVATION_FUNCTIONS: dict[Any, str] = {
    F.relu: "relu", torch.relu: "relu", F.relu6: "relu6", torch.tanh: "tanh", torch.sigmoid: "sigmoid",
    F.gelu: "gelu", F.silu: "silu", F.hardswish: "hardswish", F.leaky_relu: "leaky_relu", F.elu: "elu",
    torch.relu_: "relu", F.relu_: "relu",
}
_ACTIVATION_METHODS = {"relu": "relu", "relu_": "relu", "tanh": "tanh", "sigmoid": "sigmoid"}
_ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}
_POOL_MODULES = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AvgPool2d, nn.AvgPool3d)
_POOL_FUNCTIONS = {F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.avg_pool2d, F.avg_pool3d, torch.mean}
_CONV_TYPES = (nn.Conv2d, nn.Conv3d)


@dataclass(frozen=True)
class LayerReport:
    """One module of the network, as ``inspect`` shows it."""

    name: str
    alias: Optional[str]
    type: str
    input_shape: Optional[tuple[int, ...]]
    output_shape: Optional[tuple[int, ...]]
    params: int
    convertible: bool
    kind: Optional[LayerKind] = None
    reason: Optional[str] = None
    hidden_size: Optional[int] = None
    input_size: Optional[int] = None
    weight_numel: Optional[int] = None
    batchnorm: Optional[str] = None
    shortcut: Optional[str] = None
    pooling: Optional[str] = None
    activation: Optional[str] = None

    @property
    def label(self) -> str:
        """The name a user knows the layer by: ``fc6 (classifier.0)`` or ``layer4.2.conv3``."""
        return f"{self.alias} ({self.name})" if self.alias else self.name

    def to_json(self) -> dict:
        data = {key: getattr(self, key) for key in self.__dataclass_fields__}
        data["kind"] = self.kind.value if self.kind else None
        data["input_shape"] = list(self.input_shape) if self.input_shape else None
        data["output_shape"] = list(self.output_shape) if self.output_shape else None
        return data


@dataclass(frozen=True)
class NetworkReport:
    """Every named module of a network with its convertibility."""

    layers: tuple[LayerReport, ...]  # every leaf module, in the order the traced forward calls them
    feature_size: Optional[int]  # size of the vector fed to the output layer
    output_layer: Optional[str]  # dotted name of the output layer
    traced: bool = True
    trace_error: Optional[str] = None
    trace: Optional["_Trace"] = field(default=None, repr=False, compare=False)  # reused to cut the network

    def convertible(self) -> list[LayerReport]:
        return [layer for layer in self.layers if layer.convertible]

    def get(self, name: str) -> Optional[LayerReport]:
        return next((layer for layer in self.layers if layer.name == name), None)


@dataclass
class _Region:
    """The nodes a conversion absorbs, and the values it needs from before it."""

    layer: fx.Node
    end: fx.Node  # the node whose value the recurrent layer's output replaces
    inputs: list[fx.Node]  # external inputs: the layer's input, then the shortcut (conv, if any)
    kind: LayerKind
    activation: str = "identity"
    batchnorm: Optional[str] = None
    shortcut: Optional[fx.Node] = None
    pooling: Optional[str] = None


@dataclass
class _Trace:
    graph_module: fx.GraphModule
    nodes: list[fx.Node]
    depends_on_input: dict[fx.Node, bool]
    output: fx.Node
    placeholder: fx.Node
    descendants_cache: dict[fx.Node, set[fx.Node]] = field(default_factory=dict)

    def descendants(self, node: fx.Node) -> set[fx.Node]:
        if node not in self.descendants_cache:
            seen: set[fx.Node] = set()
            stack = list(node.users)
            while stack:
                current = stack.pop()
                if current not in seen:
                    seen.add(current)
                    stack.extend(current.users)
            self.descendants_cache[node] = seen
        return self.descendants_cache[node]


# ---------------------------------------------------------------------- tracing
class _LayerTracer(fx.Tracer):
    """torch.fx's tracer, keeping subclasses of the layers we reason about (e.g. torchvision's
    ``Conv3DSimple``) as single calls instead of tracing into them."""

    _LEAVES = (nn.Linear, *(_CONV_TYPES), nn.modules.batchnorm._BatchNorm, *_POOL_MODULES, *_ACTIVATION_MODULES)

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return isinstance(module, self._LEAVES) or super().is_leaf_module(module, qualified_name)


def _example_input(model: nn.Module, input_spec: InputSpec, batch: int = 2) -> torch.Tensor:
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    return torch.empty(batch, *input_spec.step_shape(), device=device)


def _trace(model: nn.Module, input_spec: InputSpec) -> _Trace:
    """Trace ``model`` with torch.fx (in eval mode) and propagate shapes on fake tensors."""
    was_training = model.training
    model.eval()
    try:
        tracer = _LayerTracer()
        graph = tracer.trace(model)
        graph_module = fx.GraphModule(tracer.root, graph, type(model).__name__)
    finally:
        model.train(was_training)
    graph_module.eval()
    placeholders = [node for node in graph_module.graph.nodes if node.op == "placeholder"]
    used = [node for node in placeholders if node.users]
    if len(used) != 1:
        raise ValueError(f"the model's forward uses {len(used)} inputs; only one-input networks can be converted")
    from torch._subclasses.fake_tensor import FakeTensorMode

    mode = FakeTensorMode(allow_non_fake_inputs=True)
    example = mode.from_tensor(_example_input(model, input_spec))
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # ShapeProp prints a traceback before re-raising
            ShapeProp(graph_module, fake_mode=mode).propagate(example)
    except RuntimeError as error:
        cause = error.__cause__ or error
        raise ValueError(f"the example input {list(input_spec.step_shape())} does not run through it: {cause}") from cause
    nodes = list(graph_module.graph.nodes)
    depends: dict[fx.Node, bool] = {}
    for node in nodes:
        depends[node] = node.op == "placeholder" or any(depends.get(arg, False) for arg in node.all_input_nodes)
    output = next(node for node in nodes if node.op == "output")
    return _Trace(graph_module, nodes, depends, output, used[0])


def _shape(node: fx.Node) -> Optional[tuple[int, ...]]:
    meta = node.meta.get("tensor_meta")
    shape = getattr(meta, "shape", None)
    return tuple(int(size) for size in shape[1:]) if shape is not None else None


def _activation_name(node: fx.Node, modules: Mapping[str, nn.Module]) -> Optional[str]:
    if node.op == "call_module":
        return _ACTIVATION_MODULES.get(type(modules[node.target]))
    if node.op == "call_function":
        return _ACTIVATION_FUNCTIONS.get(node.target)
    if node.op == "call_method":
        return _ACTIVATION_METHODS.get(node.target)
    return None


def _is_add(node: fx.Node) -> bool:
    return (node.op == "call_function" and node.target in _ADD_FUNCTIONS) or (
        node.op == "call_method" and node.target in ("add", "add_")
    )


def _is_global_pool(node: fx.Node, modules: Mapping[str, nn.Module], channels: int) -> Optional[str]:
    """The pooling's description when ``node`` averages all positions of each channel, else None."""
    if node.op == "call_module" and isinstance(modules[node.target], _POOL_MODULES):
        description = f"{type(modules[node.target]).__name__} ({node.target})"
    elif node.op == "call_function" and node.target in _POOL_FUNCTIONS:
        description = getattr(node.target, "__name__", str(node.target))
    elif node.op == "call_method" and node.target == "mean":
        description = "mean over positions"
    else:
        return None
    shape = _shape(node)
    if shape is None or int(torch.Size(shape).numel()) != channels or (shape and shape[0] != channels):
        return None
    return description


def _sole_user(node: fx.Node) -> Optional[fx.Node]:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _describe(node: fx.Node) -> str:
    if node.op == "call_module":
        return str(node.target)
    if node.op == "call_function":
        return getattr(node.target, "__name__", str(node.target))
    return f"{node.op} {node.target}"


# ---------------------------------------------------------------------- per-layer analysis
def _fc_region(trace: _Trace, node: fx.Node, modules: Mapping[str, nn.Module]) -> _Region | str:
    in_shape = _shape(node.args[0]) if isinstance(node.args[0], fx.Node) else None
    if in_shape is None or len(in_shape) != 1:
        dims = "unknown" if in_shape is None else f"{len(in_shape) + 1}-D"
        return f"applies to a {dims} input (per token or position), not to one feature vector per frame"
    end, activation = node, "identity"
    user = _sole_user(node)
    if user is not None and _activation_name(user, modules):
        end, activation = user, _activation_name(user, modules)
    return _Region(layer=node, end=end, inputs=[node.args[0]], kind=LayerKind.FC, activation=activation)


def _conv_region(trace: _Trace, node: fx.Node, modules: Mapping[str, nn.Module]) -> _Region | str:
    conv = modules[node.target]
    if conv.groups != 1:
        return f"grouped conv (groups={conv.groups}) cannot hold stacked gate copies"
    if isinstance(conv.padding, str) or conv.padding_mode != "zeros":
        return "only zero padding with explicit sizes is supported"
    channels = conv.out_channels
    region = _Region(layer=node, end=node, inputs=[node.args[0]], kind=LayerKind.CONV)
    current = node
    stage = "conv"
    while True:
        user = _sole_user(current)
        if user is None:
            return "its output is used in several places, so it does not reach global average pooling alone"
        if stage == "conv" and user.op == "call_module" and isinstance(modules[user.target], nn.modules.batchnorm._BatchNorm):
            bn = modules[user.target]
            if not (bn.affine and bn.track_running_stats):
                return f"its BatchNorm {user.target} has no affine weights or running statistics"
            region.batchnorm, stage = str(user.target), "bn"
        elif stage in ("conv", "bn") and _is_add(user):
            others = [arg for arg in user.args if isinstance(arg, fx.Node) and arg is not current]
            if len(others) != 1 or _shape(others[0]) != _shape(current):
                return "the residual add does not add one shortcut of the conv's shape"
            region.shortcut, stage = others[0], "add"
        elif stage in ("conv", "bn", "add") and _activation_name(user, modules):
            region.activation, stage = _activation_name(user, modules), "act"
        elif _is_global_pool(user, modules, channels):
            region.pooling = _is_global_pool(user, modules, channels)
            region.end = user
            break
        else:
            return (
                f"its output reaches {_describe(user)} before global average pooling "
                "(only BatchNorm, a residual add and an activation may come between)"
            )
        current = user
    if region.shortcut is not None:
        region.inputs.append(region.shortcut)
    return region


def _check_cut(trace: _Trace, region: _Region, modules: Mapping[str, nn.Module]) -> Optional[str]:
    """Why the region's end is not a cut point of the network (None when it is)."""
    after = trace.descendants(region.end)
    if trace.output not in after:
        return "its output does not reach the network's output"
    for node in after:
        for arg in node.all_input_nodes:
            if arg is not region.end and arg not in after and trace.depends_on_input[arg]:
                return f"not on the network's main path: {_describe(node)} also uses values computed before it"
    if not any(node.op == "call_module" and any(True for _ in modules[node.target].parameters(recurse=False)) for node in after):
        return "it is the output layer (its outputs are the network's predictions)"
    return None


def _region_for(trace: _Trace, node: fx.Node, modules: Mapping[str, nn.Module]) -> _Region | str:
    module = modules[node.target]
    result = _fc_region(trace, node, modules) if isinstance(module, nn.Linear) else _conv_region(trace, node, modules)
    if isinstance(result, str):
        return result
    reason = _check_cut(trace, result, modules)
    return reason if reason else result


def _output_layer(trace: _Trace, modules: Mapping[str, nn.Module]) -> Optional[fx.Node]:
    """The last parametric layer before the output (Linear or conv), if any."""
    for node in reversed(trace.nodes):
        if node.op == "call_module" and isinstance(modules[node.target], (nn.Linear, *_CONV_TYPES)):
            return node
    return None


def analyze_network(
    model: nn.Module, input_spec: InputSpec, aliases: Optional[Mapping[str, str]] = None
) -> NetworkReport:
    """Report every leaf module of ``model`` and whether (and as what) it can be converted.

    Never raises for a model torch.fx cannot trace: every layer is then reported
    as not convertible, with the tracing error as the reason.
    """
    by_name: dict[str, str] = {}
    for alias, name in (aliases or {}).items():
        by_name.setdefault(name, alias)  # the first alias given is the one shown
    modules = dict(model.named_modules())
    try:
        trace = _trace(model, input_spec)
    except Exception as error:  # noqa: BLE001 - any tracing failure becomes the stated reason
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if len(message) > 240:
            message = message[:240].rsplit(" ", 1)[0] + " …"
        reason = f"the model cannot be traced with torch.fx ({type(error).__name__}: {message})"
        layers = tuple(
            LayerReport(
                name=name, alias=by_name.get(name), type=type(module).__name__, input_shape=None, output_shape=None,
                params=sum(p.numel() for p in module.parameters(recurse=False)), convertible=False, reason=reason,
            )
            for name, module in modules.items() if name and not any(True for _ in module.children())
        )
        return NetworkReport(layers=layers, feature_size=None, output_layer=None, traced=False, trace_error=reason)

    calls: dict[str, list[fx.Node]] = {}
    for node in trace.nodes:
        if node.op == "call_module":
            calls.setdefault(str(node.target), []).append(node)
    gm_modules = dict(trace.graph_module.named_modules())
    output_node = _output_layer(trace, gm_modules)
    feature_size = None
    if output_node is not None and isinstance(output_node.args[0], fx.Node):
        shape = _shape(output_node.args[0])
        if shape is not None and len(shape) == 1:
            feature_size = shape[0]

    reports = []
    order = {name: index for index, name in enumerate(calls)}
    leaves = ((n, m) for n, m in modules.items() if n and not any(True for _ in m.children()))
    for name, module in sorted(leaves, key=lambda item: order.get(item[0], len(order))):
        nodes = calls.get(name, [])
        params = sum(p.numel() for p in module.parameters(recurse=False))
        input_shape = _shape(nodes[0].args[0]) if nodes and nodes[0].args and isinstance(nodes[0].args[0], fx.Node) else None
        output_shape = _shape(nodes[0]) if nodes else None
        common = dict(name=name, alias=by_name.get(name), type=type(module).__name__,
                      input_shape=input_shape, output_shape=output_shape, params=params)
        if not isinstance(module, (nn.Linear, *_CONV_TYPES)):
            reports.append(LayerReport(**common, convertible=False, reason="not an fc or conv layer"))
            continue
        if not nodes:
            reports.append(LayerReport(**common, convertible=False, reason="not called in the traced forward pass"))
            continue
        if len(nodes) > 1:
            reports.append(LayerReport(**common, convertible=False, reason=f"called {len(nodes)} times per forward pass (shared weights)"))
            continue
        region = _region_for(trace, nodes[0], gm_modules)
        if isinstance(region, str):
            reports.append(LayerReport(**common, convertible=False, reason=region))
            continue
        is_fc = isinstance(module, nn.Linear)
        reports.append(
            LayerReport(
                **common, convertible=True, kind=region.kind,
                hidden_size=module.out_features if is_fc else module.out_channels,
                input_size=module.in_features if is_fc else module.in_channels,
                weight_numel=module.weight.numel(),
                batchnorm=region.batchnorm,
                shortcut=f"added from {_describe(region.shortcut)}" if region.shortcut is not None else None,
                pooling=region.pooling,
                activation=region.activation,
            )
        )
    return NetworkReport(
        layers=tuple(reports), feature_size=feature_size,
        output_layer=str(output_node.target) if output_node is not None else None, trace=trace,
    )


def resolve_layers(report: NetworkReport, names: Sequence[str], aliases: Optional[Mapping[str, str]] = None) -> list[LayerReport]:
    """Look up layers by dotted name or paper alias, in network order; raise LayerError with the candidates."""
    aliases = dict(aliases or {})
    convertible = report.convertible()
    candidates = ", ".join(layer.label for layer in convertible) or "none"
    resolved: list[LayerReport] = []
    for raw in names:
        name = aliases.get(raw.strip(), raw.strip())
        layer = report.get(name)
        if layer is None:
            close = difflib.get_close_matches(raw, [l.name for l in report.layers] + list(aliases), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise LayerError(f"unknown layer {raw!r}{hint}; convertible layers: {candidates}")
        if not layer.convertible:
            raise LayerError(f"layer {layer.label} cannot be converted: {layer.reason}; convertible layers: {candidates}")
        if layer in resolved:
            raise LayerError(f"layer {layer.label} is listed twice; list each layer once")
        resolved.append(layer)
    if not resolved:
        raise LayerError(f"no layer given; convertible layers: {candidates}")
    position = {layer.name: index for index, layer in enumerate(report.layers)}
    return sorted(resolved, key=lambda layer: position[layer.name])


# ---------------------------------------------------------------------- cutting the network
@dataclass
class Segment:
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
    between: list[Segment]
    head: Segment


def _extract(graph_module: fx.GraphModule, inputs: Sequence[fx.Node], outputs: Sequence[fx.Node] | fx.Node,
             as_tuple: bool) -> fx.GraphModule:
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

    ``report``, when given, must come from :func:`analyze_network` on this same model: its trace is reused.
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
            raise LayerError(f"layers {first.layer.target} and {second.layer.target} are not one after the other on the main path; convert layers of one chain")
    trunk = _extract(trace.graph_module, [trace.placeholder], regions[0].inputs, as_tuple=True)
    between = [
        Segment(_extract(trace.graph_module, [first.end], second.inputs, as_tuple=True), _shape(first.end))
        for first, second in zip(regions, regions[1:])
    ]
    head = Segment(_extract(trace.graph_module, [regions[-1].end], trace.output.args[0], as_tuple=False), _shape(regions[-1].end))
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
        raise LayerError("the network has no fc output layer to put a traditional recurrent layer under; convert a layer instead")
    features = output_node.args[0]
    shape = _shape(features)
    if shape is None or len(shape) != 1:
        raise LayerError(f"the output layer {output_node.target} does not receive one feature vector per frame; a traditional design needs one")
    backbone = _extract(trace.graph_module, [trace.placeholder], [features], as_tuple=True)
    return backbone, modules[output_node.target], shape[0]
