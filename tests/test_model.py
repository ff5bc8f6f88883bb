"""Converted models on real architectures: the pretrained weights really are used, every design runs."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn
from torch.testing import assert_close

from prernn_cli.architectures import architecture_input, build_architecture, paper_aliases
from prernn_cli.checkpoint import load_converted, save_converted
from prernn_cli.conversion import convert
from prernn_cli.errors import ConversionError, LayerError
from prernn_cli.params import match_traditional_hidden_size
from prernn_cli.spec import CellType, HeadKind, InitScheme, InputSpec, LayerKind
from prernn_cli.surgery import network_report

DESIGNS = [
    (CellType.VRNN, False),
    (CellType.LSTM, False),
    (CellType.LSTM, True),
    (CellType.GRU, False),
    (CellType.GRU, True),
]


def _convert(model, arch, input_spec, layers, cell, sih=False, **options):
    return convert(model, arch, input_spec, layers, cell, sih=sih, aliases=paper_aliases(arch, model), **options)


@pytest.fixture(scope="module")
def vgg16():
    torch.manual_seed(0)
    return torchvision.models.vgg16().eval()


@pytest.mark.parametrize("layers", [["fc6"], ["fc7"], ["fc6", "fc7"]])
def test_prevrnn_with_zero_hidden_weights_is_the_pretrained_network(vgg16, layers):
    spec = InputSpec(size=(32, 32))
    model = _convert(vgg16, "vgg16", spec, layers, CellType.VRNN, init_hh=InitScheme.ZEROS).eval()
    frames = torch.randn(2, 3, 3, 32, 32)
    outputs, state = model(frames)
    with torch.no_grad():
        expected = vgg16(frames.flatten(0, 1)).view(2, 3, -1)
    assert_close(outputs, expected, rtol=1e-4, atol=1e-4)
    assert len(state) == len(layers) and state[0].shape == (2, 4096)


@pytest.fixture(scope="module")
def meta_bases():
    """Full-size paper networks as structure only (meta device): every design is checked without GBs of copies."""
    with torch.device("meta"):
        return {"vgg16": torchvision.models.vgg16().eval(), "c3d": build_architecture("c3d").eval()}


PAPER_LAYERS = {
    ("vgg16", "fc6"): ("classifier.0", 25088),
    ("vgg16", "fc7"): ("classifier.3", 4096),
    ("c3d", "fc6"): ("fc6", 8192),
    ("c3d", "fc7"): ("fc7", 4096),
}


@pytest.mark.parametrize("cell,sih", DESIGNS)
@pytest.mark.parametrize("layers", [["fc6"], ["fc7"], ["fc6", "fc7"]])
@pytest.mark.parametrize("arch", ["vgg16", "c3d"])
def test_paper_fc_layers_on_full_size_networks(meta_bases, arch, cell, sih, layers):
    base = meta_bases[arch]
    input_spec = architecture_input(arch) if arch == "c3d" else InputSpec(size=(224, 224))
    model = _convert(base, arch, input_spec, layers, cell, sih)
    copies = 1 if sih else cell.num_gates
    for layer, layer_spec, alias in zip(model.layers, model.spec.layers, layers):
        name, in_features = PAPER_LAYERS[(arch, alias)]
        assert layer_spec.name == name and layer_spec.input_size == in_features and layer_spec.hidden_size == 4096
        assert tuple(layer.weight_ih.shape) == (copies * 4096, in_features)
        assert tuple(layer.weight_hh.shape) == (cell.num_gates * 4096, 4096)
    frames = torch.empty(1, 2, *input_spec.step_shape(), device="meta")
    outputs, state = model(frames)
    assert outputs.shape == (1, 2, 1000 if arch == "vgg16" else 487)
    assert len(state) == len(layers)


@pytest.fixture(scope="module")
def resnet50():
    torch.manual_seed(0)
    resnet = torchvision.models.resnet50().eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        resnet.layer4[2].bn3.running_mean.normal_()
        resnet.layer4[2].bn3.running_var.uniform_(0.5, 2)
    return resnet


def _block_input_and_conv_input(model, block_name, conv_name, x):
    captured = {}
    block = model.get_submodule(block_name)
    conv = model.get_submodule(conv_name)
    hooks = [
        block.register_forward_pre_hook(lambda m, args: captured.__setitem__("block_in", args[0])),
        conv.register_forward_pre_hook(lambda m, args: captured.__setitem__("conv_in", args[0])),
    ]
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    return captured["block_in"], captured["conv_in"]


@pytest.mark.parametrize("cell,sih", DESIGNS)
def test_resnet50_res5c_input_to_hidden_is_pooled_bn_plus_shortcut(resnet50, cell, sih):
    resnet = resnet50
    model = _convert(resnet, "resnet50", InputSpec(size=(64, 64)), ["res5c"], cell, sih).eval()
    assert model.spec.layers[0].name == "layer4.2.conv3" and model.spec.layers[0].kind is LayerKind.CONV
    frames = torch.randn(1, 2, 3, 64, 64)
    block_in, conv_in = _block_input_and_conv_input(resnet, "layer4.2", "layer4.2.conv3", frames.flatten(0, 1))
    block = resnet.layer4[2]
    with torch.no_grad():
        expected = nn.functional.adaptive_avg_pool2d(block.bn3(block.conv3(conv_in)) + block_in, 1).flatten(1)
        projected = model.layers[0].project(*model.trunk(frames.flatten(0, 1)))
    for gate in projected.split(2048, dim=1):
        assert_close(gate, expected, rtol=1e-4, atol=1e-4)
    outputs, _ = model(frames)
    assert outputs.shape == (1, 2, 1000)


@pytest.mark.parametrize("cell,sih", DESIGNS)
def test_r3d_18_last_block(cell, sih):
    r3d = torchvision.models.video.r3d_18().eval()
    spec = InputSpec(frame_kind=architecture_input("r3d_18").frame_kind, snippet_length=4, size=(32, 32))
    model = _convert(r3d, "r3d_18", spec, ["layer4.1.conv2.0"], cell, sih).eval()
    frames = torch.randn(1, 2, 3, 4, 32, 32)
    block_in, conv_in = _block_input_and_conv_input(r3d, "layer4.1", "layer4.1.conv2.0", frames.flatten(0, 1))
    block = r3d.layer4[1]
    with torch.no_grad():
        expected = (block.conv2[1](block.conv2[0](conv_in)) + block_in).mean(dim=(2, 3, 4))
        projected = model.layers[0].project(*model.trunk(frames.flatten(0, 1)))
    for gate in projected.split(512, dim=1):
        assert_close(gate, expected, rtol=1e-4, atol=1e-4)
    assert model(frames)[0].shape == (1, 2, 400)


@pytest.mark.parametrize(
    "arch,layers", [("digit_vgg", ["fc6", "fc7"]), ("digit_resnet", ["res5c"]), ("digit_c3d", ["fc6"])]
)
@pytest.mark.parametrize("cell,sih", DESIGNS)
def test_every_parameter_gets_a_gradient_and_save_load_is_exact(tmp_path, arch, layers, cell, sih):
    base = build_architecture(arch)
    model = _convert(base, arch, architecture_input(arch), layers, cell, sih, head=HeadKind.CLASSIFY, outputs=3)
    step = architecture_input(arch).step_shape()
    frames = torch.randn(2, 3, *step)
    outputs, _ = model(frames)
    assert outputs.shape == (2, 3, 3)
    outputs.square().sum().backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None]
    assert missing == []
    path = tmp_path / "model.safetensors"
    save_converted(model, path)
    loaded = load_converted(path)
    assert loaded.spec == model.spec
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    model.eval()
    assert torch.equal(model(frames)[0], loaded(frames)[0])


def test_traditional_baseline_keeps_backbone_and_matches_parameter_count():
    base = build_architecture("digit_vgg")
    model = _convert(base, "digit_vgg", architecture_input("digit_vgg"), ["fc6"], CellType.LSTM, traditional=True)
    layer = model.layers[0]
    assert layer.kind is LayerKind.NEW and layer.input_size == 256  # fc7's output: the feature vector
    pre = 3 * 1024 * 256 + 4 * 256 * 256
    hidden = match_traditional_hidden_size(pre, 256, CellType.LSTM)
    assert layer.hidden_size == hidden
    assert abs(4 * (256 * hidden + hidden * hidden) - pre) <= 4 * (256 + 2 * hidden + 1)
    backbone = dict(model.trunk.named_parameters())
    for name, parameter in base.named_parameters():
        if not name.startswith("classifier.6"):
            assert torch.equal(backbone[name], parameter)
    assert model(torch.randn(1, 2, 3, 32, 32))[0].shape == (1, 2, 10)
    assert set(model.new_parameter_names()) >= {"layers.0.weight_ih", "layers.0.weight_hh", "head.weight"}


def test_bad_requests():
    base = build_architecture("digit_vgg")
    spec = architecture_input("digit_vgg")
    aliases = paper_aliases("digit_vgg", base)
    with pytest.raises(ConversionError, match="SIH"):
        convert(base, "digit_vgg", spec, ["fc6"], CellType.VRNN, sih=True, aliases=aliases)
    with pytest.raises(LayerError, match="convertible layers: fc6"):
        convert(base, "digit_vgg", spec, ["fc9"], CellType.GRU, aliases=aliases)
    with pytest.raises(LayerError, match="output layer"):
        convert(base, "digit_vgg", spec, ["classifier.6"], CellType.GRU, aliases=aliases)
    with pytest.raises(ConversionError, match="positive"):
        convert(base, "digit_vgg", spec, ["fc6"], CellType.GRU, head=HeadKind.CLASSIFY, outputs=0, aliases=aliases)


def test_new_parameters_are_only_the_hidden_weights_and_the_new_output_layer():
    base = build_architecture("digit_vgg")
    model = _convert(
        base,
        "digit_vgg",
        architecture_input("digit_vgg"),
        ["fc6"],
        CellType.GRU,
        True,
        head=HeadKind.CLASSIFY,
        outputs=2,
    )
    assert model.new_parameter_names() == {"layers.0.weight_hh", "head.classifier.6.weight", "head.classifier.6.bias"}


class _DataDependent(nn.Module):
    """Control flow on a value: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(12, 2)

    def forward(self, x):
        if x.sum() > 0:
            x = -x
        return self.fc(x.flatten(1))


