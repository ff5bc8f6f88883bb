"""timm models: train.py checkpoints (plain and EMA weights), bare state_dicts, ``--arch timm:NAME``.

Each model is a small variant with random weights (``pretrained=False``), saved by timm's own
``CheckpointSaver`` (what ``train.py`` runs: a real ``argparse.Namespace`` in ``args``, an EMA copy
in ``state_dict_ema``) and as a bare state_dict. Without timm (its import blocked in a subprocess,
as in an install without the extra) a timm name or checkpoint ends in one line and exit 2.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from helpers import SAMPLES
from prernn_cli.architectures import build_architecture
from prernn_cli.checkpoint import load_checkpoint
from prernn_cli.cli import app
from prernn_cli.conversion import convert
from prernn_cli.spec import CellType, InitScheme, InputSpec
from prernn_cli.surgery import network_report

timm = pytest.importorskip("timm")
from timm.utils import CheckpointSaver, ModelEmaV3  # noqa: E402

runner = CliRunner()

CLASSES = 3
EMA_SHIFT = 1.0  # added to the EMA copy's classifier weight, so the two weights differ
# model → (its classifier weight, a convertible layer at 64×64 or None when the family has none)
MODELS = {
    "resnet10t": ("fc.weight", "layer4.0.conv2"),
    "efficientnet_b0": ("classifier.weight", "conv_head"),
    "mobilenetv3_small_050": ("classifier.weight", "blocks.5.0.conv"),
    "regnetx_002": ("head.fc.weight", "s4.b7.conv3.conv"),
    "convnext_atto": ("head.fc.weight", None),
}


def _one_line_exit_2(result, *needles: str) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _save_training_checkpoint(name: str, folder: Path, arch: str | None = None) -> Path:
    """``folder/last.pth.tar`` as timm's train.py writes it (``arch``: what the file names, default ``name``)."""
    model = timm.create_model(name, pretrained=False, num_classes=CLASSES)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    ema = ModelEmaV3(model)
    with torch.no_grad():
        ema.module.get_parameter(MODELS.get(name, ("fc.weight",))[0]).add_(EMA_SHIFT)
    args = argparse.Namespace(model=arch or name, lr=0.1, epochs=1, model_ema=True, data_dir="/data", num_classes=3)
    folder.mkdir(parents=True, exist_ok=True)
    saver = CheckpointSaver(
        model, optimizer, args=args, model_ema=ema, checkpoint_dir=str(folder), recovery_dir=str(folder)
    )
    saver.save_checkpoint(0, metric=1.0)
    return folder / "last.pth.tar"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """``saved(name)``: (train.py checkpoint, bare state_dict) of timm model ``name``, made once."""
    root = tmp_path_factory.mktemp("timm")
    cache: dict[str, tuple[Path, Path]] = {}

    def files(name: str) -> tuple[Path, Path]:
        if name not in cache:
            torch.manual_seed(0)
            checkpoint = _save_training_checkpoint(name, root / name)
            plain = root / f"{name}.pth"
            torch.save(torch.load(checkpoint, weights_only=False)["state_dict"], plain)
            cache[name] = checkpoint, plain
        return cache[name]

    return files


def _inspect(*args: str) -> dict:
    result = runner.invoke(app, ["inspect", *args, "--json"])
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return json.loads(result.stdout)


# ---------------------------------------------------------------- both checkpoint styles, per family


@pytest.mark.parametrize("name", list(MODELS))
def test_both_checkpoint_styles_are_recognised(saved, name):
    checkpoint, plain = saved(name)
    weight_key, convertible = MODELS[name]

    named = _inspect(str(checkpoint))
    assert named["architecture"] == f"timm:{name}" and named["identified"] is False  # the file's arch, as data
    assert (named["weights"], named["other_weights"]) == ("state_dict", "state_dict_ema")
    assert named["num_classes"] == CLASSES

    identified = _inspect(str(plain), "--input-size", "64")
    assert identified["architecture"] == f"timm:{name}" and identified["identified"] is True
    assert identified["weights"] is None
    if convertible is None:
        assert identified["convertible"] == [] and identified["no_convertible_reason"]
    else:
        assert convertible in identified["convertible"]


