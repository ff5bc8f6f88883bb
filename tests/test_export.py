"""ONNX export and validation (SPEC §5): real exports of the sample nets, run with onnxruntime.

Every export here goes through ``torch.onnx.export(dynamo=True)`` (seconds each), so
models are small (random weights, T ≤ 3) and shared through module-scoped fixtures;
the full cell × SIH × fc/conv × 2D/3D sweep is marked slow.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from typer.testing import CliRunner

from helpers import convert_architecture
from prernn_cli.architectures import build_architecture
from prernn_cli.checkpoint import save_converted
from prernn_cli.cli import app
from prernn_cli.errors import ExportError, ShapeMismatchError, ToleranceError, UserInputError
from prernn_cli.export import (
    EXPORT_METADATA_KEY,
    OnnxExportSpec,
    Precision,
    default_opset,
    export_onnx,
    flatten_state,
    opset_range,
    read_export_spec,
    validate_onnx,
)
from prernn_cli.export.runtime import runtime_accepts_opset
from prernn_cli.spec import SPEC_METADATA_KEY

runner = CliRunner()

# (architecture, layers, kind): fc on a 2D net, conv on a 2D net, fc on a 3D net
NETS = {
    "vgg_fc": ("digit_vgg", ["classifier.0", "classifier.3"]),
    "resnet_conv": ("digit_resnet", ["layer3.1.conv2"]),
    "c3d_fc": ("digit_c3d", ["fc6"]),
}
#: exported by the fast test_export_validates; the slow sweep covers the rest
FAST_CASES = [("vgg_fc", "gru", True), ("resnet_conv", "lstm", False), ("c3d_fc", "vrnn", False)]


def build(net: str, cell: str, sih: bool = False, traditional: bool = False, seed: int = 0):
    arch, layers = NETS[net]
    classes = [f"digit{i}" for i in range(10)]
    return convert_architecture(
        arch, layers, cell, seed=seed, sih=sih, traditional=traditional, class_names=classes
    ).eval()


def ort_session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def ort_run(session, frames: torch.Tensor, state: list[torch.Tensor]) -> list[np.ndarray]:
    names = [i.name for i in session.get_inputs()]
    feeds = dict(zip(names, [frames.numpy(), *[s.numpy() for s in state]]))
    return session.run(None, feeds)


def random_state(model, batch: int) -> list[torch.Tensor]:
    return [0.5 * torch.randn_like(t) for t in flatten_state(model.initial_state(batch))]


@pytest.fixture(scope="module")
def lstm_export(tmp_path_factory):
    """A 2-layer PreLSTM on the VGG-style net, exported with T=2, dynamic batch."""
    model = build("vgg_fc", "lstm")
    path = tmp_path_factory.mktemp("export") / "vgg_lstm.onnx"
    result = export_onnx(model, path, OnnxExportSpec.create(model.spec, steps=2))
    return model, path, result


# ---------------------------------------------------------------- the export spec as data


def test_opset_default_is_newest_supported_by_exporter_and_runtime():
    low, high = opset_range()
    assert 18 <= low <= high <= onnx.defs.onnx_opset_version()
    assert default_opset() == high
    # onnxruntime really loads that opset
    assert runtime_accepts_opset(high)


def test_export_spec_names_and_axes():
    model = build("vgg_fc", "lstm")
    spec = OnnxExportSpec.create(model.spec, steps=4)
    assert spec.input_names == ["frames", "h_0.0", "c_0.0", "h_0.1", "c_0.1"]
    assert spec.output_names == ["outputs", "h_n.0", "c_n.0", "h_n.1", "c_n.1"]
    assert spec.dynamic_axes["frames"] == {0: "batch"} and spec.dynamic_axes["h_n.1"] == {0: "batch"}
    assert spec.input_shapes(2)["frames"] == (2, 4, 3, 32, 32)
    assert (spec.atol, spec.rtol) == (1e-4, 1e-3) and spec.opset == default_opset()
    half = OnnxExportSpec.create(model.spec, steps=1, half=True, batch="3")
    assert half.precision is Precision.FP16 and half.atol > spec.atol and half.batch == 3 and half.dynamic_axes == {}
    gru = OnnxExportSpec.create(build("c3d_fc", "gru").spec, steps=2)
    assert gru.input_names == ["frames", "h_0.0"] and gru.input_shapes(1)["frames"] == (1, 2, 3, 4, 32, 32)


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"steps": 0}, "--steps"),
        ({"opset": 99}, "opset 99"),
        ({"opset": 7}, "opset 7"),
        ({"batch": "0"}, "--batch"),
        ({"batch": "many"}, "--batch"),
        ({"atol": -1.0}, "--atol"),
    ],
)
def test_export_spec_rejects_bad_requests(kwargs, needle):
    model_spec = build("c3d_fc", "vrnn").spec
    with pytest.raises(ExportError, match=needle.replace("-", r"\-")):
        OnnxExportSpec.create(model_spec, **kwargs)


# ---------------------------------------------------------------- exported graphs


def test_exported_file_layout_metadata_and_validation(lstm_export):
    model, path, result = lstm_export
    assert result.validation.passed and result.validation.compared_with_pytorch
    checks = {c.check for c in result.validation.comparisons}
    assert checks == {"random", "chunks"}
    assert result.files == (path,) and not result.external_data
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temp files, no external data
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    assert [i.name for i in proto.graph.input] == ["frames", "h_0.0", "c_0.0", "h_0.1", "c_0.1"]
    assert [o.name for o in proto.graph.output] == ["outputs", "h_n.0", "c_n.0", "h_n.1", "c_n.1"]
    frames_dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert frames_dims == ["batch", 2, 3, 32, 32]
    assert proto.opset_import[0].version == default_opset() or any(
        o.version == default_opset() for o in proto.opset_import if o.domain == ""
    )
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["prernn.layers"]) == ["classifier.0", "classifier.3"]
    assert meta["prernn.cell"] == "lstm" and json.loads(meta["prernn.sih"]) is False
    assert json.loads(meta["prernn.class_names"])[0] == "digit0"
    assert json.loads(meta["prernn.preprocessing"])["mean"] == [0.5, 0.5, 0.5]
    assert SPEC_METADATA_KEY in meta and EXPORT_METADATA_KEY in meta
    assert read_export_spec(path).model_spec == model.spec


def test_chunks_carrying_state_equal_one_long_pytorch_run(lstm_export):
    model, path, _ = lstm_export
    session = ort_session(path)
    frames = torch.randn(2, 4, 3, 32, 32)
    state = random_state(model, 2)
    with torch.no_grad():
        expected, expected_state = model(frames, [(state[0], state[1]), (state[2], state[3])])
    first = ort_run(session, frames[:, :2], state)
    second = ort_run(session, frames[:, 2:], [torch.from_numpy(a) for a in first[1:]])
    torch.testing.assert_close(
        torch.from_numpy(np.concatenate([first[0], second[0]], axis=1)), expected, atol=1e-4, rtol=1e-3
    )
    for got, want in zip(second[1:], flatten_state(expected_state)):
        torch.testing.assert_close(torch.from_numpy(got), want, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("batch", [1, 5])
def test_dynamic_batch_other_than_the_exports(lstm_export, batch):
    model, path, _ = lstm_export
    frames = torch.randn(batch, 2, 3, 32, 32)
    state = random_state(model, batch)
    with torch.no_grad():
        expected, _ = model(frames, [(state[0], state[1]), (state[2], state[3])])
    got = ort_run(ort_session(path), frames, state)
    assert got[0].shape == (batch, 2, 10)
    torch.testing.assert_close(torch.from_numpy(got[0]), expected, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("net, cell, sih", FAST_CASES, ids=["fc2d-gru-sih", "conv2d-lstm", "fc3d-vrnn"])
def test_export_validates(tmp_path, net, cell, sih):
    model = build(net, cell, sih)
    result = export_onnx(model, tmp_path / "m.onnx", OnnxExportSpec.create(model.spec, steps=2))
    assert result.validation.passed
    assert all(c.max_abs < 1e-4 for c in result.validation.comparisons)


SWEEP = [
    (net, cell, sih, False)
    for net in NETS
    for cell, sih in [("vrnn", False), ("lstm", False), ("lstm", True), ("gru", False), ("gru", True)]
    if (net, cell, sih) not in FAST_CASES  # already exported by test_export_validates
] + [("vgg_fc", "lstm", False, True), ("resnet_conv", "gru", False, True)]  # traditional baselines


@pytest.mark.slow
@pytest.mark.parametrize(
    "net, cell, sih, traditional",
    SWEEP,
    ids=[f"{n}-{c}{'-sih' if s else ''}{'-tra' if t else ''}" for n, c, s, t in SWEEP],
)
def test_export_sweep_every_cell_sih_kind_and_backbone(tmp_path, net, cell, sih, traditional):
    model = build(net, cell, sih, traditional)
    result = export_onnx(model, tmp_path / "m.onnx", OnnxExportSpec.create(model.spec, steps=1))
    assert result.validation.passed


def test_fixed_batch_and_lowest_opset(tmp_path):
    model = build("c3d_fc", "gru")
    low, _ = opset_range()
    result = export_onnx(model, tmp_path / "b2.onnx", OnnxExportSpec.create(model.spec, steps=1, batch=2, opset=low))
    assert result.validation.passed
    proto = onnx.load(str(result.path))
    assert [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim] == [2, 1, 3, 4, 32, 32]
    assert any(o.version == low for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def test_fp16_export_validates_within_its_tolerance(tmp_path, lstm_export):
    model = build("vgg_fc", "lstm")
    result = export_onnx(model, tmp_path / "half.onnx", OnnxExportSpec.create(model.spec, steps=2, half=True))
    assert result.spec.precision is Precision.FP16 and result.validation.passed
    assert all(c.max_abs <= c.atol + c.rtol * 10 for c in result.validation.comparisons)
    session = ort_session(result.path)
    assert session.get_inputs()[0].type == "tensor(float16)"
    fp32_size = lstm_export[2].size_bytes
    assert result.size_bytes < 0.6 * fp32_size


def test_failed_validation_leaves_nothing_unless_keep_invalid(tmp_path):
    model = build("c3d_fc", "vrnn")
    spec = OnnxExportSpec.create(model.spec, steps=1, atol=1e-30, rtol=1e-30)  # nothing passes this
    with pytest.raises(ToleranceError, match="nothing was written") as info:
        export_onnx(model, tmp_path / "m.onnx", spec)
    assert list(tmp_path.iterdir()) == []
    assert info.value.report is not None and not info.value.report.passed
    with pytest.raises(ToleranceError, match="kept the invalid file"):
        export_onnx(model, tmp_path / "m.onnx", spec, keep_invalid=True)
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def test_validate_against_another_model_fails(tmp_path, lstm_export):
    model, path, _ = lstm_export
    other = build("vgg_fc", "lstm", seed=1)  # same structure, other weights
    with pytest.raises(ToleranceError):
        validate_onnx(path, other)
    with pytest.raises(UserInputError, match="not the one"):
        validate_onnx(path, build("vgg_fc", "gru"))


def test_validate_without_reference_checks_structure(lstm_export):
    _, path, _ = lstm_export
    report = validate_onnx(path)
    assert report.passed and not report.compared_with_pytorch and report.comparisons == ()


def test_validate_catches_a_renamed_output(tmp_path, lstm_export):
    _, path, _ = lstm_export
    proto = onnx.load(str(path))
    old = proto.graph.output[1].name
    proto.graph.node.append(onnx.helper.make_node("Identity", [old], ["h_final"]))
    proto.graph.output[1].name = "h_final"
    broken = tmp_path / "broken.onnx"
    onnx.save(proto, str(broken))
    with pytest.raises(ShapeMismatchError, match="SPEC"):
        validate_onnx(broken)


# ---------------------------------------------------------------- the tolerance scales with each output


def large_activation_model():
    """A PreVRNN (ReLU) on DigitVGG's classifier.0 whose h reaches several hundred; correct, and ill-conditioned.

    The trunk's features get a large common offset (features after a ReLU are all positive) and the
    layer's bias centres its pre-activations on a calibration batch, as training leaves a real fc6:
    each pre-activation sums terms of ~1e5 that cancel to at most a few hundred, so float32 rounding
    differs between PyTorch and onnxruntime by ~1e-2, on elements near zero as on the largest.
    """
    model = convert_architecture("digit_vgg", ["classifier.0"], "vrnn", class_names=[f"digit{i}" for i in range(10)])
    layer = model.eval().layers[0]
    assert layer.activation == "relu"
    with torch.no_grad():
        model.get_parameter("trunk.features.10.bias").add_(30.0)
        layer.weight_ih.mul_(1000.0)
        calibration = torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(123))
        (features,) = model.trunk(calibration)
        layer.bias_ih.copy_(-(features.flatten(1) @ layer.weight_ih.t()).mean(0))
    return model


def old_rule_refusals(got: np.ndarray, expected: torch.Tensor) -> int:
    """Elements the former element-wise rule |onnx - torch| <= 1e-4 + 1e-3·|torch| refuses."""
    want = expected.double().numpy()
    return int((np.abs(got - want) > 1e-4 + 1e-3 * np.abs(want)).sum())


def test_correct_model_with_large_activations_passes(tmp_path):
    model = large_activation_model()
    result = export_onnx(model, tmp_path / "big.onnx", OnnxExportSpec.create(model.spec, steps=2))
    report = result.validation
    assert report.passed
    states = [c for c in report.comparisons if c.output == "h_n.0"]
    assert min(c.scale for c in states) > 200  # |h| reaches several hundred
    assert max(c.max_abs for c in states) > 1e-3  # rounding far beyond the absolute floor...
    assert all(c.max_abs <= c.atol + c.rtol * c.scale for c in report.comparisons)  # ...within the scaled rule
    worst = max(states, key=lambda c: c.max_abs)
    assert abs(worst.worst_onnx - worst.worst_torch) == pytest.approx(worst.max_abs)
    assert worst.to_dict()["worst_index"] == list(worst.worst_index) and len(worst.worst_index) == 2

    # the former element-wise rule refuses these same, correct, outputs where they cross zero
    frames = torch.randn(3, 2, 3, 32, 32)
    state = [0.5 * torch.randn(3, 256)]
    with torch.no_grad():
        expected, expected_state = model(frames, state)
    got = ort_run(ort_session(result.path), frames, state)
    assert old_rule_refusals(got[0], expected) + old_rule_refusals(got[1], expected_state[0]) > 0

    converted = tmp_path / "big.safetensors"
    save_converted(model, converted)
    cli = runner.invoke(app, ["validate", str(result.path), "--against", str(converted)], env={"COLUMNS": "160"})
    assert cli.exit_code == 0, cli.stderr
    assert "1e-4 + 1e-3·max|t|" in cli.stdout and "max|t|" in cli.stdout and "FAIL" not in cli.stdout


def _ignore_h0(proto: onnx.ModelProto) -> None:
    """Rewire the first node reading ``h_0.0`` to read zeros of its shape: the state input is left unconnected."""
    zeros = [
        onnx.helper.make_node("Shape", ["h_0.0"], ["h_0.0_shape"]),
        onnx.helper.make_node(
            "ConstantOfShape", ["h_0.0_shape"], ["h_0.0_zeros"], value=onnx.helper.make_tensor("z", 1, [1], [0.0])
        ),
    ]
    user = next(node for node in proto.graph.node if "h_0.0" in node.input)
    user.input[list(user.input).index("h_0.0")] = "h_0.0_zeros"
    for node in reversed(zeros):
        proto.graph.node.insert(0, node)


def _swap_recurrent_gates(proto: onnx.ModelProto) -> None:
    """Swap the input and forget gates' blocks of the first LSTM layer's recurrent weights.

    The recurrent weights, not the input ones: PreLSTM gives every gate a copy of the same
    pretrained input weights (Eqs. 7, 8), so swapping those would change nothing.
    """
    user = next(node for node in proto.graph.node if "h_0.0" in node.input)  # Gemm(h_0.0, W_hh^T [H, 4H], ...)
    tensor = next(t for t in proto.graph.initializer if t.name in user.input)
    value = onnx.numpy_helper.to_array(tensor).copy()
    hidden = value.shape[0]
    assert value.shape == (hidden, 4 * hidden)
    value[:, : 2 * hidden] = np.concatenate([value[:, hidden : 2 * hidden], value[:, :hidden]], axis=1)
    tensor.CopyFrom(onnx.numpy_helper.from_array(value, tensor.name))


@pytest.mark.parametrize("breakage", [_ignore_h0, _swap_recurrent_gates], ids=["h0-unconnected", "gates-swapped"])
def test_broken_graph_is_caught_and_cli_validate_exits_1(tmp_path, lstm_export, breakage):
    model, path, _ = lstm_export
    proto = onnx.load(str(path))
    breakage(proto)
    onnx.checker.check_model(proto)  # still a well-formed graph: only the comparison can tell
    broken = tmp_path / "broken.onnx"
    onnx.save(proto, str(broken))
    with pytest.raises(ToleranceError, match="differs from PyTorch") as info:
        validate_onnx(broken, model)
    worst = info.value.report.worst()
    assert worst.max_abs > 10 * worst.tolerance  # far outside even the scaled rule
    converted = tmp_path / "vgg_lstm.safetensors"
    save_converted(model, converted)
    result = runner.invoke(app, ["validate", str(broken), "--against", str(converted)])
    assert result.exit_code == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "differs from PyTorch" in lines[0] and "max|torch|" in lines[0], result.stderr
    assert "Traceback" not in result.stderr


# ---------------------------------------------------------------- external data


def save_with_external_data(source: Path, folder: Path, name: str = "m.onnx") -> Path:
    """``source`` saved into ``folder`` with its weights (initializers past 4 kB) in ``weights.bin`` beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    proto = onnx.load(str(source))
    target = folder / name
    onnx.save(proto, str(target), save_as_external_data=True, location="weights.bin", size_threshold=4096)
    return target