class _Broken(_DataDependent):
    """A bug in the model's forward, not a tracing limitation."""

    def forward(self, x):
        return self.fc({}["missing"])


def test_network_report_states_why_a_model_cannot_be_traced_but_lets_bugs_through():
    spec = InputSpec(size=(2, 2))
    report = network_report(_DataDependent(), spec)
    assert not report.traced and "cannot be traced with torch.fx (TraceError" in report.trace_error
    assert [layer.name for layer in report.layers] == ["fc"] and report.layers[0].reason == report.trace_error
    with pytest.raises(LayerError, match="cannot convert: the model cannot be traced"):
        convert(_DataDependent(), "custom", spec, ["fc"], CellType.LSTM)
    with pytest.raises(KeyError, match="missing"):
        network_report(_Broken(), spec)


class _ConvThenAct(nn.Module):
    """conv → BN → ``act`` → global pool → fc → ``act`` → output fc: the activation decides what converts, and how."""

    def __init__(self, act: nn.Module | None = None, functional=None):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.act = act if act is not None else nn.Identity()
        self.functional = functional
        self.fc, self.out = nn.Linear(4, 5), nn.Linear(5, 2)

    def forward(self, x):
        y = self.bn(self.conv(x))
        y = self.functional(y) if self.functional is not None else self.act(y)
        y = self.fc(y.mean(dim=(2, 3)))
        return self.out(self.functional(y) if self.functional is not None else self.act(y))