def test_ema_flag_picks_the_ema_weights(saved):
    checkpoint, plain = saved("resnet10t")
    stored = torch.load(checkpoint, weights_only=False)
    plain_model = load_checkpoint(checkpoint).model
    ema_model = load_checkpoint(checkpoint, ema=True).model
    torch.testing.assert_close(plain_model.fc.weight, stored["state_dict"]["fc.weight"])
    torch.testing.assert_close(ema_model.fc.weight, stored["state_dict_ema"]["fc.weight"])
    torch.testing.assert_close(ema_model.fc.weight - plain_model.fc.weight, torch.full_like(ema_model.fc.weight, 1.0))

    shown = _inspect(str(checkpoint), "--ema")
    assert (shown["weights"], shown["other_weights"]) == ("state_dict_ema", "state_dict")
    text = runner.invoke(app, ["inspect", str(checkpoint)])
    assert "pass --ema" in text.stdout

    _one_line_exit_2(runner.invoke(app, ["inspect", str(plain), "--ema"]), "no EMA weights", "drop --ema")


def test_arch_names_a_timm_model(saved):
    _, plain = saved("resnet10t")
    given = _inspect(str(plain), "--arch", "timm:resnet10t", "--input-size", "64")
    assert given["architecture"] == "timm:resnet10t" and given["identified"] is False
    assert given["input"]["size"] == [64, 64]

    _one_line_exit_2(runner.invoke(app, ["inspect", str(plain), "--arch", "timm:resnet10x"]), "timm:resnet10t")
    _one_line_exit_2(
        runner.invoke(app, ["inspect", str(plain), "--arch", "timm:efficientnet_b0"]), "does not fit", "timm:"
    )
    sized = runner.invoke(app, ["params", "--arch", "timm:resnet10t", "--layer", "res5c", "--json"])
    assert sized.exit_code == 0, sized.stderr
    assert json.loads(sized.stdout)["architecture"] == "timm:resnet10t"


def test_torchvision_keeps_priority_when_weights_fit_both(tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(timm.create_model("resnet18", pretrained=False, num_classes=CLASSES).state_dict(), path)
    assert load_checkpoint(path).architecture == "resnet18"  # torchvision's: same keys and shapes


# ---------------------------------------------------------------- timm modules the dataflow rule would misread


@pytest.mark.parametrize(
    ("name", "layer", "activation"),
    [
        # conv_head's BatchNormAct2d applies SiLU: read as BatchNorm then SiLU, never as a plain BatchNorm.
        pytest.param("efficientnet_b0", "conv_head", "silu", marks=pytest.mark.slow),
        # final_conv standardises its weight (ScaledStdConv2d): read as a Conv2d, it would use the raw one.
        pytest.param("nfnet_l0", "final_conv", None, marks=pytest.mark.slow),
        # Identity placeholders traced through; conv3's BatchNormAct2d has no activation (the ReLU follows the add).
        ("regnetx_002", "s4.b7.conv3.conv", "relu"),
    ],
)
def test_built_models_compute_what_timm_does(name, layer, activation):
    torch.manual_seed(0)
    reference = timm.create_model(name, pretrained=False, num_classes=CLASSES).eval()
    ours = build_architecture(f"timm:{name}", num_classes=CLASSES)
    ours.load_state_dict(reference.state_dict(), strict=True)
    frames = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(frames), reference(frames), rtol=0, atol=0)
    report = network_report(ours, InputSpec(size=(64, 64)))
    assert report.get(layer).convertible is (activation is not None)
    assert report.get(layer).activation == activation


