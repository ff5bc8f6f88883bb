"""The sequence model: trunk per frame (batched over B·T) → recurrent layer(s) → head.

:func:`build_recurrent_model` builds a :class:`RecurrentModel` (PreRNN,
PreRNN-SIH, or the traditional baseline) on a pretrained network from a
:class:`~prernn_cli.spec.ModelSpec`: :func:`~prernn_cli.conversion.convert` makes
the spec from the user's choices, and a saved model is loaded through the same
function without unpickling anything.

Everything that does not depend on the recurrent state runs on all ``B·T``
frames at once: the trunk, every layer's input-to-hidden projection, the
feed-forward parts between converted layers, and the head. Only the ``W_h·``
products run step by step (see :mod:`prernn_cli.cells`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

from torch import Tensor, fx, nn

from prernn_cli.cells import ConvGeometry, GateObserver, LayerState, RecurrentLayer, recurrent_layer_class
from prernn_cli.errors import ConversionError
from prernn_cli.spec import FrameKind, HeadKind, LayerKind, ModelSpec, RecurrentLayerSpec
from prernn_cli.surgery import ConvertedSite, NetworkReport, split_at_features, split_network


class RecurrentModel(nn.Module):
    """A pretrained network with recurrent layers, run over sequences of frames (or snippets).

    ``forward(frames, state=None)`` takes ``frames`` ``[B, T, C, H, W]`` (3D backbones
    ``[B, T, C, L, H, W]``) and returns ``(outputs [B, T, …], state)``, ``state`` holding
    one entry per recurrent layer: ``h`` ``[B, H]``, or ``(h, c)`` for an LSTM.
    ``forward_from_trunk`` does the same from the trunk's outputs (computed once, for a
    frozen trunk: :mod:`prernn_cli.data.trunk_cache`).
    """

    def __init__(
        self,
        spec: ModelSpec,
        trunk: nn.Module,
        layers: Sequence[RecurrentLayer],
        between: Sequence[nn.Module],
        between_shapes: Sequence[tuple[int, ...]],
        head: nn.Module,
        head_shape: tuple[int, ...],
        new_modules: Sequence[str] = (),
    ) -> None:
        super().__init__()
        if len(between) != len(layers) - 1 or len(between_shapes) != len(between):
            raise ValueError("a model with n recurrent layers needs n - 1 feed-forward segments between them")
        self.spec = spec
        self.trunk = trunk
        self.layers = nn.ModuleList(layers)
        self.between = nn.ModuleList(between)
        self.between_shapes = [tuple(shape) for shape in between_shapes]
        self.head = head
        self.head_shape = tuple(head_shape)
        self._new_modules = tuple(new_modules)  # dotted names of modules that start random (a new output layer)

    @property
    def recurrent_layers(self) -> nn.ModuleList:
        return self.layers

    def initial_state(self, batch_size: int, device=None, dtype=None) -> list[LayerState]:
        """Zero state for every recurrent layer."""
        return [layer.initial_state(batch_size, device, dtype) for layer in self.layers]

    def new_parameter_names(self) -> set[str]:
        """Parameters that start random: every ``W_h·``, a traditional layer, a new head."""
        names = set()
        for name, _ in self.named_parameters():
            if name.startswith("layers.") and (name.endswith("weight_hh") or self.spec.traditional):
                names.add(name)
            elif any(name.startswith(f"{module}.") for module in self._new_modules):
                names.add(name)
        return names

    def _check_frames(self, frames: Tensor) -> None:
        step = self.spec.input.step_shape()
        if frames.dim() != len(step) + 2 or tuple(frames.shape[2:3]) != step[:1]:
            layout = "[B, T, C, L, H, W]" if self.spec.input.frame_kind is FrameKind.SNIPPET else "[B, T, C, H, W]"
            raise ValueError(f"expected frames {layout} with C={step[0]}, got shape {tuple(frames.shape)}")

    def forward(
        self,
        frames: Tensor,
        state: Optional[Sequence[LayerState]] = None,
        gate_observer: Optional[GateObserver] = None,
    ) -> tuple[Tensor, list[LayerState]]:
        self._check_frames(frames)
        batch, steps = frames.shape[:2]
        inputs = self.trunk(frames.flatten(0, 1))
        return self._from_trunk(inputs, batch, steps, state, gate_observer)

    def forward_from_trunk(
        self,
        trunk_outputs: Sequence[Tensor],
        state: Optional[Sequence[LayerState]] = None,
        gate_observer: Optional[GateObserver] = None,
    ) -> tuple[Tensor, list[LayerState]]:
        """:meth:`forward` from the trunk's outputs on, for a trunk whose outputs were computed before.

        ``trunk_outputs`` are what ``self.trunk`` returns for the ``B·T`` steps, each laid
        out per sequence ``[B, T, …]``: the first converted layer's input, plus its residual
        shortcut for a conv layer with one. ``forward(frames)`` is the trunk, then this.
        """
        if not trunk_outputs or any(t.dim() < 3 or t.shape[:2] != trunk_outputs[0].shape[:2] for t in trunk_outputs):
            shapes = [tuple(t.shape) for t in trunk_outputs]
            raise ValueError(f"expected the trunk's outputs laid out [B, T, …] with one B and T, got shapes {shapes}")
        batch, steps = trunk_outputs[0].shape[:2]
        inputs = tuple(tensor.flatten(0, 1) for tensor in trunk_outputs)
        return self._from_trunk(inputs, batch, steps, state, gate_observer)

    def _from_trunk(
        self,
        inputs: Sequence[Tensor],
        batch: int,
        steps: int,
        state: Optional[Sequence[LayerState]],
        gate_observer: Optional[GateObserver],
    ) -> tuple[Tensor, list[LayerState]]:
        """The recurrent layers, the feed-forward parts between them and the head, on the trunk's ``B·T`` outputs."""
        if state is None:
            state = [None] * len(self.layers)
        elif len(state) != len(self.layers):
            raise ValueError(f"expected a state for each of the {len(self.layers)} recurrent layers, got {len(state)}")
        new_state: list[LayerState] = []
        for index, layer in enumerate(self.layers):
            per_sequence = [tensor.view(batch, steps, *tensor.shape[1:]) for tensor in inputs]
            sequence, layer_state = layer(
                *per_sequence, state=state[index], gate_observer=gate_observer, layer_index=index
            )
            new_state.append(layer_state)
            flat = sequence.flatten(0, 1)
            if index < len(self.between):
                inputs = self.between[index](flat.view(batch * steps, *self.between_shapes[index]))
        outputs = self.head(flat.view(batch * steps, *self.head_shape))
        return outputs.view(batch, steps, *outputs.shape[1:]), new_state

    def extra_repr(self) -> str:
        spec = self.spec
        return f"design={spec.design.value}, cell={spec.cell.value}, layers={[layer.name for layer in spec.layers]}"