@pytest.mark.parametrize(
    ("net", "activation"),
    [
        (_ConvThenAct(nn.LeakyReLU()), "leaky_relu"),
        (_ConvThenAct(nn.LeakyReLU(0.2)), None),
        (_ConvThenAct(nn.ELU(alpha=0.5)), None),
        (_ConvThenAct(nn.GELU(approximate="tanh")), None),
        (_ConvThenAct(functional=torch.nn.functional.gelu), "gelu"),
        (_ConvThenAct(functional=lambda y: torch.nn.functional.leaky_relu(y, 0.2)), None),
        (_ConvThenAct(functional=lambda y: torch.nn.functional.elu(y, alpha=2.0)), None),
    ],
)
def test_an_activation_converts_only_with_the_setting_the_cells_apply(net, activation):
    # the cells apply leaky_relu, elu and gelu with their default settings: another setting is another function
    layers = {layer.name: layer for layer in network_report(net, InputSpec(size=(8, 8))).layers}
    conv, fc = layers["conv"], layers["fc"]
    if activation is None:
        assert not conv.convertible and "before global average pooling" in conv.reason
        assert fc.convertible and fc.activation == "identity"  # its activation stays after the recurrent layer
    else:
        assert conv.convertible and (conv.activation, fc.activation) == (activation, activation)
