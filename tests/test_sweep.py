"""A representative subset of the torchvision sweep (the whole sweep: benchmarks/sweep_torchvision.py).

Every layer ``network_report`` calls convertible converts (LSTM and GRU, gate-dependent and
SIH) and runs a 2-step forward with outputs ``[1, 2, num_classes]``; a model with no
convertible layer gives a reason for every fc/conv layer.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from prernn_cli.architectures import architecture_input, build_architecture
from prernn_cli.conversion import convert
from prernn_cli.spec import CellType, FrameKind, InputSpec
from prernn_cli.surgery import network_report

DESIGNS = [(CellType.LSTM, False), (CellType.LSTM, True), (CellType.GRU, False), (CellType.GRU, True)]

# model → (step input, at least this many convertible layers); inputs are the smallest each accepts cheaply.
MODELS = {
    "resnet18": ((32, None), 1),
    "mobilenet_v3_small": ((32, None), 1),
    "efficientnet_b0": ((32, None), 1),
    "densenet121": ((32, None), 0),
    "squeezenet1_0": ((64, None), 0),
    "regnet_x_400mf": ((32, None), 1),
    "convnext_tiny": ((32, None), 0),
    "shufflenet_v2_x0_5": ((32, None), 1),
    "r3d_18": ((32, 4), 1),
    "vit_b_16": ((224, None), 0),
}
SLOW = {"densenet121"}  # over 5 s on a CPU; the others take 0.5-2.5 s


def _spec(name: str, size: int, length) -> InputSpec:
    default = architecture_input(name)
    return InputSpec(
        frame_kind=default.frame_kind,
        channels=default.channels,
        size=(size, size),
        snippet_length=length,
        mean=default.mean,
        std=default.std,
    )


def _build(name: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_architecture(name).eval()


@pytest.mark.parametrize(
    "name", [pytest.param(name, marks=pytest.mark.slow) if name in SLOW else name for name in MODELS]
)
def test_every_convertible_layer_converts_and_runs(name):
    (size, length), minimum = MODELS[name]
    model = _build(name)
    spec = _spec(name, size, length)
    with torch.no_grad():
        num_classes = model(torch.randn(1, *spec.step_shape())).shape[-1]
    report = network_report(model, spec)
    assert report.traced, report.trace_error
    convertible = report.convertible()
    assert len(convertible) >= minimum
    for layer in report.layers:
        if layer.type in ("Linear", "Conv2d", "Conv3d") and not layer.convertible:
            assert layer.reason, f"{name}: {layer.name} is not convertible but gives no reason"
    frames = torch.randn(1, 2, *spec.step_shape())
    # The last convertible layer with every design; up to two before it with one design each (bounded time).
    layers = convertible[-3:]
    plan = [(layer, [DESIGNS[index % len(DESIGNS)]]) for index, layer in enumerate(layers[:-1])]
    plan += [(layers[-1], DESIGNS)] if layers else []
    for layer, designs in plan:
        for cell, sih in designs:
            converted = convert(model, name, spec, [layer.name], cell, sih=sih).eval()
            with torch.no_grad():
                outputs, state = converted(frames)
            assert outputs.shape == (1, 2, num_classes), (name, layer.name, cell, sih)
            assert torch.isfinite(outputs).all()
            assert len(state) == 1


def test_vit_fc_layers_are_per_token_and_say_so():
    model = _build("vit_b_16")
    report = network_report(model, _spec("vit_b_16", 224, None))
    assert report.convertible() == []
    mlp = [layer for layer in report.layers if layer.type == "Linear" and ".mlp." in layer.name]
    assert mlp and all("per token" in layer.reason for layer in mlp)
    assert FrameKind.IMAGE is architecture_input("vit_b_16").frame_kind
