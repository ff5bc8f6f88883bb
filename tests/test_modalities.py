"""Depth and optical-flow streams: readers, computed flow and its cache, cross-modality init, the CLI end to end."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from helpers import FAST, SAMPLES
from prernn_cli.architectures import architecture_input, build_architecture
from prernn_cli.checkpoint import load_converted
from prernn_cli.checkpoint.converted import read_spec
from prernn_cli.cli import app
from prernn_cli.data import (
    Clip,
    FrameCache,
    dense_windows,
    preprocess,
    read_clip_frames,
    read_clip_steps,
    spec_steps,
    to_tensor,
)
from prernn_cli.data.flow import dequantise_flow
from prernn_cli.data.optical_flow import compute_flow
from prernn_cli.data.trunk_cache import TrunkPass
from prernn_cli.modality import modality_input
from prernn_cli.spec import FrameKind, InputSpec, Modality, ModelSpec
from prernn_cli.surgery.first_conv import first_conv_name, with_input_channels

runner = CliRunner()
WIDE = {"COLUMNS": "200"}
SHIFT = (1.5, -0.75)  # (x, y) pixels of the synthetic motion


def error_line(result) -> str:
    """The only non-blank line on stderr (and no traceback anywhere)."""
    assert "Traceback" not in result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def textured(size: int, shift: tuple[float, float] = (0.0, 0.0), seed: int = 0) -> np.ndarray:
    """A smooth random texture (H×W uint8), its content moved by ``shift`` pixels (bilinear sampling)."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((size // 4 + 8, size // 4 + 8)).astype(np.float32) * 255
    big = np.asarray(Image.fromarray(coarse).resize((4 * coarse.shape[1], 4 * coarse.shape[0]), Image.BICUBIC))
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    ys, xs = ys + 12 - shift[1], xs + 12 - shift[0]  # content at x moves to x + shift (|shift| <= 12)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    fy, fx = ys - y0, xs - x0
    value = (
        big[y0, x0] * (1 - fy) * (1 - fx)
        + big[y0, x0 + 1] * (1 - fy) * fx
        + big[y0 + 1, x0] * fy * (1 - fx)
        + big[y0 + 1, x0 + 1] * fy * fx
    )
    return np.clip(np.rint(value), 0, 255).astype(np.uint8)


def moving_clip(folder: Path, frames: int, size: int = 32) -> Path:
    """An RGB frame folder whose texture moves by :data:`SHIFT` per frame."""
    folder.mkdir(parents=True)
    for i in range(frames):
        grey = textured(size, (SHIFT[0] * i, SHIFT[1] * i))
        Image.fromarray(np.repeat(grey[..., None], 3, axis=-1)).save(folder / f"frame_{i:04d}.png")
    return folder


def depth_spec(size: int = 8) -> InputSpec:
    return InputSpec(modality=Modality.DEPTH, channels=1, size=(size, size), mean=(0.0,), std=(1.0,))


def flow_spec(size: int = 32, stack: int | None = 2) -> InputSpec:
    own = InputSpec(size=(size, size))
    return modality_input(own, Modality.FLOW, flow_stack=stack)


# ---------------------------------------------------------------- readers


@pytest.mark.parametrize("bits", [8, 16])
def test_depth_folder_is_scaled_to_unit_range_by_its_bit_depth(bits, tmp_path):
    top = 2**bits - 1
    values = np.linspace(0, top, 64).round().astype(np.uint16 if bits == 16 else np.uint8).reshape(8, 8)
    folder = tmp_path / "clip"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.roll(values, i)).save(folder / f"frame_{i:04d}.png")
    spec = depth_spec()
    frames, count = read_clip_frames(folder, spec)
    assert count == 3 and frames[0].dtype == values.dtype and frames[0].shape == (8, 8, 1)
    tensor = preprocess(frames, spec)  # mean 0, std 1: the scaled depth itself
    assert tensor.shape == (3, 1, 8, 8)
    expected = torch.from_numpy(np.stack([np.roll(values, i) for i in range(3)]).astype(np.float64) / top)
    torch.testing.assert_close(tensor[:, 0].double(), expected, atol=1e-6, rtol=0)


def test_16_bit_depth_keeps_its_precision_through_resizing(tmp_path):
    folder = tmp_path / "clip"
    folder.mkdir()
    value = 1000  # 1000/65535: in 8 bits it would round to 4/255 (0.0157 vs 0.0153)
    Image.fromarray(np.full((16, 16), value, dtype=np.uint16)).save(folder / "frame_0000.png")
    tensor = preprocess(read_clip_frames(folder, depth_spec())[0], depth_spec())
    torch.testing.assert_close(tensor, torch.full((1, 1, 8, 8), value / 65535), atol=1e-6, rtol=0)


