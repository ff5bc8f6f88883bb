"""Trace a network with :mod:`torch.fx` and read its dataflow: shapes, activations, residual adds, pooling.

The model is traced in eval mode and shape-propagated on fake tensors (no
compute, no memory for activations). The helpers below answer the questions
:mod:`~prernn_cli.surgery.convertibility` asks about single nodes of the graph.
"""

from __future__ import annotations

import contextlib
import io
import operator
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.passes.shape_prop import ShapeProp

from prernn_cli.spec import InputSpec

_ACTIVATION_MODULES: dict[type, str] = {
    nn.ReLU: "relu",
    nn.ReLU6: "relu6",
    nn.Tanh: "tanh",
    nn.Sigmoid: "sigmoid",
    nn.GELU: "gelu",
    nn.SiLU: "silu",
    nn.Hardswish: "hardswish",
    nn.LeakyReLU: "leaky_relu",
    nn.ELU: "elu",
}
_ACTIVATION_FUNCTIONS: dict[Any, str] = {
    F.relu: "relu",
    torch.relu: "relu",
    F.relu6: "relu6",
    torch.tanh: "tanh",
    torch.sigmoid: "sigmoid",
    F.gelu: "gelu",
    F.silu: "silu",
    F.hardswish: "hardswish",
    F.leaky_relu: "leaky_relu",
    F.elu: "elu",
    torch.relu_: "relu",
    F.relu_: "relu",
}
_ACTIVATION_METHODS = {"relu": "relu", "relu_": "relu", "tanh": "tanh", "sigmoid": "sigmoid"}
# Activations with a setting: the cells apply F.leaky_relu, F.elu and F.gelu with their default
# setting, so only a module or call with that setting is the cells' activation.
_MODULE_SETTINGS: dict[type, tuple[str, object]] = {
    nn.LeakyReLU: ("negative_slope", 0.01),
    nn.ELU: ("alpha", 1.0),
    nn.GELU: ("approximate", "none"),
}
_FUNCTION_SETTINGS: dict[Any, tuple[str, object]] = {
    F.leaky_relu: ("negative_slope", 0.01),
    F.elu: ("alpha", 1.0),
    F.gelu: ("approximate", "none"),
}
_ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}
_POOL_MODULES = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AvgPool2d, nn.AvgPool3d)
_POOL_FUNCTIONS = {F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.avg_pool2d, F.avg_pool3d, torch.mean}
_CONV_TYPES = (nn.Conv2d, nn.Conv3d)


@dataclass
class _Trace:
    """A traced network: its graph, the nodes in order, which of them depend on the input, and its ends."""

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


class _LayerTracer(fx.Tracer):
    """torch.fx's tracer, keeping subclasses of the layers we reason about (e.g. torchvision's
    ``Conv3DSimple``) as single calls instead of tracing into them."""

    _LEAVES = (nn.Linear, *(_CONV_TYPES), nn.modules.batchnorm._BatchNorm, *_POOL_MODULES, *_ACTIVATION_MODULES)

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return isinstance(module, self._LEAVES) or super().is_leaf_module(module, qualified_name)


class InputShapeError(ValueError):
    """The example input of an input spec does not run through the network (a size or channel count it does not take)."""

    def __init__(self, input_spec: InputSpec, detail: str) -> None:
        shape = "×".join(str(side) for side in input_spec.step_shape())
        super().__init__(f"the network does not run on a {shape} input: {detail}")


def _unflattened(node: fx.Node) -> Optional[tuple[int, ...]]:
    """The per-sample shape a flatten/view/reshape node received, to show where a vector's size comes from."""
    flattening = (node.op == "call_function" and node.target is torch.flatten) or (
        node.op == "call_method" and node.target in ("flatten", "view", "reshape")
    )
    source = node.args[0] if flattening and node.args and isinstance(node.args[0], fx.Node) else None
    return _shape(source) if source is not None else None