# ---------------------------------------------------------------------- building
def _replace_output_layer(head: nn.Module, outputs: int) -> tuple[nn.Module, str]:
    """Swap the head's last fc layer for a new one with ``outputs`` units; returns the head and that layer's name."""
    if not isinstance(head, fx.GraphModule):
        raise ConversionError("the head has no fc output layer to replace; keep the original head")
    modules = dict(head.named_modules())
    target = None
    for node in reversed(list(head.graph.nodes)):
        if node.op == "call_module" and isinstance(modules[node.target], nn.Linear):
            target = str(node.target)
            break
    if target is None:
        raise ConversionError(
            "the head has no fc output layer to replace with --num-classes/--outputs; keep the original head"
        )
    old = modules[target]
    parent_name, _, child = target.rpartition(".")
    parent = head.get_submodule(parent_name) if parent_name else head
    setattr(parent, child, nn.Linear(old.in_features, outputs, device=old.weight.device))
    return head, target


def _traditional_model(base: nn.Module, spec: ModelSpec, report: Optional[NetworkReport]) -> RecurrentModel:
    """The backbone untouched, one new recurrent layer on its feature vector, a new head."""
    backbone, output_layer, feature_size = split_at_features(base, spec.input, report)
    layer_spec = spec.layers[0]
    device = output_layer.weight.device
    layer = recurrent_layer_class(spec.cell)(
        feature_size,
        layer_spec.hidden_size,
        kind=LayerKind.NEW,
        activation=layer_spec.activation,
        init_hh=spec.init_hh,
        device=device,
    )
    outputs = spec.outputs if spec.head is not HeadKind.ORIGINAL else output_layer.out_features
    head = nn.Linear(layer_spec.hidden_size, outputs, device=device)
    return RecurrentModel(spec, backbone, [layer], [], [], head, (layer_spec.hidden_size,), new_modules=["head"])


def _converted_layer(site: ConvertedSite, layer_spec: RecurrentLayerSpec, spec: ModelSpec) -> RecurrentLayer:
    """The recurrent layer made from one pretrained layer, its weights copied into every gate (one for SIH)."""
    geometry = None
    if layer_spec.kind is LayerKind.CONV:
        geometry = ConvGeometry.from_module(site.layer, site.batchnorm, site.has_shortcut)
    # Built on the meta device, then given memory once: the copies of W_xy are written straight
    # into it, never randomly initialised first (a full-size fc6 would take seconds and GBs more).
    layer = recurrent_layer_class(spec.cell)(
        layer_spec.input_size,
        layer_spec.hidden_size,
        kind=layer_spec.kind,
        sih=spec.sih,
        bias=site.layer.bias is not None,
        conv=geometry,
        activation=layer_spec.activation,
        init_hh=spec.init_hh,
        device="meta",
    )
    device = site.layer.weight.device
    if device.type != "meta":  # a meta base is a structure to load a saved model into
        layer = layer.to_empty(device=device)
        layer.load_pretrained(site.layer.weight, site.layer.bias, site.batchnorm)
        layer.reset_hidden_parameters()
    return layer


def build_recurrent_model(base: nn.Module, spec: ModelSpec, report: Optional[NetworkReport] = None) -> RecurrentModel:
    """Build the converted structure of ``spec`` on ``base``, copying its pretrained weights.

    ``report`` (from :func:`~prernn_cli.surgery.network_report` on ``base``) saves tracing it again.
    """
    if spec.traditional:
        return _traditional_model(base, spec, report)
    split = split_network(base, spec.input, [layer.name for layer in spec.layers], report)
    layers = [_converted_layer(site, layer_spec, spec) for site, layer_spec in zip(split.sites, spec.layers)]
    head: nn.Module = split.head.module
    new_modules: list[str] = []
    if spec.head is not HeadKind.ORIGINAL:
        head, replaced = _replace_output_layer(head, spec.outputs)
        new_modules.append(f"head.{replaced}")
    return RecurrentModel(
        spec,
        split.trunk,
        layers,
        [part.module for part in split.between],
        [part.input_shape for part in split.between],
        head,
        split.head.input_shape,
        new_modules=new_modules,
    )