def write_flow_folder(clip: Path, x: np.ndarray, y: np.ndarray, frames: int = 3, suffix: str = ".jpg") -> Path:
    for name, values in (("flow_x", x), ("flow_y", y)):
        (clip / name).mkdir(parents=True)
        for i in range(frames):
            Image.fromarray(values).save(clip / name / f"frame_{i:04d}{suffix}", quality=95)
    return clip


def test_flow_folders_decode_to_displacement_over_bound(tmp_path):
    ramp = np.tile(np.linspace(40, 220, 32).round().astype(np.uint8), (32, 1))  # smooth: JPEG keeps it closely
    clip = write_flow_folder(tmp_path / "clip", ramp, 255 - ramp)
    spec = flow_spec(stack=3)
    frames, count = read_clip_frames(clip, spec)
    assert count == 3 and frames[0].shape == (32, 32, 2) and frames[0].dtype == np.uint8
    assert np.abs(frames[0][..., 0].astype(int) - ramp).max() <= 3  # JPEG tolerance
    assert np.abs(frames[0][..., 1].astype(int) - (255 - ramp)).max() <= 3
    steps = spec_steps(preprocess(frames, spec), spec)  # one step of 3 stacked frames: 6 channels
    assert steps.shape == (1, 6, 32, 32)
    pixels = dequantise_flow(ramp.astype(np.float32), spec.flow_bound) / spec.flow_bound
    torch.testing.assert_close(steps[0, 0], torch.from_numpy(pixels), atol=3 / 127.5, rtol=0)
    torch.testing.assert_close(steps[0, 1], torch.from_numpy(-pixels), atol=3 / 127.5, rtol=0)


def test_flow_stack_interleaves_x_and_y_of_consecutive_frames():
    spec = flow_spec(size=2, stack=3)
    frames = torch.arange(6 * 2, dtype=torch.float32).view(6, 2, 1, 1).expand(6, 2, 2, 2)  # frame f: x=2f, y=2f+1
    steps = spec_steps(frames, spec)
    assert steps.shape == (2, 6, 2, 2)
    assert steps[:, :, 0, 0].tolist() == [[0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11]]  # x1, y1, x2, y2, x3, y3


def test_trunk_cache_stacks_flow_steps_as_training_does():
    spec = flow_spec(size=8, stack=3)
    frames = np.random.default_rng(0).integers(0, 256, (6, 8, 8, 2), dtype=np.uint8)
    runner_ = TrunkPass(nn.Identity(), spec, torch.device("cpu"), amp=False, chunk=2)
    cached = torch.cat([steps for _, steps in runner_.steps(frames, None, "clip")])  # every start frame
    assert cached.shape == (4, 6, 8, 8)
    for start in range(4):
        expected = spec_steps(to_tensor(frames[start : start + 3], spec), spec)[0]
        torch.testing.assert_close(cached[start], expected)


def test_flipped_flow_points_the_other_way_along_x():
    spec = flow_spec(size=4, stack=1)
    frames = np.random.default_rng(0).integers(0, 256, (1, 4, 4, 2), dtype=np.uint8)
    plain, flipped = to_tensor(frames, spec), to_tensor(frames, spec, flip=True)
    torch.testing.assert_close(flipped[:, 0], -plain[:, 0].flip(-1))  # x mirrored and negated
    torch.testing.assert_close(flipped[:, 1], plain[:, 1].flip(-1))  # y only mirrored


# ---------------------------------------------------------------- computed flow


def test_computed_flow_of_a_known_shift_has_a_small_endpoint_error():
    first, second = textured(64), textured(64, SHIFT)
    flow = compute_flow(np.stack([first, second]))[0]
    inner = flow[12:-12, 12:-12]
    error = np.hypot(inner[..., 0] - SHIFT[0], inner[..., 1] - SHIFT[1]).mean()
    assert error < 0.15, error


