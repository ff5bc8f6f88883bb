"""`prernn inspect`: the table, --all, --json, converted models, and one model per torchvision family."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from helpers import convert_architecture
from prernn_cli.architectures import architecture_input, build_architecture, build_empty_architecture
from prernn_cli.architectures.samples import DigitC3D, DigitVGG
from prernn_cli.checkpoint import CheckpointFormat, LoadedCheckpoint, save_converted
from prernn_cli.cli import app
from prernn_cli.inspection import inspect_loaded
from prernn_cli.spec import CellType

runner = CliRunner()


def _inspect(*args, width: int = 200):
    return runner.invoke(app, ["inspect", *map(str, args)], env={"COLUMNS": str(width)})


def _row(output: str, name: str) -> str:
    return next(line for line in output.splitlines() if line.strip().startswith(name + " "))


@pytest.fixture
def digit_vgg_file(tmp_path):
    path = tmp_path / "digit_vgg.pt"
    torch.save(DigitVGG().state_dict(), path)
    return path


def test_inspect_digit_vgg_table(digit_vgg_file):
    result = _inspect(digit_vgg_file)
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert "state_dict" in out and "digit_vgg" in out and "identified from the weights" in out
    assert f"{sum(p.numel() for p in DigitVGG().parameters()):,} total" in out
    assert "2D frame, 3×32×32" in out
    fc6 = _row(out, "classifier.0")
    assert "fc6" in fc6 and "Linear" in fc6 and "1024 → 256" in fc6 and "262,400" in fc6 and "yes: fc" in fc6
    assert "fc7" in _row(out, "classifier.3") and "yes: fc" in _row(out, "classifier.3")
    assert "no" in _row(out, "classifier.6") and "yes" not in _row(out, "classifier.6")
    assert "Conv2d" in _row(out, "features.0") and "3×32×32 → 32×32×32" in _row(out, "features.0")
    assert "ReLU" not in out  # default: fc and conv layers only
    assert "convertible  fc6 (classifier.0), fc7 (classifier.3)" in out
    assert result.stderr == ""


def test_inspect_all_lists_every_module_with_reasons(digit_vgg_file):
    result = _inspect(digit_vgg_file, "--all")
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert "ReLU" in out and "Dropout" in out and "MaxPool2d" in out
    assert "no: it is the output layer" in _row(out, "classifier.6")
    assert "no: not an fc or conv layer" in _row(out, "classifier.1")
    assert "its output reaches" in _row(out, "features.10")


def test_inspect_resnet18_names_batchnorm_shortcut_and_pooling(tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save({"state_dict": build_architecture("resnet18", num_classes=7).state_dict()}, path)
    result = _inspect(path, width=300)
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert "resnet18" in out and "outputs 7" in out and "2D frame, 3×224×224" in out
    row = _row(out, "layer4.1.conv2")
    assert "res5c" in row and "512×7×7 → 512×7×7" in row and "yes: conv" in row
    assert "BN layer4.1.bn2" in row and "shortcut" in row and "AdaptiveAvgPool2d (avgpool)" in row
    assert "yes" not in _row(out, "layer4.1.conv1")
    assert "convertible  res5c (layer4.1.conv2)" in out


def test_inspect_json_is_one_document(digit_vgg_file):
    result = _inspect(digit_vgg_file, "--json")
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert (
        document["format"] == "state_dict"
        and document["architecture"] == "digit_vgg"
        and document["identified"] is True
    )
    assert document["parameters"]["total"] == document["parameters"]["trainable"] > 0
    assert (
        document["input"]["frame_kind"] == "2d" and document["input"]["size"] == [32, 32] and document["input"]["known"]
    )
    assert document["aliases"] == {"fc6": "classifier.0", "fc7": "classifier.3"}
    assert document["convertible"] == ["classifier.0", "classifier.3"]
    assert (
        document["output_layer"] == "classifier.6" and document["feature_size"] == 256 and document["num_classes"] == 10
    )
    layers = {layer["name"]: layer for layer in document["layers"]}
    assert set(layers) == {
        "features.0",
        "features.2",
        "features.5",
        "features.7",
        "features.10",
        "classifier.0",
        "classifier.3",
        "classifier.6",
    }
    fc6 = layers["classifier.0"]
    assert fc6["alias"] == "fc6" and fc6["kind"] == "fc" and fc6["convertible"] and fc6["hidden_size"] == 256
    assert fc6["input_shape"] == [1024] and fc6["output_shape"] == [256] and fc6["activation"] == "relu"
    assert layers["classifier.6"]["reason"]
    every = json.loads(_inspect(digit_vgg_file, "--json", "--all").stdout)
    assert len(every["layers"]) > len(document["layers"]) and any(layer["type"] == "ReLU" for layer in every["layers"])


def test_inspect_digit_c3d_snippets(tmp_path):
    path = tmp_path / "c3d.pt"
    torch.save(DigitC3D(num_classes=5).state_dict(), path)
    document = json.loads(_inspect(path, "--json").stdout)
    assert document["architecture"] == "digit_c3d" and document["num_classes"] == 5
    assert document["input"]["frame_kind"] == "3d" and document["input"]["snippet_length"] == 4
    assert document["convertible"] == ["fc6", "fc7"]
    text = _inspect(path).stdout
    assert "3D snippet of 4 frames, 3×4×32×32" in text


def test_inspect_converted_model(tmp_path):
    model = convert_architecture("digit_resnet", ["res5c"], CellType.LSTM, sih=True, paper_names=True)
    path = tmp_path / "model.safetensors"
    save_converted(model, path)
    result = _inspect(path)
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert "prernn" in out and "sih lstm (SIH)" in out and "Recurrent layers" in out
    assert "res5c (layer3.1.conv2)" in out and "128 → 128" in out
    document = json.loads(_inspect(path, "--json").stdout)
    assert document["format"] == "prernn" and document["converted"]["cell"] == "lstm" and document["converted"]["sih"]
    assert (
        document["recurrent_layers"][0]["name"] == "layer3.1.conv2"
        and document["recurrent_layers"][0]["alias"] == "res5c"
    )
    assert document["parameters"]["total"] == sum(p.numel() for p in model.parameters())


def test_inspect_help_has_examples():
    result = runner.invoke(app, ["inspect", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "prernn inspect sample_models/digit_vgg.pt" in result.stdout
    for option in ("--arch", "--trust-pickle", "--all", "--json"):
        assert option in result.stdout


# ---------------------------------------------------------------- torchvision families, on the meta device


def _inspect_architecture(name: str):
    model = build_empty_architecture(name)
    loaded = LoadedCheckpoint(
        model=model, format=CheckpointFormat.STATE_DICT, architecture=name, input_spec=architecture_input(name)
    )
    result = inspect_loaded(loaded, name)
    assert result.convertible() or result.why_none_convertible(), name
    for layer in result.network.layers:
        assert layer.convertible == (layer.reason is None), (name, layer)
    json.dumps(result.to_dict(show_all=True))
    return result


PAPER_LAYERS = {
    "vgg16": {"fc6": "classifier.0", "fc7": "classifier.3"},
    "resnet50": {"res5c": "layer4.2.conv3"},
    "c3d": {"fc6": "fc6", "fc7": "fc7"},
    "digit_vgg": {"fc6": "classifier.0", "fc7": "classifier.3"},
    "digit_resnet": {"res5c": "layer3.1.conv2"},
    "digit_c3d": {"fc6": "fc6", "fc7": "fc7"},
}


@pytest.mark.parametrize("name", sorted(PAPER_LAYERS))
def test_paper_layers_are_convertible(name):
    result = _inspect_architecture(name)
    convertible = {layer.name: layer for layer in result.convertible()}
    for alias, module in PAPER_LAYERS[name].items():
        assert module in convertible, (name, alias)
        assert result.aliases[alias] == module
    if name == "resnet50":
        layer = convertible["layer4.2.conv3"]
        assert layer.batchnorm == "layer4.2.bn3" and layer.shortcut and "avgpool" in layer.pooling


# Convertible layers of one model per torchvision family, by the dataflow rule: an fc layer that is not the
# output layer, or a conv whose output reaches global pooling alone through BatchNorm, a residual add and an
# activation. The whole list of models: benchmarks/sweep_torchvision.py.
CONVERTIBLE = {
    "alexnet": ["classifier.1", "classifier.4"],  # fc6, fc7 (after dropout); the conv trunk ends in max pooling
    "vgg11": ["classifier.0", "classifier.3"],  # fc6, fc7
    "resnet18": ["layer4.1.conv2"],  # res5c: conv -> bn2 -> shortcut add -> relu -> avgpool
    "r3d_18": ["layer4.1.conv2.0"],  # the 3D res5c
    "mobilenet_v2": ["features.18.0"],  # the last 1x1 conv -> BN -> ReLU6 -> pool
    "mobilenet_v3_small": ["features.12.0", "classifier.0"],  # the last conv, and the hidden fc before the output
    "efficientnet_b0": ["features.8.0"],
    "regnet_x_400mf": ["trunk_output.block4.block4-11.f.c.0"],  # the last block's 1x1 conv, before its shortcut add
    "shufflenet_v2_x0_5": ["conv5.0"],
}
# Models without one, and why: every conv feeds a concatenation, or every fc works per token.
NONE_CONVERTIBLE = {
    "densenet121": ["its output reaches cat before global average pooling", "used in several places"],
    "squeezenet1_0": ["its output reaches cat before global average pooling", "used in several places"],
    "vit_b_16": ["applies to a 3-D input (per token or position)"],
}


@pytest.mark.parametrize("name", sorted(CONVERTIBLE))
def test_convertible_layers_of_torchvision_families(name):
    result = _inspect_architecture(name)
    assert [layer.name for layer in result.convertible()] == CONVERTIBLE[name]
    assert result.why_none_convertible() is None


@pytest.mark.parametrize("name", sorted(NONE_CONVERTIBLE))
def test_models_without_a_convertible_layer_say_why(name):
    result = _inspect_architecture(name)
    assert result.convertible() == []
    reason = result.why_none_convertible()
    assert reason.startswith("none of its ") and "fc/conv layers qualifies" in reason, reason
    for fragment in NONE_CONVERTIBLE[name]:
        assert fragment in reason, reason