def point_external_data(path: Path, location: str, output: Path) -> Path:
    """``path`` with every external tensor's location set to ``location``, written as ``output`` (no data read)."""
    proto = onnx.load(str(path), load_external_data=False)
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    output.write_bytes(proto.SerializeToString())
    return output


def test_external_data_beside_the_model_validates(tmp_path, lstm_export):
    model, path, _ = lstm_export
    local = save_with_external_data(path, tmp_path / "model")
    assert (tmp_path / "model" / "weights.bin").stat().st_size > 1_000_000
    assert validate_onnx(local, model).passed


@pytest.mark.parametrize("where", ["dotdot", "absolute", "symlink-out", "missing"])
def test_external_data_outside_the_folder_is_refused_exit_2(tmp_path, lstm_export, where):
    _, path, _ = lstm_export
    local = save_with_external_data(path, tmp_path / "model")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    os.replace(tmp_path / "model" / "weights.bin", outside / "weights.bin")  # real weights, outside the folder
    location = {
        "dotdot": "../elsewhere/weights.bin",
        "absolute": str(outside / "weights.bin"),
        "symlink-out": "link.bin",
        "missing": "weights.bin",
    }[where]
    if where == "symlink-out":
        (tmp_path / "model" / "link.bin").symlink_to(outside / "weights.bin")
    hostile = point_external_data(local, location, tmp_path / "model" / "hostile.onnx")
    with pytest.raises(UserInputError, match="missing" if where == "missing" else "outside the model's folder"):
        validate_onnx(hostile)
    before = sorted(p.name for p in (tmp_path / "model").iterdir())
    result = runner.invoke(app, ["validate", str(hostile)])
    assert result.exit_code == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and location in lines[0] and "Traceback" not in result.stderr, result.stderr
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == before