def test_flow_from_an_rgb_clip_has_one_frame_fewer_and_the_shift(tmp_path):
    clip = moving_clip(tmp_path / "clip", frames=4)
    spec = flow_spec(stack=2)
    frames, count = read_clip_frames(clip, spec)
    assert count == 3 and len(frames) == 3
    pixels = dequantise_flow(np.stack(frames)[:, 8:-8, 8:-8], spec.flow_bound)
    assert abs(pixels[..., 0].mean() - SHIFT[0]) < 0.2 and abs(pixels[..., 1].mean() - SHIFT[1]) < 0.2
    some, _ = read_clip_frames(clip, spec, [2, 0])  # only the frames asked for, in that order
    assert np.array_equal(some[0], frames[2]) and np.array_equal(some[1], frames[0])


def test_dense_windows_count_the_flow_frames_of_an_rgb_clip(tmp_path):
    clip = moving_clip(tmp_path / "clip", frames=9)
    windows, skipped = dense_windows([Clip(clip, 0)], steps=2, snippet=4, spec=flow_spec(stack=4))
    assert skipped == [] and [(w.start, w.num_frames) for w in windows] == [(0, 8)]  # 8 flow frames, one window


def test_computed_flow_is_cached_and_read_back_without_recomputing(tmp_path):
    clip = moving_clip(tmp_path / "clip", frames=4)
    spec = flow_spec(stack=2)
    cache = FrameCache(tmp_path / "cache", spec)
    decoded = []

    def compute(path: Path) -> np.ndarray:
        decoded.append(path)
        return np.stack(read_clip_frames(path, spec)[0])

    first = np.array(cache.frames(clip, compute))
    assert first.shape == (3, 32, 32, 2) and len(decoded) == 1

    def refuse(path: Path) -> np.ndarray:
        raise AssertionError("recomputed a cached clip")

    again = FrameCache(tmp_path / "cache", spec).frames(clip, refuse)  # a new process: the entry on disk
    assert np.array_equal(again, first)
    rgb = FrameCache(tmp_path / "cache", InputSpec(size=(32, 32)))
    assert rgb.path_for(clip) != cache.path_for(clip)  # the RGB frames of the same clip are another entry


# ---------------------------------------------------------------- cross-modality initialisation


class _NamedOutOfOrder(nn.Module):
    """The first convolution on the input is not the first one by name or by registration order."""

    def __init__(self) -> None:
        super().__init__()
        self.a_later = nn.Conv2d(8, 8, 3, padding=1)
        self.z_stem = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        return self.a_later(torch.relu(self.z_stem(x)))


def test_first_conv_is_found_from_the_input_not_by_name():
    assert first_conv_name(_NamedOutOfOrder()) == "z_stem"
    assert first_conv_name(build_architecture("digit_resnet")) == "conv1"
    model = with_input_channels(_NamedOutOfOrder(), 1)
    assert model.z_stem.in_channels == 1 and model.a_later.in_channels == 8


@pytest.mark.parametrize("arch", ["digit_vgg", "digit_c3d"])
def test_cross_modality_init_answers_as_the_rgb_conv_on_the_grey_image(arch):
    rgb = build_architecture(arch).eval()
    name = first_conv_name(rgb)
    conv_rgb = rgb.get_submodule(name)
    depth = with_input_channels(copy.deepcopy(rgb), 1).get_submodule(name)
    flow = with_input_channels(copy.deepcopy(rgb), 6).get_submodule(name)
    shape = (2, *architecture_input(arch).step_shape()[1:])
    grey = torch.rand(2, 1, *shape[1:])
    with torch.no_grad():
        # depth: conv'(g) == conv((g, g, g)) exactly, bias included (filters summed over colour, / C' = 1)
        torch.testing.assert_close(depth(grey), conv_rgb(grey.expand(-1, 3, *shape[1:])), atol=1e-5, rtol=1e-5)
        # flow, C' = 6: conv'(x) == conv of the channel mean m as a grey image (m, m, m)
        stack = torch.rand(2, 6, *shape[1:])
        mean = stack.mean(dim=1, keepdim=True).expand(-1, 3, *shape[1:])
        torch.testing.assert_close(flow(stack), conv_rgb(mean), atol=1e-5, rtol=1e-5)