def test_fused_batchnorm_keeps_training_behaviour_after_conversion():
    model = build_architecture("timm:regnetx_002", num_classes=CLASSES)
    converted = convert(model, "timm:regnetx_002", InputSpec(size=(32, 32)), ["s4.b7.conv3.conv"], CellType.GRU)
    bn = converted.trunk.get_submodule("stem.bn")  # a BatchNormAct2d (BatchNorm + ReLU): one call in the trunk
    before = bn.running_mean.clone()
    converted.train()
    converted(torch.randn(1, 2, 3, 32, 32))
    assert not torch.equal(bn.running_mean, before)  # its train-mode branch ran: statistics updated
    converted.eval()
    after = bn.running_mean.clone()
    converted(torch.randn(1, 2, 3, 32, 32))
    assert torch.equal(bn.running_mean, after)


# ---------------------------------------------------------------- BatchNormAct2d read as BatchNorm, then its activation

# model → (the last conv before the pooling, its BatchNormAct2d, the activation that norm applies)
FUSED = {
    "efficientnet_b0": ("conv_head", "bn2", "silu"),
    "mobilenetv3_small_050": ("blocks.5.0.conv", "blocks.5.0.bn1", "hardswish"),
}
ACTIVATIONS = {"silu": torch.nn.functional.silu, "hardswish": torch.nn.functional.hardswish}


@pytest.fixture(scope="module")
def fused_models():
    """``fused_models(name)``: (timm's own model, ours with the same weights), the fused norm's statistics non-trivial."""
    cache: dict[str, tuple[torch.nn.Module, torch.nn.Module]] = {}

    def models(name: str) -> tuple[torch.nn.Module, torch.nn.Module]:
        if name not in cache:
            torch.manual_seed(0)
            reference = timm.create_model(name, pretrained=False, num_classes=CLASSES).eval()
            norm = reference.get_submodule(FUSED[name][1])
            assert type(norm) is timm.layers.BatchNormAct2d
            with torch.no_grad():
                norm.running_mean.normal_()
                norm.running_var.uniform_(0.5, 2)
                norm.weight.uniform_(0.5, 1.5)
                norm.bias.normal_()
            ours = build_architecture(f"timm:{name}", num_classes=CLASSES)
            ours.load_state_dict(reference.state_dict(), strict=True)
            cache[name] = reference, ours.eval()
        return cache[name]

    return models


def _conv_input_and_norm_output(model, conv_name, norm_name, frames):
    captured = {}
    hooks = [
        model.get_submodule(conv_name).register_forward_pre_hook(lambda m, args: captured.__setitem__("in", args[0])),
        model.get_submodule(norm_name).register_forward_hook(lambda m, args, out: captured.__setitem__("out", out)),
    ]
    with torch.no_grad():
        model(frames)
    for hook in hooks:
        hook.remove()
    return captured["in"].clone(), captured["out"].clone()


