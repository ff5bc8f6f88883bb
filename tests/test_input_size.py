"""``--input-size`` / ``--snippet-length``: chosen at convert (or moved at train), recorded, and used downstream.

Every case drives the real CLI on real files: a torchvision MobileNetV2 with seeded random weights
taken through convert → train → export → stream at 112, 160 and 224 pixels, and the sizes a
network does not run at (one error line, exit 2, nothing written).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torchvision
from typer.testing import CliRunner

from helpers import FAST, SAMPLES, write_frame_folder
from prernn_cli.checkpoint import load_converted
from prernn_cli.checkpoint.converted import read_spec
from prernn_cli.cli import app
from prernn_cli.data import read_clip_steps

runner = CliRunner()
WIDE = {"COLUMNS": "200"}  # no wrapping: an error stays on one line
CPU_RUN = ["--device", "cpu", "--workers", "0"]


def error_line(result, code: int = 2) -> str:
    """The one line on stderr of a command that failed with ``code`` (no traceback anywhere)."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    return lines[0]


def noise_clip(folder: Path, height: int, width: int, frames: int = 3, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    write_frame_folder(folder, [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(frames)])
    return folder


@pytest.fixture(scope="module")
def mobilenet(tmp_path_factory) -> Path:
    """A torchvision ``mobilenet_v2`` state_dict with random weights drawn after ``torch.manual_seed(0)``."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("mobilenet") / "mobilenet_v2.pt"
    torch.save(torchvision.models.mobilenet_v2().state_dict(), path)
    return path


# ---------------------------------------------------------------- convert → train → export → stream


def _convert_and_train(mobilenet: Path, tmp_path: Path, size: int) -> Path:
    """Convert features.18.0 at ``size``, train one epoch on four clips larger than that; the trained model."""
    model = tmp_path / f"pregru_{size}.safetensors"
    result = runner.invoke(
        app,
        ["convert", str(mobilenet), "--arch", "mobilenet_v2", "--layer", "features.18.0", "--cell", "gru", "--sih",
         "--num-classes", "2", "--input-size", str(size), "-o", str(model), "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["input"]["size"] == [size, size]
    assert read_spec(model).input.size == (size, size)
    clips = tmp_path / "clips"
    for index, name in enumerate(("left", "left", "right", "right")):  # larger than the model: resized, cropped
        noise_clip(clips / name / f"clip{index}", size + 8, size + 16, seed=index)
    run = tmp_path / "run"
    result = runner.invoke(
        app,
        ["train", str(model), "--data", str(clips), "-o", str(run), "--epochs", "1", "--steps", "2",
         "--batch-size", "2", "--val-fraction", "0.5", *CPU_RUN, "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    trained = run / "last.safetensors"
    assert read_spec(trained).input.size == (size, size)
    return trained


@pytest.mark.slow
@pytest.mark.parametrize("size", [112, 160, 224])
def test_mobilenet_v2_runs_convert_train_export_stream_at_the_chosen_size(mobilenet, tmp_path, size):
    trained = _convert_and_train(mobilenet, tmp_path, size)
    exported = tmp_path / "model.onnx"
    result = runner.invoke(app, ["export", str(trained), "--steps", "2", "--batch", "1", "-o", str(exported)])
    assert result.exit_code == 0, result.output
    frames = next(value for value in onnx.load(str(exported)).graph.input if value.name == "frames")
    dims = [dim.dim_value or dim.dim_param for dim in frames.type.tensor_type.shape.dim]
    assert dims[1:] == [2, 3, size, size]

    clip = noise_clip(tmp_path / "stream_clip", size, size, frames=3, seed=7)
    result = runner.invoke(app, ["stream", str(exported), str(clip), "--provider", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    predictions = json.loads(result.stdout)["predictions"]
    model = load_converted(trained)
    steps, _ = read_clip_steps(clip, model.spec.input)
    with torch.no_grad():
        probabilities = model(torch.from_numpy(steps).unsqueeze(0))[0][0].softmax(-1)
    assert len(predictions) == 3  # 3 frames: a full chunk of 2 steps, then a padded one, state carried
    for prediction in predictions:
        expected = probabilities[prediction["step"]]
        assert abs(float(expected[prediction["index"]]) - prediction["score"]) < 1e-4
        assert float(expected.max()) - float(expected[prediction["index"]]) < 1e-4  # the top class, up to ties


# ---------------------------------------------------------------- what each size shows and allows


def test_inspect_at_112_shows_the_112_pixel_shapes(mobilenet):
    result = runner.invoke(app, ["inspect", str(mobilenet), "--input-size", "112", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["input"]["size"] == [112, 112]
    shapes = {layer["name"]: (layer["input_shape"], layer["output_shape"]) for layer in report["layers"]}
    assert shapes["features.0.0"] == ([3, 112, 112], [32, 56, 56])
    assert shapes["features.18.0"] == ([320, 4, 4], [1280, 4, 4])  # 7×7 at 224
    assert "features.18.0" in report["convertible"]
    text = runner.invoke(app, ["inspect", str(mobilenet), "--input-size", "112"], env=WIDE).stdout
    assert "3×112×112 per step" in text and "320×4×4" in text


def test_table3_is_the_same_at_any_size_the_layer_holds():
    def table(*size: str) -> list:
        result = runner.invoke(app, ["params", "--arch", "mobilenet_v2", "--layer", "features.18.0", *size, "--json"])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)["cells"]

    assert table("--input-size", "112") == table() == table("--input-size", "160x128")


def test_snippet_length_sizes_a_3d_backbone_and_is_refused_for_a_2d_one(tmp_path):
    result = runner.invoke(app, ["params", "--arch", "r3d_18", "--layer", "layer4.1.conv2.0", "--snippet-length", "8"])
    assert result.exit_code == 0, result.output
    line = error_line(
        runner.invoke(app, ["params", "--arch", "c3d", "--layer", "fc6", "--snippet-length", "8"], env=WIDE)
    )
    assert "snippets of 8 112×112 frames" in line and "c3d runs on snippets of 16" in line
    output = tmp_path / "m.safetensors"
    args = ["convert", str(SAMPLES / "digit_vgg.pt"), "--layer", "fc6", "--snippet-length", "8", "-o", str(output)]
    assert "--snippet-length is for 3D backbones" in error_line(runner.invoke(app, args, env=WIDE))
    assert not output.exists()


def test_a_size_that_breaks_an_fc_layer_exits_2_in_one_line(tmp_path):
    output = tmp_path / "vgg48.safetensors"
    args = ["convert", str(SAMPLES / "digit_vgg.pt"), "--layer", "fc6", "--input-size", "48", "-o", str(output)]
    line = error_line(runner.invoke(app, args, env=WIDE))
    assert "48×48" in line and "classifier.0 (Linear) needs 1024 inputs per frame and gets 2304" in line
    assert not output.exists() and not list(tmp_path.iterdir())
    for command in (["inspect", str(SAMPLES / "digit_vgg.pt")], ["params", str(SAMPLES / "digit_vgg.pt"), "-l", "fc6"]):
        assert "48×48" in error_line(runner.invoke(app, [*command, "--input-size", "48"], env=WIDE))


@pytest.mark.parametrize("value", ["0", "3x", "axb", "112x112x3", "5000", "9" * 5000])
def test_a_malformed_or_absurd_size_exits_2_in_one_line(value):
    line = error_line(runner.invoke(app, ["inspect", str(SAMPLES / "digit_vgg.pt"), "--input-size", value], env=WIDE))
    assert "--input-size" in line


# ---------------------------------------------------------------- train --input-size


def test_train_refuses_a_size_the_converted_network_cannot_take(model_file, small_clip_tree, tmp_path):
    run = tmp_path / "run"
    args = ["train", str(model_file), "--data", str(small_clip_tree), "-o", str(run), "--input-size", "48", *FAST]
    line = error_line(runner.invoke(app, args, env=WIDE))
    assert "48×48" in line and "classifier.0" in line
    assert not run.exists()


def test_train_moves_a_conv_model_to_another_size_and_resume_names_it(converted_file, small_clip_tree, tmp_path):
    model = converted_file(arch="digit_resnet", layer="layer3.1.conv2")
    run = tmp_path / "run"
    args = ["train", str(model), "--data", str(small_clip_tree), "-o", str(run), "--epochs", "2", "--max-steps", "1"]
    result = runner.invoke(app, [*args, *FAST, "--input-size", "48"])
    assert result.exit_code == 0, result.output
    trained = load_converted(run / "last.safetensors")
    assert trained.spec.input.size == (48, 48)
    original = load_converted(model)
    assert {k: v.shape for k, v in trained.state_dict().items()} == {
        k: v.shape for k, v in original.state_dict().items()
    }
    assert trained(torch.zeros(1, 2, 3, 48, 48))[0].shape == (1, 2, 2)
    line = error_line(runner.invoke(app, [*args, *FAST, "--resume", str(run)], env=WIDE))  # resumed at 32: refused
    assert "--input-size 48x48" in line