def test_cross_modality_identity_includes_the_normalisation_difference():
    """A grey image v normalised for depth (0.5, 0.25) is the RGB normalisation of v, per channel, moved by an affine map."""
    rgb = build_architecture("digit_vgg").eval()
    own = architecture_input("digit_vgg")
    spec = modality_input(own, Modality.DEPTH)
    name = first_conv_name(rgb)
    conv_rgb = rgb.get_submodule(name)
    conv_depth = with_input_channels(copy.deepcopy(rgb), 1).get_submodule(name)
    v = np.random.default_rng(0).integers(0, 256, (32, 32), dtype=np.uint8)
    as_depth = preprocess([v[..., None]], spec)  # (v/255 - 0.5) / 0.25
    as_rgb = preprocess([np.repeat(v[..., None], 3, axis=-1)], own)  # (v/255 - m_c) / s_c per channel
    mean, std = torch.tensor(own.mean).view(1, 3, 1, 1), torch.tensor(own.std).view(1, 3, 1, 1)
    scale, offset = std / spec.std[0], (mean - spec.mean[0]) / spec.std[0]
    with torch.no_grad():
        torch.testing.assert_close(
            conv_depth(as_depth), conv_rgb(as_rgb * scale + offset), atol=1e-4, rtol=1e-5
        )  # conv_depth(norm_d(v)) == conv_rgb(s_c/s_d · norm_c(v) + (m_c − m_d)/s_d)


# ---------------------------------------------------------------- the spec


def test_input_spec_round_trips_its_modality_and_old_specs_read_as_rgb():
    for spec in (
        flow_spec(stack=4),
        depth_spec(),
        modality_input(InputSpec(frame_kind=FrameKind.SNIPPET, snippet_length=4), "flow"),
    ):
        assert InputSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    stacked = flow_spec(stack=4)
    assert (stacked.channels, stacked.frames_per_step, stacked.step_shape()) == (8, 4, (8, 32, 32))
    old = InputSpec().to_dict()
    for key in ("modality", "flow_stack", "flow_bound"):
        del old[key]
    assert InputSpec.from_dict(old) == InputSpec() and InputSpec.from_dict(old).modality is Modality.RGB
    wrong = {**stacked.to_dict(), "flow_stack": 3}  # 8 channels are not a stack of 3 flow frames
    with pytest.raises(ValueError, match="6 channels"):
        InputSpec.from_dict(wrong)


def test_a_converted_model_file_from_before_modalities_still_loads(tmp_path, converted_file):
    spec = read_spec(converted_file())
    data = spec.to_dict()
    for key in ("modality", "flow_stack", "flow_bound"):
        data["input"].pop(key)
    assert ModelSpec.from_dict(data).input == spec.input


# ---------------------------------------------------------------- the CLI, end to end


def sample_clips(root: Path, per_class: int = 2) -> list[tuple[str, str, Path]]:
    """A few shipped sample clips: (split, class, folder)."""
    return [
        (split, name, clip)
        for split in ("train", "val")
        for name in ("left", "right")
        for clip in sorted((SAMPLES / "clips" / split / name).iterdir())[:per_class]
    ]


def depth_data(root: Path) -> Path:
    """The sample clips' grey as 16-bit depth PNG folders."""
    for split, name, clip in sample_clips(root):
        out = root / split / name / clip.name
        out.mkdir(parents=True)
        for frame in sorted(clip.iterdir()):
            grey = np.asarray(Image.open(frame).convert("L")).astype(np.uint16) * 257
            Image.fromarray(grey).save(out / frame.name)
    return root


def rgb_data(root: Path) -> Path:
    for split, name, clip in sample_clips(root):
        shutil.copytree(clip, root / split / name / clip.name)
    return root


def convert_stream(tmp_path: Path, *modality: str, arch: str = "digit_vgg.pt", layer: str = "fc6") -> Path:
    output = tmp_path / "stream.safetensors"
    args = ["convert", str(SAMPLES / arch), "--layer", layer, "--cell", "gru", "--num-classes", "2", "-o", str(output)]
    result = runner.invoke(app, [*args, "--modality", *modality])
    assert result.exit_code == 0, result.output
    return output