@pytest.mark.parametrize("name", list(FUSED))
@pytest.mark.parametrize(("cell", "sih"), [(CellType.VRNN, False), (CellType.GRU, False)])
def test_fused_norm_is_folded_and_its_activation_is_the_cells(fused_models, name, cell, sih):
    reference, ours = fused_models(name)
    conv_name, norm_name, activation = FUSED[name]
    spec = InputSpec(size=(64, 64))  # a 2×2 map before the pooling
    report = network_report(ours, spec)
    assert report.get(conv_name).convertible and report.get(conv_name).batchnorm == norm_name
    assert report.get(conv_name).activation == activation
    model = convert(ours, f"timm:{name}", spec, [conv_name], cell, sih=sih, report=report).eval()
    assert model.spec.layers[0].activation == activation
    frames = torch.randn(1, 2, 3, 64, 64)
    conv_in, norm_out = _conv_input_and_norm_output(reference, conv_name, norm_name, frames.flatten(0, 1))
    conv, norm = reference.get_submodule(conv_name), reference.get_submodule(norm_name)
    with torch.no_grad():
        normalised = torch.nn.functional.batch_norm(
            conv(conv_in), norm.running_mean, norm.running_var, norm.weight, norm.bias, False, 0.0, norm.eps
        )
        projected = model.layers[0].project(*model.trunk(frames.flatten(0, 1)))
    # timm's module is exactly BatchNorm then this activation; the layer's a(x) at h=0 is the pooled BatchNorm.
    torch.testing.assert_close(ACTIVATIONS[activation](normalised), norm_out, rtol=0, atol=0)
    for gate in projected.split(conv.out_channels, dim=1):
        torch.testing.assert_close(gate, normalised.mean(dim=(2, 3)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("name", "layer", "size"),
    [
        # At 32×32 the map before the pooling is 1×1: pooling then activation is activation then pooling.
        pytest.param("efficientnet_b0", "conv_head", 32, marks=pytest.mark.slow),
        ("mobilenetv3_small_050", "blocks.5.0.conv", 32),
        # conv_head comes after the pooling (1×1 conv, Hardswish, flatten): the flatten is the pooling, at any size.
        ("mobilenetv3_small_050", "conv_head", 64),
    ],
)
def test_converted_with_zero_state_is_the_original_network(fused_models, name, layer, size):
    reference, ours = fused_models(name)
    spec = InputSpec(size=(size, size))
    model = convert(ours, f"timm:{name}", spec, [layer], CellType.VRNN, init_hh=InitScheme.ZEROS).eval()
    assert model.spec.layers[0].activation == {"efficientnet_b0": "silu"}.get(name, "hardswish")
    frames = torch.randn(2, 3, 3, size, size)
    with torch.no_grad():
        outputs, _ = model(frames)
        expected = reference(frames.flatten(0, 1)).view(2, 3, -1)
    torch.testing.assert_close(outputs, expected, rtol=1e-5, atol=1e-5)


def test_fused_norm_with_an_activation_the_cells_lack_is_not_convertible():
    model = build_architecture("timm:mobilenetv3_small_050", num_classes=CLASSES)
    model.get_submodule("blocks.5.0.bn1").act = torch.nn.Mish()
    report = network_report(model, InputSpec(size=(32, 32)))
    layer = report.get("blocks.5.0.conv")
    assert not layer.convertible and "Mish" in layer.reason and "activation" in layer.reason


# ---------------------------------------------------------------- convert → train → export


def _convert_train_export(checkpoint: Path, tmp_path: Path, *convert_options: str) -> tuple[dict, Path]:
    """Convert at 32 px for 2 classes, train 2 optimiser steps on the sample clips, export; convert's JSON and the run."""
    model, run, onnx = tmp_path / "model.safetensors", tmp_path / "run", tmp_path / "model.onnx"
    converted = runner.invoke(
        app,
        ["convert", str(checkpoint), *convert_options, "--num-classes", "2", "--input-size", "32", "-o", str(model), "--json"],
    )  # fmt: skip
    assert converted.exit_code == 0, converted.stderr
    trained = runner.invoke(
        app,
        ["train", str(model), "--data", str(SAMPLES / "clips"), "-o", str(run), "--epochs", "1", "--max-steps", "2",
         "--steps", "2", "--batch-size", "2", "--workers", "0", "--device", "cpu"],
    )  # fmt: skip
    assert trained.exit_code == 0, trained.stderr
    exported = runner.invoke(app, ["export", str(run / "last.safetensors"), "--steps", "2", "-o", str(onnx)])
    assert exported.exit_code == 0, exported.stderr
    assert onnx.stat().st_size > 0
    return json.loads(converted.stdout), run


@pytest.mark.slow
def test_convert_train_export_a_timm_checkpoint(saved, tmp_path):
    checkpoint, _ = saved("resnet10t")
    converted, run = _convert_train_export(checkpoint, tmp_path, "--ema", "--layer", "res5c", "--cell", "gru", "--sih")
    assert converted["architecture"] == "timm:resnet10t"
    shown = _inspect(str(run / "last.safetensors"))
    assert shown["converted"]["base_architecture"] == "timm:resnet10t"


@pytest.mark.slow
def test_convert_train_export_through_a_fused_norm(saved, tmp_path):
    checkpoint, _ = saved("mobilenetv3_small_050")
    _, run = _convert_train_export(checkpoint, tmp_path, "--layer", "blocks.5.0.conv", "--cell", "vrnn")
    layer = _inspect(str(run / "last.safetensors"))["converted"]["layers"][0]
    assert (layer["name"], layer["activation"]) == ("blocks.5.0.conv", "hardswish")


# ---------------------------------------------------------------- hostile names, and no timm installed

# Runs each command in one process, printing [args, exit code, stdout, stderr] for each; with "block",
# timm cannot be imported (sys.modules["timm"] = None: what an install without the extra gives).
DRIVER = """\
import json, sys
if sys.argv[2] == "block":
    sys.modules["timm"] = None
from typer.testing import CliRunner
from prernn_cli.cli import app
runner = CliRunner()
results = []
for args in json.loads(sys.argv[1]):
    result = runner.invoke(app, args)
    results.append([args, result.exit_code, result.stdout, result.stderr])
results.append(sorted(n for n, m in sys.modules.items() if m is not None and (n == "timm" or n.startswith("timm."))))
print(json.dumps(results))
"""


def _drive(commands: list[list[str]], cwd: Path, block: bool) -> tuple[list, list[str]]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(cwd), *sys.path])}
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, json.dumps(commands), "block" if block else "allow"],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    *results, timm_modules = json.loads(done.stdout.splitlines()[-1])
    return results, timm_modules