# ---------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("converted")
    path = folder / "c3d_gru.safetensors"
    save_converted(build("c3d_fc", "gru", sih=True), path)
    return path


def test_cli_export_validate_roundtrip(tmp_path, converted):
    model = tmp_path / "net.safetensors"
    model.write_bytes(converted.read_bytes())
    result = runner.invoke(app, ["export", str(model), "--onnx", "--steps", "1", "--json"])
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    out = tmp_path / "net.step.onnx"  # the default name of a step model
    assert data["path"] == str(out) and out.is_file() and data["validation"]["passed"]
    assert {c["check"] for c in data["validation"]["comparisons"]} == {"random", "chunks"}
    result = runner.invoke(app, ["validate", str(out), "--against", str(model)])
    assert result.exit_code == 0, result.stderr
    assert "chunks" in result.stdout and "valid" in result.stdout
    result = runner.invoke(app, ["validate", str(out), "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["compared_with_pytorch"] is False


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--steps", "0"], "'--steps'"),  # refused by the option's own range check
        (["--opset", "99"], "outside the range"),
        (["--batch", "0"], "--batch"),
        (["-o", "{dir}"], "is a directory"),
    ],
    ids=["steps0", "opset", "batch", "outdir"],
)
def test_cli_bad_export_requests_exit_2_one_line_nothing_written(tmp_path, converted, args, needle):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    argv = ["export", str(converted), "--onnx"] + [a.replace("{dir}", str(out_dir)) for a in args]
    if "-o" not in argv:
        argv += ["-o", str(out_dir / "m.onnx")]
    result = runner.invoke(app, argv)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], result.stderr
    assert list(out_dir.iterdir()) == []


def test_cli_export_of_a_plain_checkpoint_says_convert_first(tmp_path):
    plain = tmp_path / "digit_vgg.pt"
    torch.save(build_architecture("digit_vgg").state_dict(), plain)
    result = runner.invoke(app, ["export", str(plain), "--onnx", "-o", str(tmp_path / "m.onnx")])
    assert result.exit_code == 2
    assert "prernn convert" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digit_vgg.pt"]


def test_cli_validate_of_a_non_onnx_file_exits_2(tmp_path, converted):
    result = runner.invoke(app, ["validate", str(converted)])
    assert result.exit_code == 2 and "prernn export" in result.stderr