@pytest.mark.parametrize(
    "modality, shown",
    [
        (("flow", "--flow-stack", "3"), "flow (3 stacked x,y flow frames, bound 20 px): 2D frame, 6×32×32 per step"),
        (("depth",), "depth: 2D frame, 1×32×32 per step (mean 0.5; std 0.25)"),
    ],
)
def test_inspect_shows_the_modality_of_a_stream(tmp_path, modality, shown):
    result = runner.invoke(app, ["inspect", str(convert_stream(tmp_path, *modality))], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and shown in result.output, result.output


@pytest.mark.slow
@pytest.mark.parametrize(
    "modality, make_data, extra",
    [
        (["depth"], depth_data, []),
        (["flow", "--flow-stack", "3"], rgb_data, ["--frame-cache"]),  # flow computed from the RGB clips, cached
    ],
    ids=["depth", "flow"],
)
def test_convert_train_export_stream(modality, make_data, extra, tmp_path):
    data = make_data(tmp_path / "data")
    model = convert_stream(tmp_path, *modality)
    spec = read_spec(model).input
    assert spec.modality.value == modality[0] and spec.channels == (1 if modality[0] == "depth" else 6)
    cache = [*extra, str(tmp_path / "cache")] if extra else []
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", str(model), "-d", str(data), "--epochs", "1", *FAST, "-o", str(run), *cache])
    assert result.exit_code == 0, result.output
    if extra:
        assert len(list((tmp_path / "cache").glob("*.npy"))) == 8  # every clip's flow computed once
    trained = load_converted(run / "best.safetensors")
    assert trained.spec.input == spec
    onnx = tmp_path / "model.onnx"
    result = runner.invoke(app, ["export", str(run / "best.safetensors"), "--onnx", "-o", str(onnx)])
    assert result.exit_code == 0, result.output
    clip = next((data / "val" / "left").iterdir())
    result = runner.invoke(app, ["stream", str(onnx), str(clip), "--json"])
    assert result.exit_code == 0, result.output
    streamed = json.loads(result.stdout)
    steps, count = read_clip_steps(clip, spec)
    assert count == (16 if modality[0] == "depth" else 15)  # flow: one frame fewer than the RGB clip
    assert len(streamed["predictions"]) == steps.shape[0] == count // spec.frames_per_step
    with torch.no_grad():
        expected = trained.eval()(torch.from_numpy(steps).unsqueeze(0))[0][0].softmax(-1).max(-1).values
    got = [p["score"] for p in streamed["predictions"]]
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-4)


def test_3d_flow_stream_takes_two_channels_per_frame(tmp_path):
    model = convert_stream(tmp_path, "flow", arch="digit_c3d.pt")
    spec = read_spec(model).input
    assert (spec.channels, spec.frame_kind, spec.flow_stack) == (2, FrameKind.SNIPPET, None)
    outputs, _ = load_converted(model).eval()(torch.zeros(1, 3, *spec.step_shape()))  # [B, T, C, L, H, W]
    assert outputs.shape == (1, 3, 2)


# ---------------------------------------------------------------- one-line errors


def test_depth_model_refuses_colour_frames(tmp_path):
    model = convert_stream(tmp_path, "depth")
    data = rgb_data(tmp_path / "data")
    run = tmp_path / "run"
    result = runner.invoke(
        app, ["train", str(model), "-d", str(data), "--epochs", "1", *FAST, "-o", str(run)], env=WIDE
    )
    assert result.exit_code == 2
    assert "colour" in error_line(result) and "--modality rgb" in error_line(result)
    assert not (run / "best.safetensors").exists()


def test_flow_folder_without_flow_y_is_refused(tmp_path):
    model = convert_stream(tmp_path, "flow", "--flow-stack", "2")
    for split, name in ((split, name) for split in ("train", "val") for name in ("left", "right")):
        clip = tmp_path / "data" / split / name / "clip0"
        (clip / "flow_x").mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.zeros((32, 32), np.uint8)).save(clip / "flow_x" / f"frame_{i:04d}.jpg")
    result = runner.invoke(app, ["evaluate", str(model), "-d", str(tmp_path / "data"), "--steps", "2"], env=WIDE)
    assert result.exit_code == 2 and "no flow_y/ folder" in error_line(result)


@pytest.mark.parametrize(
    "options, words",
    [
        (["--flow-stack", "4"], "--flow-stack is for --modality flow"),
        (["--modality", "depth", "--flow-bound", "10"], "--flow-bound is for --modality flow"),
        (["--modality", "flow", "--flow-stack", "0"], "--flow-stack"),
    ],
)
def test_flow_options_need_the_flow_modality(options, words, tmp_path):
    output = tmp_path / "m.safetensors"
    args = ["convert", str(SAMPLES / "digit_vgg.pt"), "--layer", "fc6", "-o", str(output), *options]
    result = runner.invoke(app, args, env=WIDE)
    assert result.exit_code == 2 and words in error_line(result)
    assert not output.exists()


def test_flow_stack_on_a_3d_network_is_refused(tmp_path):
    output = tmp_path / "m.safetensors"
    args = ["convert", str(SAMPLES / "digit_c3d.pt"), "--layer", "fc6", "-o", str(output)]
    result = runner.invoke(app, [*args, "--modality", "flow", "--flow-stack", "4"], env=WIDE)
    assert result.exit_code == 2 and "3D network" in error_line(result)
    assert not output.exists()
