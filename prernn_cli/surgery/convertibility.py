"""Which layers of a network can be converted, and why the others cannot.

Convertibility is decided from the model's real dataflow (:mod:`~prernn_cli.surgery.tracing`):

* an **fc** layer (``nn.Linear``) is convertible when it maps one vector per frame
  (a 2-D input), it is a cut point of the graph (everything after it depends on
  the input only through it), and it is not the output layer;
* a **conv** layer (``nn.Conv2d``/``nn.Conv3d``) is convertible when its output
  reaches global average pooling through only its BatchNorm, a residual add and
  an activation, and the pooled vector is a cut point (SPEC §2's
  ``P(B(W * x) + γ)``). A BatchNorm that applies its activation itself
  (:class:`~prernn_cli.surgery.norm_act.BatchNormAct2d`) is read as the
  BatchNorm followed by that activation; flattening a map of one position per
  channel (a conv after the pooling) is its global average pooling.

The activation right after an fc layer, and the BatchNorm/add/activation/pool
after a conv, are absorbed into the recurrent layer: that span of the graph is
the layer's region.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Optional

from torch import fx, nn
from torch.fx.proxy import TraceError

from prernn_cli.errors import LayerError
from prernn_cli.spec import InputSpec, LayerKind
from prernn_cli.surgery.norm_act import fused_activation
from prernn_cli.surgery.tracing import (
    _CONV_TYPES,
    InputShapeError,
    _activation_name,
    _describe,
    _is_add,
    _is_global_pool,
    _shape,
    _sole_user,
    _Trace,
    _trace,
)

# What torch.fx tracing and shape propagation raise for a model they cannot handle (dynamic control
# flow, unsupported ops, inputs that do not run through); anything else is a bug and propagates.
_UNTRACEABLE_ERRORS = (TraceError, RuntimeError, TypeError, ValueError, NotImplementedError, AssertionError)


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

    def to_dict(self) -> dict:
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
    trace: Optional[_Trace] = field(default=None, repr=False, compare=False)  # reused to cut the network

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
        if (
            stage == "conv"
            and user.op == "call_module"
            and isinstance(modules[user.target], nn.modules.batchnorm._BatchNorm)
        ):
            bn = modules[user.target]
            if not (bn.affine and bn.track_running_stats):
                return f"its BatchNorm {user.target} has no affine weights or running statistics"
            fused, reason = fused_activation(bn)  # a BatchNorm that applies its activation itself
            if reason is not None:
                return reason
            region.batchnorm, stage = str(user.target), "bn"
            if fused != "identity":
                region.activation, stage = fused, "act"
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
    if not any(
        node.op == "call_module" and any(True for _ in modules[node.target].parameters(recurse=False)) for node in after
    ):
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


def _leaf_modules(modules: Mapping[str, nn.Module]) -> list[tuple[str, nn.Module]]:
    """The named modules without children (the root excluded), in ``named_modules`` order."""
    return [(name, module) for name, module in modules.items() if name and not any(True for _ in module.children())]


def _untraced_report(modules: Mapping[str, nn.Module], by_name: Mapping[str, str], error: Exception) -> NetworkReport:
    """Every leaf module reported as not convertible, with the tracing error as the reason."""
    message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if len(message) > 240:
        message = message[:240].rsplit(" ", 1)[0] + " …"
    reason = f"the model cannot be traced with torch.fx ({type(error).__name__}: {message})"
    if isinstance(error, InputShapeError):  # it traced, but the input spec's size or channels do not fit it
        reason = str(error)
    layers = tuple(
        LayerReport(
            name=name,
            alias=by_name.get(name),
            type=type(module).__name__,
            input_shape=None,
            output_shape=None,
            params=sum(p.numel() for p in module.parameters(recurse=False)),
            convertible=False,
            reason=reason,
        )
        for name, module in _leaf_modules(modules)
    )
    return NetworkReport(layers=layers, feature_size=None, output_layer=None, traced=False, trace_error=reason)


def _feature_size(output_node: Optional[fx.Node]) -> Optional[int]:
    """The size of the one vector per frame the output layer receives, if it receives one."""
    if output_node is not None and isinstance(output_node.args[0], fx.Node):
        shape = _shape(output_node.args[0])
        if shape is not None and len(shape) == 1:
            return shape[0]
    return None


def _layer_report(
    name: str,
    module: nn.Module,
    alias: Optional[str],
    nodes: list[fx.Node],
    trace: _Trace,
    modules: Mapping[str, nn.Module],
) -> LayerReport:
    """One leaf module's report, from the nodes that call it in the traced graph."""
    params = sum(p.numel() for p in module.parameters(recurse=False))
    input_shape = (
        _shape(nodes[0].args[0]) if nodes and nodes[0].args and isinstance(nodes[0].args[0], fx.Node) else None
    )
    output_shape = _shape(nodes[0]) if nodes else None
    common = dict(
        name=name,
        alias=alias,
        type=type(module).__name__,
        input_shape=input_shape,
        output_shape=output_shape,
        params=params,
    )
    if not isinstance(module, (nn.Linear, *_CONV_TYPES)):
        return LayerReport(**common, convertible=False, reason="not an fc or conv layer")
    if not nodes:
        return LayerReport(**common, convertible=False, reason="not called in the traced forward pass")
    if len(nodes) > 1:
        return LayerReport(
            **common, convertible=False, reason=f"called {len(nodes)} times per forward pass (shared weights)"
        )
    region = _region_for(trace, nodes[0], modules)
    if isinstance(region, str):
        return LayerReport(**common, convertible=False, reason=region)
    is_fc = isinstance(module, nn.Linear)
    return LayerReport(
        **common,
        convertible=True,
        kind=region.kind,
        hidden_size=module.out_features if is_fc else module.out_channels,
        input_size=module.in_features if is_fc else module.in_channels,
        weight_numel=module.weight.numel(),
        batchnorm=region.batchnorm,
        shortcut=f"added from {_describe(region.shortcut)}" if region.shortcut is not None else None,
        pooling=region.pooling,
        activation=region.activation,
    )