def _failure(graph_module: fx.GraphModule, cause: BaseException) -> str:
    """Where shape propagation stopped and why: an fc layer's expected size in words, else the error's first line."""
    message = (str(cause).strip().splitlines() or [type(cause).__name__])[0][:200]
    # ShapeProp marks every node it ran with its result's type: the first node without one failed.
    node = next((n for n in graph_module.graph.nodes if "type" not in n.meta and n.op != "output"), None)
    if node is None or node.op != "call_module":
        return message if node is None else f"{_describe(node)} fails ({message})"
    module = graph_module.get_submodule(str(node.target))
    source = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
    got = _shape(source) if source is not None else None
    if isinstance(module, nn.Linear) and got:
        before = _unflattened(source)
        origin = f" ({'×'.join(map(str, before))})" if before and len(before) > 1 else ""
        return f"{node.target} (Linear) needs {module.in_features} inputs per frame and gets {got[-1]}{origin}"
    return f"{node.target} ({type(module).__name__}) fails ({message})"


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
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    example = mode.from_tensor(_example_input(model, input_spec))
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # ShapeProp prints a traceback before re-raising
            ShapeProp(graph_module, fake_mode=mode).propagate(example)
    except RuntimeError as error:
        cause = error.__cause__ or error
        raise InputShapeError(input_spec, _failure(graph_module, cause)) from cause
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


def module_activation(module: nn.Module) -> Optional[str]:
    """The cells' name of the activation ``module`` computes; None when the cells have none that equals it."""
    setting = _MODULE_SETTINGS.get(type(module))
    if setting is not None and getattr(module, setting[0], setting[1]) != setting[1]:
        return None  # e.g. LeakyReLU(0.2): the cells' leaky_relu has slope 0.01
    return _ACTIVATION_MODULES.get(type(module))


def _function_activation(node: fx.Node) -> Optional[str]:
    setting = _FUNCTION_SETTINGS.get(node.target)
    if setting is not None:
        value = node.kwargs.get(setting[0], node.args[1] if len(node.args) > 1 else setting[1])
        if value != setting[1]:
            return None
    return _ACTIVATION_FUNCTIONS.get(node.target)


def _activation_name(node: fx.Node, modules: Mapping[str, nn.Module]) -> Optional[str]:
    if node.op == "call_module":
        return module_activation(modules[node.target])
    if node.op == "call_function":
        return _function_activation(node)
    if node.op == "call_method":
        return _ACTIVATION_METHODS.get(node.target)
    return None


def _is_add(node: fx.Node) -> bool:
    return (node.op == "call_function" and node.target in _ADD_FUNCTIONS) or (
        node.op == "call_method" and node.target in ("add", "add_")
    )


def _flattens_one_position(node: fx.Node, modules: Mapping[str, nn.Module]) -> bool:
    """Whether ``node`` flattens a map of one position per channel (the mean over its only position)."""
    flattening = (
        (node.op == "call_module" and isinstance(modules[node.target], nn.Flatten))
        or (node.op == "call_function" and node.target is torch.flatten)
        or (node.op == "call_method" and node.target == "flatten")
    )
    source = node.args[0] if flattening and node.args and isinstance(node.args[0], fx.Node) else None
    shape = _shape(source) if source is not None else None
    return shape is not None and len(shape) >= 2 and all(side == 1 for side in shape[1:])


def _is_global_pool(node: fx.Node, modules: Mapping[str, nn.Module], channels: int) -> Optional[str]:
    """The pooling's description when ``node`` averages all positions of each channel, else None."""
    if node.op == "call_module" and isinstance(modules[node.target], _POOL_MODULES):
        description = f"{type(modules[node.target]).__name__} ({node.target})"
    elif node.op == "call_function" and node.target in _POOL_FUNCTIONS:
        description = getattr(node.target, "__name__", str(node.target))
    elif node.op == "call_method" and node.target == "mean":
        description = "mean over positions"
    elif _flattens_one_position(node, modules):
        description = f"flatten of a 1×1 map ({_describe(node)})"
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
