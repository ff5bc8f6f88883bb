"""Late fusion: ``prernn fuse`` averages the streams' clip probabilities; ``prernn export --fuse`` makes one graph."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from typer.testing import CliRunner

from helpers import FAST, REPO, make_clip_tree
from prernn_cli.checkpoint import load_converted, save_converted
from prernn_cli.cli import app
from prernn_cli.errors import UserInputError
from prernn_cli.fusion import parse_weights
from prernn_cli.spec import CellType

runner = CliRunner()


def _tree(root: Path, video: bool = False) -> Path:
    """``root/{train,val}/{left,right}/clip{0,1}``: squares moving left or right."""
    for split in ("train", "val"):
        make_clip_tree(root / split, per_class=2, num_frames=6, video=video)
    return root


def _train(model: Path, data: Path, run: Path) -> Path:
    args = ["train", str(model), "--data", str(data), "-o", str(run), *FAST, "--epochs", "1", "--clip-pool", "last"]
    trained = runner.invoke(app, args)
    assert trained.exit_code == 0, trained.output
    return run / "best.safetensors"


@pytest.fixture(scope="module")
def streams(tmp_path_factory, converted_file) -> dict:
    """Two trained streams: a PreGRU-SIH on frame folders, a PreLSTM on the same clips as ffv1 videos."""
    root = tmp_path_factory.mktemp("fusion")
    data = [_tree(root / "frames"), _tree(root / "videos", video=True)]
    models = [
        _train(converted_file(), data[0], root / "run_gru"),
        _train(converted_file(cell=CellType.LSTM, sih=False), data[1], root / "run_lstm"),
    ]
    return {"root": root, "data": data, "models": models}


def _fuse(streams: dict, *extra: str, data: list[Path] | None = None, models: list[Path] | None = None):
    models = models or streams["models"]
    data_args = [arg for folder in data or streams["data"] for arg in ("--data", str(folder))]
    return runner.invoke(app, ["fuse", *map(str, models), *data_args, "--device", "cpu", *extra])


def _one_line_error(result, exit_code: int = 2) -> str:
    assert result.exit_code == exit_code, result.output
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    return result.stderr


# ---------------------------------------------------------------- the arithmetic


def test_weights_are_normalised_to_sum_to_one():
    assert parse_weights(None, 3) == pytest.approx((1 / 3, 1 / 3, 1 / 3))
    assert parse_weights("3,1", 2) == pytest.approx((0.75, 0.25))
    assert parse_weights("0,2.5", 2) == pytest.approx((0.0, 1.0))
    for bad in ("1", "1,-1", "0,0", "a,b", "1,nan"):
        with pytest.raises(UserInputError, match="--weights"):
            parse_weights(bad, 2)


def test_fused_scores_are_the_weighted_mean_of_each_streams_evaluate_report(streams, tmp_path):
    per_stream = []
    for model, data in zip(streams["models"], streams["data"]):
        evaluated = runner.invoke(app, ["evaluate", str(model), "--data", str(data), "--device", "cpu", "--json"])
        assert evaluated.exit_code == 0, evaluated.output
        report = json.loads(evaluated.stdout)
        per_stream.append((report, {clip["clip"]: clip for clip in report["per_clip"]}))
    assert (
        set(per_stream[0][1])
        == set(per_stream[1][1])
        == {f"val/{c}/clip{k}" for c in ("left", "right") for k in (0, 1)}
    )

    fused = _fuse(streams, "--weights", "3,1", "-o", str(tmp_path / "fused"), "--json")
    assert fused.exit_code == 0, fused.output
    document = json.loads(fused.stdout)
    assert document["weights"] == pytest.approx([0.75, 0.25])
    report = json.loads((tmp_path / "fused" / "fusion_val.json").read_text())
    assert document["files"]["report_json"] == str(tmp_path / "fused" / "fusion_val.json")
    correct = 0
    for clip in report["per_clip"]:
        first, second = (np.asarray(stream[clip["clip"]]["probabilities"]) for _, stream in per_stream)
        assert sum(first) == pytest.approx(1.0) and sum(second) == pytest.approx(1.0)
        np.testing.assert_allclose(clip["probabilities"], 0.75 * first + 0.25 * second, rtol=1e-9, atol=1e-12)
        assert clip["label"] == per_stream[0][1][clip["clip"]]["label"]
        correct += clip["predicted"] == clip["label"]
    assert document["fused"]["accuracy"] == correct / 4 and document["fused"]["clips"] == 4
    for stream, (evaluated, _) in zip(document["streams"], per_stream):
        assert stream["metrics"] == evaluated["metrics"]


def test_fuse_prints_each_stream_beside_the_fused_metric(streams):
    result = _fuse(streams)
    assert result.exit_code == 0, result.output
    assert "late fusion (val)" in result.stdout and "fused" in result.stdout
    assert result.stdout.count("accuracy") >= 1 and result.stderr == ""


# ---------------------------------------------------------------- mistakes: one line, exit 2, nothing written


def test_streams_with_different_clips_fail_naming_the_missing_ones(streams, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(streams["data"][0], partial)
    shutil.rmtree(partial / "val" / "left" / "clip1")
    result = _fuse(streams, "-o", str(tmp_path / "out"), data=[partial, streams["data"][1]])
    error = _one_line_error(result)
    assert "val/left/clip1" in error and "same clip" in error
    assert not (tmp_path / "out").exists()


def test_models_with_different_classes_fail(streams, tmp_path):
    model = load_converted(streams["models"][1])
    model.spec = model.spec.with_updates(class_names=("west", "east"))
    save_converted(model, tmp_path / "west_east.safetensors")
    error = _one_line_error(_fuse(streams, models=[streams["models"][0], tmp_path / "west_east.safetensors"]))
    assert "['west', 'east']" in error and "same classes" in error


def test_a_regression_or_untrained_model_is_refused(streams, tmp_path, converted_file):
    model = load_converted(streams["models"][1])
    model.spec = model.spec.with_updates(task="regress")
    save_converted(model, tmp_path / "regress.safetensors")
    error = _one_line_error(_fuse(streams, models=[streams["models"][0], tmp_path / "regress.safetensors"]))
    assert "regress model" in error and "classification" in error
    error = _one_line_error(_fuse(streams, models=[streams["models"][0], converted_file()]))
    assert "never trained" in error


@pytest.mark.parametrize(
    "extra, message",
    [(["--weights", "1,2,3"], "one weight per model"), (["--weights", "1,-2"], "non-negative")],
)
def test_bad_weights_fail_before_anything_runs(streams, extra, message):
    assert message in _one_line_error(_fuse(streams, *extra))


def test_one_data_folder_per_model_and_at_least_two_models(streams):
    assert "one --data per model" in _one_line_error(_fuse(streams, data=streams["data"][:1]))
    one = _fuse(streams, models=streams["models"][:1], data=streams["data"][:1])
    assert "at least two models" in _one_line_error(one)


def test_a_report_folder_over_an_input_is_refused(streams):
    result = _fuse(streams, "-o", str(streams["data"][0]))
    _one_line_error(result)
    assert not (streams["data"][0] / "fusion_val.json").exists()


# ---------------------------------------------------------------- the fused ONNX graph


def test_several_models_export_only_with_fuse(streams, tmp_path):
    models = [str(m) for m in streams["models"]]
    assert "--fuse" in _one_line_error(runner.invoke(app, ["export", *models, "-o", str(tmp_path / "f.onnx")]))
    half = runner.invoke(app, ["export", *models, "--fuse", "--half", "-o", str(tmp_path / "f.onnx")])
    assert "--half" in _one_line_error(half)
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_fused_onnx_carries_every_streams_state_and_matches_torch(streams, tmp_path):
    output = tmp_path / "fused.onnx"
    models = [str(m) for m in streams["models"]]
    exported = runner.invoke(
        app, ["export", *models, "--fuse", "--weights", "1,3", "--steps", "2", "-o", str(output), "--json"]
    )
    assert exported.exit_code == 0, exported.output
    document = json.loads(exported.stdout)
    assert document["validation"]["passed"] and {c["check"] for c in document["validation"]["comparisons"]} == {
        "random",
        "chunks",
    }
    session = ort.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    inputs = {i.name: i.shape for i in session.get_inputs()}
    outputs = [o.name for o in session.get_outputs()]
    assert list(inputs) == ["stream0.frames", "stream0.h_0.0", "stream1.frames", "stream1.h_0.0", "stream1.c_0.0"]
    assert outputs == ["probabilities", "stream0.h_n.0", "stream1.h_n.0", "stream1.c_n.0"]
    assert inputs["stream0.frames"] == ["batch", 2, 3, 32, 32]
    metadata = session.get_modelmeta().custom_metadata_map
    assert json.loads(metadata["prernn_fusion"])["weights"] == pytest.approx([0.25, 0.75])

    # two 2-step calls carrying every stream's state == one 4-step PyTorch run of each model
    torch_models = [load_converted(m).eval() for m in models]
    generator = torch.Generator().manual_seed(0)
    frames = [torch.randn(2, 4, 3, 32, 32, generator=generator) for _ in torch_models]
    with torch.no_grad():
        runs = [model(f) for model, f in zip(torch_models, frames)]
    expected = 0.25 * torch.softmax(runs[0][0], -1) + 0.75 * torch.softmax(runs[1][0], -1)
    state = {name: np.zeros((2, 256), dtype=np.float32) for name in inputs if ".h_0." in name or ".c_0." in name}
    got = []
    for chunk in (slice(0, 2), slice(2, 4)):
        feeds = {"stream0.frames": frames[0][:, chunk].numpy(), "stream1.frames": frames[1][:, chunk].numpy(), **state}
        result = dict(zip(outputs, session.run(outputs, feeds)))
        got.append(result["probabilities"])
        state = {name.replace("_n.", "_0."): value for name, value in result.items() if name != "probabilities"}
    np.testing.assert_allclose(np.concatenate(got, axis=1), expected.numpy(), atol=1e-5)
    np.testing.assert_allclose(state["stream0.h_0.0"], runs[0][1][0].numpy(), atol=1e-5)
    np.testing.assert_allclose(state["stream1.c_0.0"], runs[1][1][0][1].numpy(), atol=1e-5)
    # the single-model commands say what the file is instead of reading it as one model
    assert "late-fusion graph" in _one_line_error(runner.invoke(app, ["validate", str(output)]))


# ---------------------------------------------------------------- one stream alone is ambiguous, the fused streams are not


@pytest.mark.slow
def test_fusion_tells_what_neither_stream_can_alone(tmp_path):
    """The README's fusion demo: 4 classes (a, b); stream 1 sees a, stream 2 sees b.

    Shorter training (fewer epochs, T 4) learnt the directions on some runs and not on others.
    """
    script = REPO / "benchmarks" / "fusion_demo.py"
    args = ["--out", str(tmp_path / "demo")]
    done = subprocess.run([sys.executable, str(script), *args], cwd=REPO, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["val_clips"] == 40
    # each stream learnt its own half of the label, and alone cannot do better than about half the clips
    assert min(result["stream_direction_accuracy"]) >= 0.85, result
    assert max(result["stream_accuracy"]) <= 0.6, result
    assert result["fused_accuracy"] >= max(result["stream_accuracy"]) + 0.25, result