def network_report(
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
    except _UNTRACEABLE_ERRORS as error:  # the tracing failure becomes the stated reason
        return _untraced_report(modules, by_name, error)
    calls: dict[str, list[fx.Node]] = {}
    for node in trace.nodes:
        if node.op == "call_module":
            calls.setdefault(str(node.target), []).append(node)
    gm_modules = dict(trace.graph_module.named_modules())
    output_node = _output_layer(trace, gm_modules)
    order = {name: index for index, name in enumerate(calls)}
    leaves = sorted(_leaf_modules(modules), key=lambda item: order.get(item[0], len(order)))
    reports = tuple(
        _layer_report(name, module, by_name.get(name), calls.get(name, []), trace, gm_modules)
        for name, module in leaves
    )
    return NetworkReport(
        layers=reports,
        feature_size=_feature_size(output_node),
        output_layer=str(output_node.target) if output_node is not None else None,
        trace=trace,
    )


def resolve_layers(
    report: NetworkReport, names: Sequence[str], aliases: Optional[Mapping[str, str]] = None
) -> list[LayerReport]:
    """Look up layers by dotted name or paper alias, in network order; raise LayerError with the candidates."""
    aliases = dict(aliases or {})
    convertible = report.convertible()
    candidates = ", ".join(layer.label for layer in convertible) or "none"
    resolved: list[LayerReport] = []
    for raw in names:
        name = aliases.get(raw.strip(), raw.strip())
        layer = report.get(name)
        if layer is None:
            close = difflib.get_close_matches(raw, [entry.name for entry in report.layers] + list(aliases), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise LayerError(f"unknown layer {raw!r}{hint}; convertible layers: {candidates}")
        if not layer.convertible:
            raise LayerError(
                f"layer {layer.label} cannot be converted: {layer.reason}; convertible layers: {candidates}"
            )
        if layer in resolved:
            raise LayerError(f"layer {layer.label} is listed twice; list each layer once")
        resolved.append(layer)
    if not resolved:
        raise LayerError(f"no layer given; convertible layers: {candidates}")
    position = {layer.name: index for index, layer in enumerate(report.layers)}
    return sorted(resolved, key=lambda layer: position[layer.name])
