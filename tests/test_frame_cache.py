"""The decoded-frame cache: same examples as decoding, decoded once, invalidated by changes, robust to bad entries."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from helpers import FAST, moving_square, write_frame_folder, write_video
from prernn_cli.cli import app
from prernn_cli.data import Augment, ClipDataset, FrameCache, Sampling, Task, discover, read_frames, resize_frames
from prernn_cli.spec import InputSpec

SPEC = InputSpec(size=(24, 24), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


@pytest.fixture()
def clip_tree(tmp_path):
    for label, direction in (("left", -1), ("right", 1)):
        for k in range(2):
            write_frame_folder(tmp_path / "clips" / label / f"f{k}", moving_square(10, direction, size=32, seed=k))
        write_video(tmp_path / "clips" / label / "v.mkv", moving_square(10, direction, size=32, seed=7))
    return tmp_path / "clips"


def _decoder(calls: list):
    def decode(path):
        calls.append(path)
        return resize_frames(read_frames(path)[0], SPEC)

    return decode


@pytest.mark.parametrize("sampling", [Sampling.UNIFORM, Sampling.RANDOM])
def test_cached_examples_equal_decoded_ones(clip_tree, tmp_path, sampling):
    clips = discover(clip_tree, val_fraction=0.0).train
    plain = ClipDataset(clips, SPEC, Task.CLASSIFY, steps=4, sampling=sampling, augment=Augment(flip=True), seed=3)
    cached = ClipDataset(
        clips,
        SPEC,
        Task.CLASSIFY,
        steps=4,
        sampling=sampling,
        augment=Augment(flip=True),
        seed=3,
        frame_cache=FrameCache(tmp_path / "cache", SPEC),
    )
    for epoch in (0, 1, 2):  # the first epoch fills the cache, the others read it
        plain.set_epoch(epoch)
        cached.set_epoch(epoch)
        for index in range(len(clips)):
            a, b = plain[index], cached[index]
            assert torch.equal(a["frames"], b["frames"]) and a["label"] == b["label"]
    assert len(list((tmp_path / "cache").glob("*.npy"))) == len(clips)


def test_a_clip_is_decoded_once_and_again_after_it_changed(clip_tree, tmp_path):
    cache = FrameCache(tmp_path / "cache", SPEC)
    folder, calls = clip_tree / "left" / "f0", []
    first = np.array(cache.frames(folder, _decoder(calls)))
    second = cache.frames(folder, _decoder(calls))
    assert len(calls) == 1 and np.array_equal(first, second) and first.shape == (10, 24, 24, 3)
    frame = folder / "frame_0000.png"
    frame.write_bytes(frame.read_bytes())  # same content, new modification time
    os.utime(frame, ns=(frame.stat().st_atime_ns, frame.stat().st_mtime_ns + 10**9))
    FrameCache(tmp_path / "cache", SPEC).frames(folder, _decoder(calls))  # the next run sees the change
    assert len(calls) == 2
    assert FrameCache(tmp_path / "cache", InputSpec(size=(16, 16))).path_for(folder) != cache.path_for(
        folder
    )  # per input size


def test_unreadable_entry_is_decoded_again_and_nothing_partial_is_left(clip_tree, tmp_path):
    cache = FrameCache(tmp_path / "cache", SPEC)
    video, calls = clip_tree / "right" / "v.mkv", []
    cache.path_for(video).write_bytes(b"not an npy file")
    frames = cache.frames(video, _decoder(calls))
    assert len(calls) == 1 and frames.shape == (10, 24, 24, 3)
    assert np.array_equal(np.load(cache.path_for(video)), frames)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [cache.path_for(video).name]  # no temporary files
    np.save(cache.path_for(video), np.zeros((10, 8, 8, 3), dtype=np.uint8))  # a valid .npy of the wrong layout
    assert cache.frames(video, _decoder(calls)).shape == (10, 24, 24, 3) and len(calls) == 2


def test_train_with_frame_cache(clip_tree, tmp_path, model_file):
    cache = tmp_path / "frames"
    result = CliRunner().invoke(
        app,
        [
            "train",
            str(model_file),
            "--data",
            str(clip_tree),
            "-o",
            str(tmp_path / "run"),
            "--epochs",
            "2",
            "--frame-cache",
            str(cache),
            "--val-fraction",
            "0.3",
            *FAST,
        ],
    )
    assert result.exit_code == 0, result.output
    assert len(list(cache.glob("*.npy"))) == 6  # every clip, train and val, once
    evaluations = []
    for extra in ([], ["--frame-cache", str(cache)]):  # evaluate reads the same entries, with the same result
        result = CliRunner().invoke(
            app,
            [
                "evaluate",
                str(tmp_path / "run" / "last.safetensors"),
                "--data",
                str(clip_tree),
                "--split",
                "train",
                "--val-fraction",
                "0.3",
                "--steps",
                "4",
                "--device",
                "cpu",
                "--json",
                *extra,
            ],
        )
        assert result.exit_code == 0, result.output
        evaluations.append(json.loads(result.stdout)["metrics"])
    assert evaluations[0] == evaluations[1]
    assert len(list(cache.glob("*.npy"))) == 6
    blocked = tmp_path / "file"
    blocked.write_text("")
    result = CliRunner().invoke(
        app,
        [
            "train",
            str(model_file),
            "--data",
            str(clip_tree),
            "-o",
            str(tmp_path / "run2"),
            "--epochs",
            "1",
            "--frame-cache",
            str(blocked / "sub"),
            *FAST,
        ],
    )
    assert result.exit_code == 2 and "--frame-cache" in result.stderr.strip().splitlines()[-1]