class _Result:
    def __init__(self, code: int, stdout: str, stderr: str) -> None:
        self.exit_code, self.stdout, self.stderr = code, stdout, stderr


@pytest.mark.slow
def test_without_timm_a_timm_name_or_checkpoint_is_one_line(saved, tmp_path):
    checkpoint, plain = saved("resnet10t")
    commands = [
        ["--help"],
        ["inspect", str(checkpoint)],
        ["inspect", str(plain), "--arch", "timm:resnet10t"],
        ["params", "--arch", "timm:resnet10t", "--layer", "res5c"],
    ]
    results, timm_modules = _drive(commands, tmp_path, block=True)
    assert results[0][1] == 0 and "Usage" in results[0][2]
    for args, code, stdout, stderr in results[1:]:
        line = _one_line_exit_2(_Result(code, stdout, stderr), "timm is not installed; pip install 'prernn[timm]'")
        assert line, args
    assert timm_modules == []

    help_only, loaded = _drive([["--help"], ["inspect", "--help"]], tmp_path, block=False)
    assert [code for _, code, _, _ in help_only] == [0, 0]
    assert loaded == []  # the base CLI never imports timm


MARKER = """\
from pathlib import Path
Path("imported.marker").write_text("imported")


def make(*args, **kwargs):
    Path("called.marker").write_text("called")
"""


@pytest.mark.slow
def test_arch_read_from_a_file_is_data(tmp_path):
    (tmp_path / "marker_mod.py").write_text(MARKER)
    hostile = ["os:system", "marker_mod:make", "marker_mod", "timm:resnet10t", "ResNet"]
    paths = []
    for index, arch in enumerate(hostile):
        torch.manual_seed(0)
        paths.append(_save_training_checkpoint("resnet10t", tmp_path / f"ck{index}", arch=arch))
    # A Namespace is the only object besides tensors and containers the load rebuilds.
    other = tmp_path / "other.pth.tar"
    stored = torch.load(paths[0], weights_only=False)
    torch.save({**stored, "args": Path("/etc")}, other)

    results, _ = _drive([["inspect", str(path), "--json"] for path in [*paths, other]], tmp_path, block=False)
    for (_, code, stdout, stderr), arch in zip(results[:-1], hostile):
        assert code == 0, (arch, stderr)
        shown = json.loads(stdout)
        assert shown["architecture"] == "timm:resnet10t" and shown["identified"] is True, arch  # from the weights
    *_, code, stdout, stderr = results[-1]
    _one_line_exit_2(_Result(code, stdout, stderr), "pathlib", "--trust-pickle")
    assert not (tmp_path / "imported.marker").exists() and not (tmp_path / "called.marker").exists()
    assert load_checkpoint(paths[0]).architecture == "timm:resnet10t"
    assert argparse.Namespace not in torch.serialization.get_safe_globals()  # the allow-list was scoped to the load
