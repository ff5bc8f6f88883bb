"""Streaming an exported model with onnxruntime: provider choice, state carried, predictions."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import onnx
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from helpers import SAMPLES, convert_architecture
from prernn_cli.cli import app
from prernn_cli.data import Clip, ClipDataset, Task, read_clip_steps
from prernn_cli.errors import DataError, UserInputError
from prernn_cli.export import OnnxExportSpec, export_onnx
from prernn_cli.stream import OnnxStreamer, Provider, choose_provider, stream_clip

runner = CliRunner()
CLASSES = [f"digit{i}" for i in range(10)]


def write_png_clip(folder: Path, frames: int, size=(32, 32), mode="RGB", seed: int = 0) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    channels = 1 if mode == "L" else 3
    for i in range(frames):
        pixels = rng.integers(0, 256, (*size, channels), dtype=np.uint8)
        Image.fromarray(pixels[..., 0] if mode == "L" else pixels, mode).save(folder / f"frame_{i:04d}.png")
    return folder


def write_mp4_clip(path: Path, frames: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264rgb", rate=8, options={"crf": "0"})
        stream.width = stream.height = 32
        stream.pix_fmt = "rgb24"
        for _ in range(frames):
            pixels = np.repeat(np.repeat(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), 4, 0), 4, 1)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode())
    return path


@pytest.fixture(scope="module")
def vgg(tmp_path_factory):
    """A PreGRU (fc6) on the VGG-style net, exported as a step model (T=1) and a chunk model (T=3)."""
    folder = tmp_path_factory.mktemp("stream")
    model = convert_architecture("digit_vgg", ["classifier.0"], "gru", class_names=CLASSES).eval()
    step = export_onnx(model, folder / "step.onnx", OnnxExportSpec.create(model.spec, steps=1)).path
    chunk = export_onnx(model, folder / "chunk.onnx", OnnxExportSpec.create(model.spec, steps=3)).path
    return model, step, chunk, folder


@pytest.fixture(scope="module")
def png_clip(tmp_path_factory):
    return write_png_clip(tmp_path_factory.mktemp("clips") / "clip", frames=7)


def torch_predictions(model, steps: np.ndarray) -> torch.Tensor:
    with torch.no_grad():
        outputs, _ = model(torch.from_numpy(steps).unsqueeze(0))
    return outputs[0]


# ---------------------------------------------------------------- providers


def test_auto_provider_picks_cuda_only_when_a_gpu_is_usable():
    import onnxruntime as ort

    choice = choose_provider("auto")
    usable = torch.cuda.is_available() and "CUDAExecutionProvider" in ort.get_available_providers()
    assert choice.provider is (Provider.CUDA if usable else Provider.CPU)
    assert choice.device == ("cuda" if usable else "cpu")
    assert choice.reason.startswith("CUDA" if usable else "CPU")
    if not torch.cuda.is_available():
        assert "torch.cuda.is_available() is False" in choice.reason


def test_cpu_provider_and_unusable_gpu_request():
    assert choose_provider(Provider.CPU).providers == ("CPUExecutionProvider",)
    if torch.cuda.is_available():
        pytest.skip("a GPU is usable here")
    for name in ("cuda", "tensorrt"):
        with pytest.raises(UserInputError, match="--provider cpu"):
            choose_provider(name)


# ---------------------------------------------------------------- predictions


@pytest.mark.parametrize("which", ["step", "chunk"])
def test_stream_equals_pytorch_on_the_whole_clip(vgg, png_clip, which):
    model, step, chunk, _ = vgg
    path = step if which == "step" else chunk  # 7 frames: the chunk model's last chunk is padded
    steps, count = read_clip_steps(png_clip, model.spec.input)
    assert steps.shape == (7, 3, 32, 32) and count == 7
    expected = torch_predictions(model, steps)
    result = stream_clip(path, png_clip, "cpu")
    assert [p.step for p in result.predictions] == list(range(7))
    assert [p.index for p in result.predictions] == expected.argmax(-1).tolist()
    assert [p.label for p in result.predictions] == [CLASSES[i] for i in expected.argmax(-1).tolist()]
    np.testing.assert_allclose(
        [p.score for p in result.predictions], expected.softmax(-1).max(-1).values.numpy(), atol=1e-5
    )
    streamer = OnnxStreamer(path, "cpu")
    logits = np.concatenate(list(streamer.run(steps)))
    np.testing.assert_allclose(logits, expected.numpy(), atol=1e-4, rtol=1e-3)


def test_io_binding_and_plain_runs_agree(vgg, png_clip):
    model, step, _, _ = vgg
    steps, _ = read_clip_steps(png_clip, model.spec.input)
    bound = np.concatenate(list(OnnxStreamer(step, "cpu", io_binding=True).run(steps)))
    plain = np.concatenate(list(OnnxStreamer(step, "cpu", io_binding=False).run(steps)))
    np.testing.assert_array_equal(bound, plain)


def test_reset_starts_a_new_stream(vgg, png_clip):
    model, step, _, _ = vgg
    steps, _ = read_clip_steps(png_clip, model.spec.input)
    streamer = OnnxStreamer(step, "cpu")
    first = np.concatenate(list(streamer.run(steps[:3])))
    streamer.reset()
    again = np.concatenate(list(streamer.run(steps[:3])))
    np.testing.assert_array_equal(first, again)


def test_stream_mp4_snippets_of_a_3d_model(tmp_path):
    model = convert_architecture("digit_c3d", ["fc6"], "lstm", class_names=CLASSES).eval()
    path = export_onnx(model, tmp_path / "c3d.onnx", OnnxExportSpec.create(model.spec, steps=1)).path
    video = write_mp4_clip(tmp_path / "clip.mp4", frames=10)  # 2 snippets of 4, 2 frames left over
    steps, count = read_clip_steps(video, model.spec.input)
    assert steps.shape == (2, 3, 4, 32, 32) and count == 10
    expected = torch_predictions(model, steps)
    result = stream_clip(path, video, "auto")
    assert [p.frames for p in result.predictions] == [(0, 3), (4, 7)] and result.dropped_frames == 2
    assert [p.index for p in result.predictions] == expected.argmax(-1).tolist()


def test_stream_matches_the_evaluate_data_path_on_a_shipped_clip(vgg):
    """The shipped 16-frame clips, read the way `prernn evaluate` reads them (ClipDataset, uniform T=16)."""
    clips = sorted((SAMPLES / "clips" / "val").glob("*/*"))
    if not clips:
        pytest.skip("sample_models/clips not built yet (sample_models/make_samples.py)")
    model, step, _, _ = vgg
    clip = clips[0]
    item = ClipDataset([Clip(clip, label=0)], model.spec.input, Task.CLASSIFY, steps=16)[0]
    with torch.no_grad():
        expected = model(item["frames"].unsqueeze(0))[0][0]
    result = stream_clip(step, clip, "cpu")
    assert [p.index for p in result.predictions] == expected.argmax(-1).tolist()


# ---------------------------------------------------------------- CLI


def test_cli_stream_text_and_json(vgg, png_clip):
    _, _, chunk, _ = vgg
    result = runner.invoke(app, ["stream", str(chunk), str(png_clip)])
    assert result.exit_code == 0, result.stderr
    assert "provider: cpu" in result.stdout and "step    6" in result.stdout and "digit" in result.stdout
    result = runner.invoke(app, ["stream", str(chunk), str(png_clip), "--json"])
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)  # one JSON document, as every --json prints
    records = document["predictions"]
    assert [r["step"] for r in records] == list(range(7))
    assert set(records[0]) == {"step", "frames", "class", "index", "score"}
    assert document["provider"]["provider"] == "cpu" and document["num_frames"] == 7


@pytest.mark.parametrize(
    "size, mode, needle",
    [((28, 28), "RGB", "3×28×28"), ((32, 32), "L", "1×32×32")],
    ids=["wrong-size", "wrong-channels"],
)
def test_cli_stream_frames_that_do_not_fit_exit_2(vgg, tmp_path, size, mode, needle):
    _, step, _, _ = vgg
    clip = write_png_clip(tmp_path / "bad", frames=3, size=size, mode=mode)
    result = runner.invoke(app, ["stream", str(step), str(clip)])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "expects 3×32×32" in lines[0], result.stderr
    assert result.stdout == ""


def test_resize_makes_frames_fit(vgg, tmp_path):
    model, step, _, _ = vgg
    clip = write_png_clip(tmp_path / "big", frames=2, size=(40, 48), mode="L")
    with pytest.raises(DataError, match="--resize"):
        read_clip_steps(clip, model.spec.input)
    result = stream_clip(step, clip, "cpu", resize=True)
    assert len(result.predictions) == 2


def test_cli_stream_bad_inputs_exit_2(vgg, png_clip, tmp_path):
    model, step, _, folder = vgg
    result = runner.invoke(app, ["stream", str(step), str(png_clip), "--provider", "gpu"])
    assert result.exit_code == 2 and "--provider" in result.stderr
    not_onnx = tmp_path / "model.onnx"
    not_onnx.write_text("not a model")
    result = runner.invoke(app, ["stream", str(not_onnx), str(png_clip)])
    assert result.exit_code == 2 and "prernn export" in result.stderr
    result = runner.invoke(app, ["stream", str(step), str(tmp_path / "missing")])
    assert result.exit_code == 2 and "does not exist" in result.stderr


@pytest.mark.parametrize("where", ["dotdot", "absolute"])
def test_cli_stream_refuses_external_data_outside_the_folder_exit_2(vgg, png_clip, tmp_path, where):
    _, step, _, _ = vgg
    folder = tmp_path / "model"
    folder.mkdir()
    local = folder / "step.onnx"
    onnx.save(onnx.load(str(step)), str(local), save_as_external_data=True, location="weights.bin")
    assert runner.invoke(app, ["stream", str(local), str(png_clip)]).exit_code == 0  # beside it: fine
    secret = tmp_path / "secret.bin"
    secret.write_bytes((folder / "weights.bin").read_bytes())
    proto = onnx.load(str(local), load_external_data=False)
    location = "../secret.bin" if where == "dotdot" else str(secret)
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    hostile = folder / "hostile.onnx"
    hostile.write_bytes(proto.SerializeToString())
    result = runner.invoke(app, ["stream", str(hostile), str(png_clip)])
    assert result.exit_code == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "outside the model's folder" in lines[0] and location in lines[0], result.stderr
    assert result.stdout == "" and "Traceback" not in result.stderr
