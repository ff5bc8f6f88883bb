"""Loading checkpoints in every format, identifying architectures, refusing bad input and pickles."""

from __future__ import annotations

import json
import os
import pickle
import warnings
import zipfile
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from typer.testing import CliRunner

from helpers import SAMPLES, convert_architecture
from prernn_cli.architectures import (
    architecture_input,
    build_architecture,
    build_empty_architecture,
    identify,
    identify_architecture,
    known_architectures,
    match_architecture,
    paper_aliases,
    signature_cache_file,
)
from prernn_cli.architectures.c3d import C3D
from prernn_cli.architectures.samples import DigitC3D, DigitResNet, DigitVGG
from prernn_cli.checkpoint import (
    CheckpointFormat,
    detect_format,
    extract_state_dict,
    load_checkpoint,
    load_converted,
    save_converted,
)
from prernn_cli.cli import app
from prernn_cli.errors import ArchitectureError, CheckpointError, UserInputError
from prernn_cli.spec import SPEC_METADATA_KEY, CellType, FrameKind

runner = CliRunner()


class Evil:
    """A pickle payload that creates a marker file when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _digit_vgg() -> DigitVGG:
    torch.manual_seed(0)
    return DigitVGG().eval()


def _same_outputs(model: nn.Module, reference: nn.Module, shape=(2, 3, 32, 32)) -> None:
    x = torch.randn(*shape)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), reference.eval()(x), rtol=1e-5, atol=1e-6)


def _invoke_inspect(*args: str):
    return runner.invoke(app, ["inspect", *map(str, args)])


def _assert_one_line_error(result, needle: str, exit_code: int = 2) -> None:
    assert result.exit_code == exit_code, (result.exit_code, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert needle in lines[0], result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stdout == ""


# ---------------------------------------------------------------- formats


@pytest.mark.parametrize(
    "wrap",
    [
        "plain",
        "legacy",
        "nested_state_dict",
        "nested_model",
        "nested_model_state_dict",
        "ddp_prefix",
        "compiled_prefix",
        "with_extras",
    ],
)
def test_state_dict_variants_load_and_are_identified(tmp_path, wrap):
    reference = _digit_vgg()
    state = reference.state_dict()
    path = tmp_path / "weights.bin"  # the extension means nothing
    if wrap == "plain":
        torch.save(state, path)
    elif wrap == "legacy":
        torch.save(state, path, _use_new_zipfile_serialization=False)
    elif wrap.startswith("nested_"):
        torch.save({"epoch": 7, wrap.removeprefix("nested_"): state, "optimizer": {"lr": 0.1}}, path)
    elif wrap == "ddp_prefix":
        torch.save({"state_dict": {f"module.{key}": value for key, value in state.items()}}, path)
    elif wrap == "compiled_prefix":
        torch.save({f"_orig_mod.{key}": value for key, value in state.items()}, path)
    else:
        torch.save({"model": state, "epoch": 3, "best_acc": 0.9, "classes": ["a", "b"]}, path)
    loaded = load_checkpoint(path)
    assert loaded.format is CheckpointFormat.STATE_DICT
    assert loaded.architecture == "digit_vgg" and loaded.identified
    assert loaded.input_spec.size == (32, 32)
    assert isinstance(loaded.model, DigitVGG) and not loaded.model.training
    _same_outputs(loaded.model, reference)


def test_safetensors_weights(tmp_path):
    reference = _digit_vgg()
    path = tmp_path / "weights.pt"  # safetensors content behind a .pt name
    save_file({key: value.contiguous() for key, value in reference.state_dict().items()}, str(path))
    assert detect_format(path) is CheckpointFormat.SAFETENSORS
    loaded = load_checkpoint(path)
    assert loaded.format is CheckpointFormat.SAFETENSORS and loaded.architecture == "digit_vgg"
    _same_outputs(loaded.model, reference)


@pytest.mark.parametrize("how", ["script", "trace"])
def test_torchscript_known_architecture_becomes_python_module(tmp_path, how):
    reference = _digit_vgg()
    path = tmp_path / "model.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = (
            torch.jit.script(reference) if how == "script" else torch.jit.trace(reference, torch.zeros(1, 3, 32, 32))
        )
    scripted.save(str(path))
    assert detect_format(path) is CheckpointFormat.TORCHSCRIPT
    loaded = load_checkpoint(path)
    assert loaded.format is CheckpointFormat.TORCHSCRIPT
    assert loaded.architecture == "digit_vgg" and loaded.identified
    assert isinstance(loaded.model, DigitVGG)  # so torch.fx can trace it
    _same_outputs(loaded.model, reference)


class _TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(6, 5)
        self.out = nn.Linear(5, 2)

    def forward(self, x):
        return self.out(torch.relu(self.proj(x.flatten(1))))


def test_torchscript_unknown_architecture_is_still_inspected(tmp_path):
    path = tmp_path / "tiny.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(_TinyNet()).save(str(path))
    loaded = load_checkpoint(path)
    assert loaded.format is CheckpointFormat.TORCHSCRIPT
    assert loaded.architecture is None and not loaded.identified and not loaded.input_known
    result = _invoke_inspect(path, "--json")
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["format"] == "torchscript" and document["architecture"] is None
    assert document["traced"] is False and "torch.fx" in document["trace_error"]
    assert document["convertible"] == [] and document["no_convertible_reason"]


def test_pickled_module_needs_trust_pickle(tmp_path):
    reference = _digit_vgg()
    path = tmp_path / "whole.pt"
    torch.save(reference, path)
    result = _invoke_inspect(path)
    _assert_one_line_error(result, "--trust-pickle")
    assert "runs code" in result.stderr and "DigitVGG" in result.stderr
    with pytest.raises(CheckpointError, match="--trust-pickle"):
        load_checkpoint(path)
    loaded = load_checkpoint(path, trust_pickle=True)
    assert loaded.format is CheckpointFormat.PICKLED_MODULE
    assert loaded.architecture == "digit_vgg" and loaded.identified
    _same_outputs(loaded.model, reference)
    result = _invoke_inspect(path, "--trust-pickle")
    assert result.exit_code == 0, result.stderr
    assert "pickled_module" in result.stdout and "fc6" in result.stdout


def test_pickled_module_nested_in_a_dict(tmp_path):
    reference = _digit_vgg()
    path = tmp_path / "ckpt.pt"
    torch.save({"model": reference, "epoch": 2}, path)
    with pytest.raises(CheckpointError, match="--trust-pickle"):
        load_checkpoint(path)
    loaded = load_checkpoint(path, trust_pickle=True)
    assert loaded.format is CheckpointFormat.PICKLED_MODULE
    _same_outputs(loaded.model, reference)


@pytest.mark.parametrize("container", ["torch_zip", "torch_legacy", "plain_pickle", "nested_in_weights"])
@pytest.mark.parametrize("with_arch", [False, True])
def test_malicious_pickle_never_executes(tmp_path, container, with_arch):
    marker = tmp_path / "pwned"
    path = tmp_path / "model.pt"
    payload = Evil(marker)
    if container == "torch_zip":
        torch.save(payload, path)
    elif container == "torch_legacy":
        torch.save(payload, path, _use_new_zipfile_serialization=False)
    elif container == "plain_pickle":
        path.write_bytes(pickle.dumps(payload, protocol=4))
    else:
        torch.save({"state_dict": {**_digit_vgg().state_dict(), "extra": payload}}, path)
    args = [path, "--arch", "digit_vgg"] if with_arch else [path]
    result = _invoke_inspect(*args)
    _assert_one_line_error(result, "--trust-pickle")
    assert "posix.system" in result.stderr or "os.system" in result.stderr or "nt.system" in result.stderr
    assert not marker.exists()
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    assert not marker.exists()


def test_malicious_payload_is_real(tmp_path):
    """Control: the same payload does run when the user opts in, so the test above proves something."""
    marker = tmp_path / "pwned"
    path = tmp_path / "model.pt"
    torch.save(Evil(marker), path)
    with pytest.raises(CheckpointError):
        load_checkpoint(path, trust_pickle=True)  # it runs, then holds no model
    assert marker.exists()


# ---------------------------------------------------------------- identification


@pytest.mark.parametrize(
    "name, factory",
    [
        ("digit_vgg", lambda k: DigitVGG(num_classes=k)),
        ("digit_resnet", lambda k: DigitResNet(num_classes=k)),
        ("digit_c3d", lambda k: DigitC3D(num_classes=k)),
    ],
)
@pytest.mark.parametrize("num_classes", [10, 4])
def test_identify_sample_nets(name, factory, num_classes):
    match = match_architecture(factory(num_classes).state_dict())
    assert match.name == name
    assert match.num_classes == (None if num_classes == 10 else num_classes)


@pytest.mark.parametrize(
    "name, num_classes",
    [
        ("resnet18", None),
        ("resnet18", 7),
        ("vgg11", 5),
        ("c3d", 101),
        ("c3d", None),
        ("r3d_18", 3),
        ("mobilenet_v3_small", 12),
        ("resnet50", 2),
    ],
)
def test_identify_torchvision_and_c3d_on_meta(name, num_classes):
    state = build_empty_architecture(name, num_classes).state_dict()
    match = match_architecture(state)
    assert (match.name, match.num_classes) == (name, num_classes)
    assert identify_architecture(state) == name


def _raises_while_built(num_classes: int = 10) -> nn.Module:
    nn.Linear(2, 2)
    raise ValueError("boom")


@pytest.mark.parametrize("name", ["vgg16", "regnet_x_400mf", "c3d"])  # regnet computes with tensors while built
def test_empty_build_is_all_meta_and_leaves_torch_as_it_was(name):
    model = build_empty_architecture(name)
    assert all(tensor.is_meta for tensor in [*model.parameters(), *model.buffers()])
    assert model.state_dict().keys() == build_architecture(name).state_dict().keys()
    with pytest.raises(ArchitectureError, match="boom"):
        build_empty_architecture(f"{__name__}:_raises_while_built")
    assert torch._C._len_torch_function_stack() == 0  # no construction mode left behind
    layer = nn.Linear(4, 3)  # the default device and initialisation are untouched
    assert layer.weight.device.type == "cpu" and layer.weight.abs().sum() > 0


def test_weights_without_values_are_refused(tmp_path):
    path = tmp_path / "meta.pt"
    torch.save(build_empty_architecture("digit_vgg").state_dict(), path)  # shapes only: a model saved from meta
    with pytest.raises(CheckpointError, match=r"meta.pt: the file holds no values for features.0.weight"):
        load_checkpoint(path)


def test_identify_googlenet_saved_without_aux_heads():
    state = build_empty_architecture("googlenet", aux_logits=False).state_dict()
    match = match_architecture(state)
    assert match.name == "googlenet" and dict(match.options) == {"aux_logits": False}


def test_identify_resnet18_file_end_to_end(tmp_path):
    reference = build_architecture("resnet18", num_classes=5)
    path = tmp_path / "r18.pth"
    torch.save({"model_state_dict": reference.state_dict()}, path)
    loaded = load_checkpoint(path)
    assert loaded.architecture == "resnet18" and loaded.identified and loaded.num_classes == 5
    _same_outputs(loaded.model, reference, shape=(1, 3, 64, 64))


def test_unmatched_weights_name_closest_candidates_and_cache_signatures(tmp_path, monkeypatch):
    monkeypatch.setenv("PRERNN_CACHE_DIR", str(tmp_path))
    identify._signature.cache_clear()
    model = DigitResNet()
    state = {key: value for key, value in model.state_dict().items() if not key.startswith("layer3.1")}
    with pytest.raises(CheckpointError, match=r"match no known architecture \(closest: digit_resnet") as first:
        match_architecture(state)
    cache = signature_cache_file()
    assert cache.parent == tmp_path and cache.exists()
    assert {"resnet50", "vgg16", "r3d_18", "c3d"} <= set(json.loads(cache.read_text()))
    identify._signature.cache_clear()  # the next run reads the shapes from disk
    with pytest.raises(CheckpointError) as second:
        match_architecture(state)
    assert str(second.value) == str(first.value)


def test_c3d_matches_the_common_port():
    model = C3D()
    names = [name for name, _ in model.named_children()]
    assert names[:3] == ["conv1", "pool1", "conv2"] and {"conv5b", "fc6", "fc7", "fc8", "relu", "dropout"} <= set(names)
    assert (model.fc6.in_features, model.fc6.out_features, model.fc7.out_features, model.fc8.out_features) == (
        8192,
        4096,
        4096,
        487,
    )
    assert model.pool5.padding == (0, 1, 1)
    with torch.device("meta"):
        meta = C3D(num_classes=4)
        assert meta(torch.empty(2, 3, 16, 112, 112)).shape == (2, 4)
    torch.fx.symbolic_trace(meta)
    assert paper_aliases("c3d", meta) == {"fc6": "fc6", "fc7": "fc7"}
    spec = architecture_input("c3d")
    assert spec.frame_kind is FrameKind.SNIPPET and spec.step_shape() == (3, 16, 112, 112)


def test_architecture_inputs_and_aliases():
    assert architecture_input("resnet50").size == (224, 224)
    assert architecture_input("inception_v3").size == (299, 299)
    assert architecture_input("vit_h_14").size == (224, 224)  # what a weights=None build accepts
    for video in ("r3d_18", "mc3_18", "r2plus1d_18"):
        assert architecture_input(video).step_shape() == (3, 16, 112, 112)
    for video in ("s3d", "mvit_v1_b", "mvit_v2_s", "swin3d_t"):
        spec = architecture_input(video)
        assert spec.frame_kind is FrameKind.SNIPPET and spec.snippet_length >= 16 and spec.size == (224, 224)
    assert architecture_input("digit_c3d").step_shape() == (3, 4, 32, 32)
    assert architecture_input("digit_vgg").mean == (0.5, 0.5, 0.5)
    assert paper_aliases("vgg16", build_empty_architecture("vgg16")) == {"fc6": "classifier.0", "fc7": "classifier.3"}
    assert paper_aliases("resnet50", build_empty_architecture("resnet50"))["res5c"] == "layer4.2.conv3"
    assert paper_aliases("resnet18", build_empty_architecture("resnet18"))["res5c"] == "layer4.1.conv2"
    assert paper_aliases("digit_resnet", DigitResNet()) == {"res5c": "layer3.1.conv2"}
    assert paper_aliases("digit_vgg", DigitVGG()) == {"fc6": "classifier.0", "fc7": "classifier.3"}
    assert {"resnet50", "r3d_18", "c3d", "digit_vgg", "digit_resnet", "digit_c3d"} <= set(known_architectures())


def test_build_architecture_names():
    assert isinstance(build_architecture("prernn_cli.architectures.samples:DigitVGG", num_classes=3), DigitVGG)
    assert build_architecture("digit_c3d", num_classes=6).fc8.out_features == 6
    with pytest.raises(ArchitectureError, match="did you mean resnet18"):
        build_architecture("resnet17")
    with pytest.raises(ArchitectureError, match="detection model"):
        build_architecture("fasterrcnn_resnet50_fpn")
    with pytest.raises(ArchitectureError, match="cannot import"):
        build_architecture("no_such_package.nets:Net")
    with pytest.raises(ArchitectureError, match="has no attribute"):
        build_architecture("prernn_cli.architectures.samples:NoSuchNet")


def test_explicit_arch_user_callable(tmp_path):
    reference = _digit_vgg()
    path = tmp_path / "w.pt"
    torch.save(reference.state_dict(), path)
    loaded = load_checkpoint(path, arch="prernn_cli.architectures.samples:DigitVGG")
    assert not loaded.identified and not loaded.input_known
    _same_outputs(loaded.model, reference)


def test_extract_state_dict():
    tensor = torch.zeros(2)
    assert extract_state_dict({"module.a": tensor, "module.b": tensor}) == {"a": tensor, "b": tensor}
    assert extract_state_dict({"state_dict": {"a": tensor}, "epoch": 1}) == {"a": tensor}
    assert extract_state_dict({"epoch": 1, "lr": 0.1}) is None
    assert extract_state_dict([tensor]) is None


# ---------------------------------------------------------------- bad input: exit 2, one line, no traceback


def _make_bad(tmp_path: Path, kind: str) -> list[str]:
    path = tmp_path / f"{kind}.pt"
    state = _digit_vgg().state_dict()
    if kind == "missing":
        return [str(tmp_path / "nope.pt")]
    if kind == "directory":
        return [str(tmp_path)]
    if kind == "empty":
        path.write_bytes(b"")
    elif kind in ("truncated_zip", "truncated_legacy", "truncated_safetensors"):
        if kind == "truncated_safetensors":
            save_file({key: value.contiguous() for key, value in state.items()}, str(path))
        else:
            torch.save(state, path, _use_new_zipfile_serialization=kind == "truncated_zip")
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "text":
        path.write_text("epoch,loss\n1,0.5\n2,0.25\n")
    elif kind == "random_bytes":
        path.write_bytes(bytes(range(7, 256)) * 4)
    elif kind == "not_torch_zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("readme.txt", "hello")
    elif kind == "no_weights":
        torch.save({"epoch": 3, "lr": 0.1}, path)
    elif kind == "unknown_weights":
        torch.save({"encoder.weight": torch.zeros(3, 3), "layer1.0.conv1.weight": torch.zeros(64, 64, 3, 3)}, path)
    elif kind in ("unknown_arch", "wrong_arch"):
        torch.save(state, path)
        return [str(path), "--arch", "resnet17" if kind == "unknown_arch" else "digit_resnet"]
    elif kind == "bad_callable":
        torch.save(state, path)
        return [str(path), "--arch", "no_such_package.nets:Net"]
    return [str(path)]


BAD_INPUTS = {
    "missing": "does not exist",
    "directory": "is a directory",
    "empty": "is empty",
    "truncated_zip": "truncated",
    "truncated_legacy": "truncated",
    "truncated_safetensors": "truncated",
    "text": "text file",
    "random_bytes": "not a format prernn reads",
    "not_torch_zip": "zip archive",
    "no_weights": "no model weights",
    "unknown_weights": "closest:",
    "unknown_arch": "did you mean resnet18",
    "wrong_arch": "does not fit architecture digit_resnet",
    "bad_callable": "cannot import",
}


@pytest.mark.parametrize("kind", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2(tmp_path, kind):
    result = _invoke_inspect(*_make_bad(tmp_path, kind))
    _assert_one_line_error(result, BAD_INPUTS[kind])


def test_wrong_arch_names_keys_and_shapes(tmp_path):
    path = tmp_path / "w.pt"
    torch.save(DigitVGG(num_classes=10).state_dict(), path)
    torch.save({**DigitVGG().state_dict(), "classifier.0.weight": torch.zeros(128, 1024)}, path)
    with pytest.raises(CheckpointError, match=r"classifier\.0\.weight \[128, 1024\] vs \[256, 1024\]"):
        load_checkpoint(path, arch="digit_vgg")


# ---------------------------------------------------------------- our converted format


@pytest.fixture
def converted_vgg():
    return convert_architecture("digit_vgg", ["fc6", "fc7"], CellType.GRU, paper_names=True)


def test_save_and_load_converted_round_trip(tmp_path, converted_vgg):
    path = tmp_path / "model.safetensors"
    save_converted(converted_vgg, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]  # no temporary left behind
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    assert metadata["format"] == "prernn"
    assert json.loads(metadata[SPEC_METADATA_KEY])["base_architecture"] == "digit_vgg"
    assert detect_format(path) is CheckpointFormat.PRERNN
    loaded = load_converted(path)
    assert loaded.spec == converted_vgg.spec
    frames = torch.randn(2, 3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(frames)[0], converted_vgg.eval()(frames)[0])
    via_checkpoint = load_checkpoint(path)
    assert via_checkpoint.format is CheckpointFormat.PRERNN and via_checkpoint.spec == converted_vgg.spec
    assert via_checkpoint.architecture == "digit_vgg"
    assert load_checkpoint(path, arch="digit_vgg").spec == converted_vgg.spec
    _assert_one_line_error(_invoke_inspect(path, "--arch", "resnet18"), "drop --arch")


def test_load_converted_rejects_plain_weights_and_bad_specs(tmp_path, converted_vgg):
    plain = tmp_path / "plain.safetensors"
    save_file({"a": torch.zeros(2)}, str(plain))
    with pytest.raises(CheckpointError, match="not a converted prernn model; convert it first: prernn convert"):
        load_converted(plain)
    weights = tmp_path / "weights.pt"
    torch.save(_digit_vgg().state_dict(), weights)
    with pytest.raises(CheckpointError, match="is a state_dict checkpoint, not a converted prernn model"):
        load_converted(weights)
    path = tmp_path / "model.safetensors"
    save_converted(converted_vgg, path)
    tensors = {}
    with safe_open(str(path), framework="pt") as handle:
        spec = json.loads(handle.metadata()[SPEC_METADATA_KEY])
        for key in handle.keys():
            tensors[key] = handle.get_tensor(key)
    future = tmp_path / "future.safetensors"
    save_file(tensors, str(future), metadata={SPEC_METADATA_KEY: json.dumps({**spec, "format_version": 99})})
    result = _invoke_inspect(future)
    _assert_one_line_error(result, "format version 99")
    missing = tmp_path / "missing.safetensors"
    save_file(
        {key: value for key, value in tensors.items() if "weight_hh" not in key},
        str(missing),
        metadata={SPEC_METADATA_KEY: json.dumps(spec)},
    )
    result = _invoke_inspect(missing)
    _assert_one_line_error(result, "do not fit its spec")


def test_save_converted_fails_cleanly_on_a_bad_path(tmp_path, converted_vgg):
    with pytest.raises(UserInputError, match="does not exist"):
        save_converted(converted_vgg, tmp_path / "no_such_dir" / "m.safetensors")


@pytest.mark.parametrize("name", ["digit_vgg", "digit_resnet", "digit_c3d"])
def test_shipped_samples_are_identified(name):
    path = SAMPLES / f"{name}.pt"
    if not path.exists():
        pytest.skip(f"{path} not generated yet")
    loaded = load_checkpoint(path)
    assert loaded.architecture == name and loaded.identified and loaded.format is CheckpointFormat.STATE_DICT


# ---------------------------------------------------------------- module versions and dtypes


@pytest.mark.parametrize("name", ["mnasnet0_5", "mnasnet0_75", "mnasnet1_0", "mnasnet1_3"])
def test_mnasnet_loads_without_its_saved_versions(tmp_path, name):
    # MNASNet reads its layout version from the state_dict's _metadata, which a plain dict does not carry.
    torch.manual_seed(0)
    reference = getattr(torchvision.models, name)().eval()
    path = tmp_path / f"{name}.pt"
    torch.save(dict(reference.state_dict()), path)
    result = _invoke_inspect(path, "--arch", name)
    assert result.exit_code == 0, result.stderr
    assert name in result.stdout
    _same_outputs(load_checkpoint(path, arch=name).model, reference, shape=(1, 3, 64, 64))


def test_mnasnet_keeps_its_saved_versions_through_a_ddp_prefix(tmp_path):
    torch.manual_seed(0)
    reference = torchvision.models.mnasnet0_5().eval()
    state = reference.state_dict()
    torch.save(state, tmp_path / "plain.pt")
    wrapped = OrderedDict((f"module.{key}", value) for key, value in state.items())
    # The wrapper's own entry says version 1: it must not become the network's (v1 would rebuild its stem).
    wrapped._metadata = {
        "": {"version": 1},
        **{f"module.{k}" if k else "module": v for k, v in state._metadata.items()},
    }
    torch.save({"state_dict": wrapped, "epoch": 3}, tmp_path / "ddp.pt")
    save_file({key: value.contiguous() for key, value in state.items()}, str(tmp_path / "weights.safetensors"))
    for file in ("plain.pt", "ddp.pt", "weights.safetensors"):
        loaded = load_checkpoint(tmp_path / file)
        assert loaded.architecture == "mnasnet0_5", file
        _same_outputs(loaded.model, reference, shape=(1, 3, 64, 64))


def test_float64_weights_become_float32_with_a_warning(tmp_path, caplog, converted_vgg):
    reference = _digit_vgg()
    path = tmp_path / "double.pt"
    torch.save(reference.double().state_dict(), path)
    with caplog.at_level("WARNING", logger="prernn_cli.checkpoint"):
        loaded = load_checkpoint(path)
    assert {tensor.dtype for tensor in loaded.model.parameters()} == {torch.float32}
    assert "float64" in caplog.text and "float32" in caplog.text
    _same_outputs(loaded.model, reference.float())

    model = tmp_path / "model.safetensors"
    save_converted(converted_vgg, model)
    tensors = {}
    with safe_open(str(model), framework="pt") as handle:
        metadata = handle.metadata()
        for key in handle.keys():
            tensors[key] = handle.get_tensor(key)
    recurrent = next(key for key in tensors if key.endswith("weight_hh"))
    tensors[recurrent] = tensors[recurrent].double()
    save_file(tensors, str(tmp_path / "double.safetensors"), metadata=metadata)
    caplog.clear()
    with caplog.at_level("WARNING", logger="prernn_cli.checkpoint"):
        converted = load_converted(tmp_path / "double.safetensors")
    assert "1 float64 tensor(s)" in caplog.text
    assert {tensor.dtype for tensor in converted.state_dict().values() if tensor.is_floating_point()} == {torch.float32}
    frames = torch.randn(1, 2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(converted(frames)[0], converted_vgg.eval()(frames)[0])
