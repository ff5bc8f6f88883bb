"""The trunk-output cache: training from it is training without it, the trunk runs once, entries are the model's own."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from helpers import FAST, converted, make_clip_tree
from prernn_cli.checkpoint import load_converted, save_converted
from prernn_cli.choices import FeatureDtype
from prernn_cli.cli import app
from prernn_cli.data import Augment, ClipDataset, Sampling, Task, collate, discover
from prernn_cli.data.trunk_cache import (
    TrunkCache,
    TrunkFeatureDataset,
    TrunkFeatureModel,
    TrunkLayout,
    TrunkPass,
    View,
    fill,
    trunk_identity,
)
from prernn_cli.train import EventKind, TrainConfig, train

#: a run whose only randomness is the head's dropout: no augmentation, uniform steps
EXACT = [*FAST, "--epochs", "2", "--no-augment", "--freeze-trunk", "--val-fraction", "0.3", "--seed", "3"]
FRAMES = 8  # per clip; 6 clips (4 train, 2 val)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("trunk") / "clips"
    make_clip_tree(root, per_class=3, num_frames=FRAMES)
    return root


@pytest.fixture(scope="module")
def runs(tmp_path_factory, clips, converted_file) -> dict[str, Path]:
    """The same run without the cache, from a float32 cache and from a float16 one (the caches kept)."""
    folder = tmp_path_factory.mktemp("runs")
    model = converted_file()
    out = {"plain": _train(model, clips, folder / "plain")}
    for dtype in ("float32", "float16"):
        cache = folder / f"cache_{dtype}"
        out[dtype] = _train(model, clips, folder / dtype, "--trunk-cache", str(cache), "--trunk-cache-dtype", dtype)
        out[f"cache_{dtype}"] = cache
    return out


def _invoke(*args: str):
    return CliRunner().invoke(app, ["train", *args])


def _said(result) -> str:
    """What the command wrote, with line wraps undone."""
    return " ".join(result.output.split())


def _train(model: Path, clips: Path, run: Path, *extra: str) -> Path:
    result = _invoke(str(model), "--data", str(clips), "-o", str(run), *EXACT, *extra)
    assert result.exit_code == 0, result.output
    return run


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "last.safetensors")


def _metrics(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k.startswith(("train_", "val_"))} for row in rows]


def _entries(cache: Path) -> dict[str, int]:
    return {path.name: path.stat().st_mtime_ns for path in cache.glob("*.npy")}


# ---------------------------------------------------------------- same training, with or without the cache


def test_float32_cache_trains_the_same_weights_and_metrics(runs):
    plain, cached = _weights(runs["plain"]), _weights(runs["float32"])
    assert plain.keys() == cached.keys()
    for name in plain:
        torch.testing.assert_close(cached[name], plain[name], atol=1e-5, rtol=0, msg=name)
    for with_cache, without in zip(_metrics(runs["float32"]), _metrics(runs["plain"]), strict=True):
        assert with_cache.keys() == without.keys()
        for key, value in without.items():
            assert with_cache[key] == pytest.approx(value, abs=1e-5), key
    assert len(_entries(runs["cache_float32"])) == 6  # one centre view per clip, train and val


def test_float16_cache_trains_close_weights(runs):
    """Features rounded to float16 (relative error up to 2^-11) move the trained weights by under 2e-5 (measured: 4e-7)."""
    plain, cached = _weights(runs["plain"]), _weights(runs["float16"])
    for name in plain:
        torch.testing.assert_close(cached[name], plain[name], atol=2e-5, rtol=0, msg=name)
    for with_cache, without in zip(_metrics(runs["float16"]), _metrics(runs["plain"]), strict=True):
        assert with_cache["train_loss"] == pytest.approx(without["train_loss"], abs=1e-3)
        assert with_cache["val_loss"] == pytest.approx(without["val_loss"], abs=1e-3)
    entry = np.load(next(runs["cache_float16"].glob("*.npy")), mmap_mode="r")
    assert entry.dtype == np.float16 and entry.shape[0] == FRAMES


# ---------------------------------------------------------------- the trunk runs once


def _trunk_frames_per_phase(model_path: Path, clips: Path, run: Path, cache: Path) -> tuple[list[int], int]:
    """Train in-process, counting the frames the trunk sees: (count at each epoch start and at the end, total)."""
    model = load_converted(model_path)
    seen: list[int] = []
    model.trunk.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].shape[0]))
    marks: list[int] = []

    def progress(event):
        if event.kind in (EventKind.EPOCH_START, EventKind.DONE):
            marks.append(sum(seen))

    config = TrainConfig(epochs=3, batch_size=2, steps=4, augment=False, freeze_trunk=True, workers=0, device="cpu")
    config.trunk_cache = str(cache)
    train(model, discover(clips, val_fraction=0.3), run, config, progress=progress)
    return marks, sum(seen)


def test_the_trunk_runs_once_per_clip_and_never_again(clips, tmp_path, model_file):
    cache = tmp_path / "cache"
    marks, total = _trunk_frames_per_phase(model_file, clips, tmp_path / "first", cache)
    assert total == 1 + 6 * FRAMES  # one probe step, then every frame of the 6 clips once, before the first epoch
    assert marks == [total] * 4  # no trunk forward in any epoch (training or validation)
    stored = _entries(cache)
    marks, total = _trunk_frames_per_phase(model_file, clips, tmp_path / "second", cache)
    assert total == 1 and marks == [1] * 4  # the second run reads every entry: only the probe step runs
    assert _entries(cache) == stored  # nothing rewritten
    weights = [_weights(tmp_path / name) for name in ("first", "second")]
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])


def test_a_second_cli_run_reads_the_cache(runs, clips, converted_file, tmp_path):
    stored = _entries(runs["cache_float32"])
    result = _invoke(
        str(converted_file()), "--data", str(clips), "-o", str(tmp_path / "again"), *EXACT,
        "--trunk-cache", str(runs["cache_float32"]), "--trunk-cache-dtype", "float32",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "entries: 0 computed, 6 read" in _said(result)
    assert _entries(runs["cache_float32"]) == stored
    first, again = _weights(runs["float32"]), _weights(tmp_path / "again")
    assert all(torch.equal(first[name], again[name]) for name in first)


def test_a_run_from_the_cache_resumes_exactly(runs, clips, converted_file, tmp_path):
    cache = ["--trunk-cache", str(runs["cache_float32"]), "--trunk-cache-dtype", "float32"]
    _train(converted_file(), clips, tmp_path / "run", *cache, "--max-steps", "3")  # stops inside the second epoch
    _train(converted_file(), clips, tmp_path / "run", *cache, "--resume", str(tmp_path / "run"))
    whole, resumed = _weights(runs["float32"]), _weights(tmp_path / "run")
    assert all(torch.equal(whole[name], resumed[name]) for name in whole)
    assert _metrics(tmp_path / "run") == _metrics(runs["float32"])


# ---------------------------------------------------------------- entries belong to one trunk


def test_another_model_never_reads_another_models_entries(runs, clips, converted_file, tmp_path):
    cache = shutil.copytree(runs["cache_float32"], tmp_path / "cache")
    stored = _entries(cache)
    other = converted_file(seed=1)  # other trunk weights
    result = _invoke(
        str(other), "--data", str(clips), "-o", str(tmp_path / "other"), *EXACT,
        "--trunk-cache", str(cache), "--trunk-cache-dtype", "float32",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "entries: 6 computed, 0 read" in _said(result)
    after = _entries(cache)
    assert len(after) == 12 and {name: after[name] for name in stored} == stored
    plain = _train(other, clips, tmp_path / "other_plain")  # and it trained on its own features
    for name, value in _weights(plain).items():
        torch.testing.assert_close(_weights(tmp_path / "other")[name], value, atol=1e-5, rtol=0)


def test_the_key_is_the_trunk_not_the_layers_above_it():
    spec = converted().spec.input
    gru, lstm, reseeded = converted(), converted(cell="lstm"), converted(seed=1)
    assert trunk_identity(gru.trunk, spec, "float32") == trunk_identity(lstm.trunk, spec, "float32")
    assert trunk_identity(gru.trunk, spec, "float32") != trunk_identity(reseeded.trunk, spec, "float32")
    assert trunk_identity(gru.trunk, spec, "float32") != trunk_identity(gru.trunk, spec, "bf16-autocast")
    bigger = type(spec)(size=(40, 40), mean=spec.mean, std=spec.std)
    assert trunk_identity(gru.trunk, spec, "float32") != trunk_identity(gru.trunk, bigger, "float32")


def test_an_entry_of_the_wrong_shape_is_recomputed(runs, clips, converted_file, tmp_path):
    cache = shutil.copytree(runs["cache_float32"], tmp_path / "cache")
    victim = sorted(cache.glob("*.npy"))[0]
    good = np.load(victim)
    np.save(victim, np.zeros((good.shape[0], good.shape[1] + 1), dtype=np.float32))  # a valid .npy, one value too many
    result = _invoke(
        str(converted_file()), "--data", str(clips), "-o", str(tmp_path / "run"), *EXACT,
        "--trunk-cache", str(cache), "--trunk-cache-dtype", "float32",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "entries: 1 computed, 5 read" in _said(result)
    np.testing.assert_array_equal(np.load(victim), good)
    first, again = _weights(runs["float32"]), _weights(tmp_path / "run")
    assert all(torch.equal(first[name], again[name]) for name in first)
    assert not list(cache.glob(".*"))  # no temporary file left


# ---------------------------------------------------------------- what the reader gives: 2D, a conv layer's shortcut, 3D


@pytest.mark.parametrize(
    "arch,layer,outputs",
    [("digit_vgg", "classifier.0", 1), ("digit_resnet", "layer3.1.conv2", 2), ("digit_c3d", "fc6", 1)],
)
def test_features_from_the_cache_give_the_models_outputs(arch, layer, outputs, tmp_path):
    model = converted(arch, layer).eval()
    spec, steps = model.spec.input, 3
    make_clip_tree(tmp_path / "clips", per_class=2, num_frames=10)
    clips = discover(tmp_path / "clips", val_fraction=0.0).train
    layout = TrunkLayout.probe(model.trunk, spec, torch.device("cpu"))
    assert len(layout.shapes) == outputs  # the conv layer with a shortcut takes two inputs
    cache = TrunkCache(tmp_path / "cache", trunk_identity(model.trunk, spec, "float32"), layout, FeatureDtype.FLOAT32,
                       spec.frames_per_step)  # fmt: skip
    runner = TrunkPass(model.trunk, spec, torch.device("cpu"), amp=False, chunk=4)
    found = fill(cache, runner, {clip.path: [None] for clip in clips}, steps)
    rows = 10 - spec.frames_per_step + 1  # every snippet start
    assert found.computed == len(clips) and found.frame_counts == {str(c.path): 10 for c in clips}
    assert all(cache.read(clip.path, None).shape == (rows, layout.size) for clip in clips)
    plain = collate([ClipDataset(clips, spec, Task.CLASSIFY, steps, Sampling.UNIFORM)[i] for i in range(len(clips))])
    stored = TrunkFeatureDataset(clips, spec, Task.CLASSIFY, steps, Sampling.UNIFORM, trunk_cache=cache,
                                 frame_counts=found.frame_counts)  # fmt: skip
    cached = collate([stored[i] for i in range(len(clips))])
    with torch.no_grad():
        expected, _ = model(plain["frames"])
        got, _ = TrunkFeatureModel(model, layout)(cached["frames"])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(plain["label"], cached["label"])


def test_views_are_fixed_per_clip_and_picked_per_epoch(clips, tmp_path, model_file):
    model = load_converted(model_file).eval()
    spec = model.spec.input
    train_clips = discover(clips, val_fraction=0.0).train
    layout = TrunkLayout.probe(model.trunk, spec, torch.device("cpu"))
    cache = TrunkCache(tmp_path / "c", trunk_identity(model.trunk, spec, "float32"), layout, FeatureDtype.FLOAT16, 1)
    dataset = TrunkFeatureDataset(train_clips, spec, Task.CLASSIFY, 4, Sampling.RANDOM, Augment(), seed=5,
                                  trunk_cache=cache, views=3)  # fmt: skip
    assert dataset.clip_views() == [View(5, k, True, False) for k in range(3)]
    found = fill(cache, TrunkPass(model.trunk, spec, torch.device("cpu"), False, 8),
                 {c.path: dataset.clip_views() for c in train_clips}, 4)  # fmt: skip
    dataset.frame_counts = found.frame_counts
    assert found.computed == 3 * len(train_clips) and len(list((tmp_path / "c").glob("*.npy"))) == found.computed
    views = [cache.read(train_clips[0].path, view) for view in dataset.clip_views()]
    assert not all(np.array_equal(views[0], other) for other in views[1:])  # the crops differ
    again = fill(cache, TrunkPass(model.trunk, spec, torch.device("cpu"), False, 8),
                 {c.path: dataset.clip_views() for c in train_clips}, 4)  # fmt: skip
    assert again.computed == 0 and again.read == found.computed  # the same views in every run
    picked = set()
    for epoch in range(6):
        dataset.set_epoch(epoch)
        first = dataset[0]["frames"].numpy()
        picked |= {k for k, view in enumerate(views) if any(np.array_equal(first, view[rows]) for rows in _windows())}
    assert len(picked) > 1  # epochs pick different views


def _windows():
    """Every set of 4 increasing starts in 8 frames random sampling can give (stride 1 or 2)."""
    return [[offset + i * stride for i in range(4)] for stride in (1, 2) for offset in range(8 - 3 * stride)]


# ---------------------------------------------------------------- refusals


def test_a_training_trunk_cannot_be_cached(clips, model_file, tmp_path):
    result = _invoke(
        str(model_file), "--data", str(clips), "-o", str(tmp_path / "run"), *FAST, "--trunk-cache", str(tmp_path / "c")
    )
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in _said(result)
    assert "the trunk trains, so its outputs change every step: add --freeze-trunk" in lines[0]
    assert not (tmp_path / "run").exists() and not (tmp_path / "c").exists()


def test_views_need_augmentation_and_the_cache_outside_the_data(clips, model_file, tmp_path):
    base = [str(model_file), "--data", str(clips), "-o", str(tmp_path / "run"), *FAST, "--freeze-trunk"]
    result = _invoke(*base, "--no-augment", "--trunk-cache", str(tmp_path / "c"), "--trunk-cache-views", "2")
    assert result.exit_code == 2 and "--trunk-cache-views" in result.output and "Traceback" not in _said(result)
    result = _invoke(*base, "--trunk-cache", str(clips / "cache"))
    assert result.exit_code == 2 and "inside the input folder" in _said(result)
    assert not (clips / "cache").exists() and not (tmp_path / "run").exists()


def test_traditional_model_trains_the_same_from_the_cache(clips, tmp_path):
    path = tmp_path / "tra.safetensors"
    save_converted(converted(sih=False, traditional=True), path)
    plain = _train(path, clips, tmp_path / "plain")
    cached = _train(
        path, clips, tmp_path / "cached", "--trunk-cache", str(tmp_path / "c"), "--trunk-cache-dtype", "float32"
    )
    for name, value in _weights(plain).items():
        torch.testing.assert_close(_weights(cached)[name], value, atol=1e-5, rtol=0, msg=name)
