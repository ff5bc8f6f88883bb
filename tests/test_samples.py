"""The committed sample checkpoints and clips: they load, classify real digits, trace, and decode exactly."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.fx
from torch import nn

from helpers import SAMPLES
from prernn_cli.architectures.samples import DigitC3D, DigitResNet, DigitVGG

CHECKPOINTS = [(DigitVGG, "digit_vgg.pt"), (DigitResNet, "digit_resnet.pt"), (DigitC3D, "digit_c3d.pt")]
MP4_TOLERANCE = 0  # the script measured the mp4 files as exact (see results.json)


def _load_script():
    spec = importlib.util.spec_from_file_location("make_samples", SAMPLES / "make_samples.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("make_samples", module)
    spec.loader.exec_module(module)
    return module


make_samples = _load_script()


@pytest.fixture(scope="module")
def held_out() -> make_samples.DigitSplit:
    _, held = make_samples.load_digit_splits()
    return make_samples.DigitSplit(held.glyphs[:100], held.labels[:100])


def _load(cls: type[nn.Module], filename: str) -> nn.Module:
    model = cls()
    state = torch.load(SAMPLES / filename, weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


@pytest.mark.parametrize(("cls", "filename"), CHECKPOINTS, ids=[f for _, f in CHECKPOINTS])
def test_checkpoint_classifies_held_out_digits(cls, filename, held_out):
    torch.manual_seed(0)
    model = _load(cls, filename)
    rng = np.random.default_rng(123)
    if cls is DigitC3D:
        inputs = make_samples.snippets_to_tensor(make_samples.render_snippets(held_out, rng))
    else:
        inputs = make_samples.to_tensor(make_samples.render_images(held_out, rng))
    acc = make_samples.accuracy(model, inputs, held_out.labels)
    floor = 0.3 if cls is DigitC3D else 0.8  # chance is 0.1; DigitC3D is the weakest net (see results.json)
    assert acc >= floor, f"{filename}: accuracy {acc:.2f} on 100 held-out digits"


@pytest.mark.parametrize(("cls", "filename"), CHECKPOINTS, ids=[f for _, f in CHECKPOINTS])
def test_checkpoint_is_small_and_fx_traceable(cls, filename):
    assert (SAMPLES / filename).stat().st_size < 4_000_000
    model = _load(cls, filename)
    shape = (2, 3, 4, 32, 32) if cls is DigitC3D else (2, 3, 32, 32)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    graph = torch.fx.symbolic_trace(model)
    torch.testing.assert_close(graph(x), model(x))


def test_paper_layers_are_where_the_contract_says():
    vgg, resnet, c3d = DigitVGG(), DigitResNet(), DigitC3D()
    assert isinstance(vgg.classifier[0], nn.Linear) and vgg.classifier[0].in_features == 1024  # fc6
    assert isinstance(vgg.classifier[3], nn.Linear) and vgg.classifier[3].out_features == 256  # fc7
    last = resnet.layer3[1]
    assert last.downsample is None and isinstance(last.conv2, nn.Conv2d) and isinstance(last.bn2, nn.BatchNorm2d)
    assert isinstance(resnet.avgpool, nn.AdaptiveAvgPool2d)
    assert (c3d.fc6.in_features, c3d.fc6.out_features, c3d.fc7.out_features) == (1024, 256, 256)
    assert DigitVGG(num_classes=3).classifier[6].out_features == 3


def _clip_folders(split: str, label: str) -> list[Path]:
    return sorted(p for p in (SAMPLES / "clips" / split / label).iterdir() if p.is_dir())


@pytest.mark.parametrize(("split", "count"), [("train", 80), ("val", 20)])
def test_clip_tree_structure(split, count):
    for label in ("left", "right"):
        folders = _clip_folders(split, label)
        assert len(folders) == count
        videos = sorted((SAMPLES / "clips_mp4" / split / label).glob("*.mp4"))
        assert [v.stem for v in videos] == [f.name for f in folders]
        for folder in folders[:5]:
            frames = make_samples.read_png_clip(folder)
            assert frames.shape == (16, 32, 32, 3) and frames.dtype == np.uint8
            assert [p.name for p in sorted(folder.iterdir())] == [f"frame_{t:04d}.png" for t in range(16)]


def test_left_clips_are_reversed_right_clips():
    for split in ("train", "val"):
        for right in _clip_folders(split, "right")[:10]:
            left = SAMPLES / "clips" / split / "left" / right.name.replace("_right", "_left")
            np.testing.assert_array_equal(make_samples.read_png_clip(left), make_samples.read_png_clip(right)[::-1])


@pytest.mark.parametrize("split", ["train", "val"])
def test_every_mp4_decodes_to_its_png_frames(split):
    for label in ("left", "right"):
        for folder in _clip_folders(split, label):
            video = SAMPLES / "clips_mp4" / split / label / f"{folder.name}.mp4"
            decoded = make_samples.decode_mp4(video)
            expected = make_samples.read_png_clip(folder)
            assert decoded.shape == expected.shape
            diff = np.abs(decoded.astype(np.int16) - expected.astype(np.int16)).max()
            assert diff <= MP4_TOLERANCE, f"{video}: max difference {diff}"


def test_results_record_order_blind_at_chance():
    results = json.loads((SAMPLES / "results.json").read_text())
    for source in ("png", "mp4_lossless"):
        probes = results["baselines"][source]
        for features in ("raw_pixels", "vgg_fc7"):
            assert probes[f"order_blind_mean/{features}"]["val"] == pytest.approx(0.5, abs=0.05)
            assert probes[f"order_aware_last_minus_first/{features}"]["val"] >= 0.8
    assert results["clips"]["mp4_max_abs_difference"] <= MP4_TOLERANCE
