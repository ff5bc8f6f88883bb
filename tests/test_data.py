"""Clip discovery, decoding, sampling and preprocessing (prernn_cli.data) on real files."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import make_clip_tree, moving_square, write_frame_folder, write_video
from prernn_cli.data import (
    Augment,
    ClipDataset,
    ClipReadError,
    Sampling,
    Task,
    check_targets,
    collate,
    count_frames,
    dense_windows,
    discover,
    read_frames,
    step_starts,
)
from prernn_cli.errors import DataError
from prernn_cli.spec import FrameKind, InputSpec

SPEC = InputSpec(size=(32, 32), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def test_discover_folders_deterministic_val_fraction(tmp_path):
    make_clip_tree(tmp_path, per_class=5)
    a = discover(tmp_path, val_fraction=0.2)
    b = discover(tmp_path, val_fraction=0.2)
    assert a.class_names == ("left", "right")
    assert [c.path for c in a.val] == [c.path for c in b.val]
    assert len(a.val) == 2 and len(a.train) == 8
    assert {c.label for c in a.val} == {0, 1}  # stratified per class


def test_discover_split_folders(tmp_path):
    make_clip_tree(tmp_path / "train", per_class=2)
    make_clip_tree(tmp_path / "val", per_class=1)
    splits = discover(tmp_path)
    assert splits.source == "split folders"
    assert len(splits.train) == 4 and len(splits.val) == 2


@pytest.mark.parametrize(
    "layout, message",
    [
        ("empty", "no clips found"),
        ("one_class", "only one class"),
        ("mismatch", "classes differ"),
    ],
)
def test_discover_bad_folders(tmp_path, layout, message):
    if layout == "one_class":
        write_frame_folder(tmp_path / "left" / "a", moving_square(4, -1))
    elif layout == "mismatch":
        make_clip_tree(tmp_path / "train", per_class=1)
        write_frame_folder(tmp_path / "val" / "left" / "a", moving_square(4, -1))
        write_frame_folder(tmp_path / "val" / "up" / "a", moving_square(4, -1))
    with pytest.raises(DataError, match=message) as info:
        discover(tmp_path)
    assert "\n" not in str(info.value)


def test_video_and_folder_decode_identically(tmp_path):
    frames = moving_square(6, 1)
    write_frame_folder(tmp_path / "f", frames)
    write_video(tmp_path / "v.mkv", frames)  # ffv1 is lossless, but YUV conversion rounds
    from_folder, n1 = read_frames(tmp_path / "f", [0, 3, 5])
    from_video, n2 = read_frames(tmp_path / "v.mkv", [0, 3, 5])
    assert n1 == 6 and n2 == 6 and count_frames(tmp_path / "v.mkv") == 6
    for a, b in zip(from_folder, from_video):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 3


def test_mp4_decodes(tmp_path):
    write_video(tmp_path / "v.mp4", moving_square(5, 1), codec="libx264")
    frames, n = read_frames(tmp_path / "v.mp4")
    assert n == 5 and frames[0].shape == (32, 32, 3)


def test_bad_clips_raise_clip_read_error(tmp_path):
    (tmp_path / "corrupt.mp4").write_bytes(b"not a video at all" * 10)
    with pytest.raises(ClipReadError, match="cannot"):
        read_frames(tmp_path / "corrupt.mp4")
    write_frame_folder(tmp_path / "mixed", moving_square(3, 1))
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "mixed" / "frame_9999.png")
    with pytest.raises(ClipReadError, match="different sizes"):
        read_frames(tmp_path / "mixed")
    with pytest.raises(ClipReadError, match="too short"):
        step_starts(3, 4, 1, Sampling.UNIFORM)


def test_step_starts_modes():
    assert step_starts(16, 4, 1, Sampling.UNIFORM) == [0, 5, 10, 15]
    assert step_starts(16, 4, 4, Sampling.UNIFORM) == [0, 4, 8, 12]
    assert step_starts(16, 2, 4, Sampling.DENSE, start=8) == [8, 12]
    for seed in range(20):
        starts = step_starts(16, 4, 1, Sampling.RANDOM, rng=random.Random(seed))
        assert starts == sorted(starts) and len(set(starts)) == 4 and starts[-1] <= 15  # never reversed


def test_dense_windows(tmp_path):
    make_clip_tree(tmp_path, per_class=1, num_frames=10)
    splits = discover(tmp_path, val_fraction=0)
    windows, skipped = dense_windows(splits.train, steps=4, snippet=1)
    assert len(windows) == 4 and not skipped  # two windows of 4 per 10-frame clip
    assert sorted({w.start for w in windows}) == [0, 4]


def test_dataset_batches_2d_and_3d(tmp_path):
    make_clip_tree(tmp_path, per_class=2, num_frames=8)
    splits = discover(tmp_path, val_fraction=0)
    ds = ClipDataset(splits.train, SPEC, Task.CLASSIFY, steps=4)
    batch = collate([ds[0], ds[3]])
    assert batch["frames"].shape == (2, 4, 3, 32, 32) and batch["frames"].dtype == torch.float32
    assert batch["label"].tolist() == [0, 1]
    assert batch["frames"].min() >= -1 and batch["frames"].max() <= 1
    spec3d = InputSpec(frame_kind=FrameKind.SNIPPET, size=(32, 32), snippet_length=4, mean=(0.5,) * 3, std=(0.5,) * 3)
    ds3 = ClipDataset(splits.train, spec3d, Task.CLASSIFY, steps=2)
    item = ds3[0]
    assert item["frames"].shape == (2, 3, 4, 32, 32)  # T, C, L, H, W


def test_preprocessing_resizes_and_normalises(tmp_path):
    frames = [np.full((48, 64, 3), 255, np.uint8)] * 4
    write_frame_folder(tmp_path / "a" / "c1", frames)
    write_frame_folder(tmp_path / "b" / "c1", frames)
    splits = discover(tmp_path, val_fraction=0)
    item = ClipDataset(splits.train, SPEC, Task.CLASSIFY, steps=2)[0]
    assert item["frames"].shape == (2, 3, 32, 32)
    torch.testing.assert_close(item["frames"], torch.ones(2, 3, 32, 32))


def test_augmentation_is_deterministic_and_label_safe(tmp_path):
    make_clip_tree(tmp_path, per_class=1, num_frames=8)
    splits = discover(tmp_path, val_fraction=0)
    ds = ClipDataset(splits.train, SPEC, Task.CLASSIFY, steps=4, sampling=Sampling.RANDOM, augment=Augment(), seed=3)
    a, b = ds[1], ds[1]
    torch.testing.assert_close(a["frames"], b["frames"])  # same (seed, epoch, index) -> same example
    others = []
    for epoch in (1, 2, 3):
        ds.set_epoch(epoch)
        others.append(ds[1]["frames"])
    assert any(not torch.equal(o, a["frames"]) for o in others)  # a new epoch draws new crops/strides
    # default augmentation never flips: the square of a "right" clip still moves right
    for epoch in range(5):
        ds.set_epoch(epoch)
        x = ds[1]["frames"][:, 0]  # T, H, W
        xs = [(step > 0).nonzero()[:, 1].float().mean().item() for step in x]  # x of the square per step
        assert xs == sorted(xs)
    # label-aware flip swaps left and right
    flip = ClipDataset(
        splits.train, SPEC, Task.CLASSIFY, steps=4, augment=Augment(flip=True, flip_pairs=((0, 1),)), seed=0
    )
    labels = {flip._rng(0).random() < 0.5: None}
    for epoch in range(8):
        flip.set_epoch(epoch)
        item = flip[0]
        flipped = flip._rng(0).random() < 0.5
        assert item["label"] == (1 if flipped else 0)
        labels[flipped] = True
    assert len(labels) == 2


def test_dataset_reports_bad_clip_instead_of_raising(tmp_path):
    make_clip_tree(tmp_path, per_class=1, num_frames=8)
    (tmp_path / "left" / "broken.mp4").write_bytes(b"\x00" * 100)
    write_frame_folder(tmp_path / "right" / "short", moving_square(2, 1))
    splits = discover(tmp_path, val_fraction=0)
    ds = ClipDataset(splits.train, SPEC, Task.CLASSIFY, steps=4)
    batch = collate([ds[i] for i in range(len(ds))])
    assert batch["size"] == 2
    reasons = dict(batch["skipped"])
    assert any("broken.mp4" in p for p in reasons) and any(r.startswith("too short") for r in reasons.values())


def test_manifest_classify_regress_ctc(tmp_path, small_clip_tree):
    rows = [
        ("clips/left/clip0", "left"),
        ("clips/left/clip1", "left"),
        ("clips/right/clip0", "right"),
        ("clips/right/clip1", "right"),
    ]
    (tmp_path / "m.csv").write_text(
        "path,label,split\n" + "".join(f"{p},{label},{'val' if p.endswith('1') else 'train'}\n" for p, label in rows)
    )
    splits = discover(tmp_path / "m.csv")
    assert splits.task is Task.CLASSIFY and len(splits.train) == 2 and len(splits.val) == 2

    lines = []
    for k, (p, _) in enumerate(rows):
        np.save(tmp_path / f"t{k}.npy", np.arange(6 * 4, dtype=np.float32).reshape(6, 4))
        lines.append(json.dumps({"path": p, "targets": f"t{k}.npy"}))
    (tmp_path / "r.jsonl").write_text("\n".join(lines))
    splits = discover(tmp_path / "r.jsonl", val_fraction=0.25)
    assert splits.task is Task.REGRESS and splits.num_outputs == 4
    check_targets(splits)
    item = ClipDataset(splits.train, SPEC, Task.REGRESS, steps=3)[0]
    assert item["targets"].shape == (3, 4)
    torch.testing.assert_close(item["targets"][:, 0], torch.tensor([0.0, 8.0, 20.0]))  # frames 0, 2, 5

    (tmp_path / "c.jsonl").write_text(
        "\n".join(json.dumps({"path": p, "labels": [label, "stop"]}) for p, label in rows)
    )
    splits = discover(tmp_path / "c.jsonl", val_fraction=0)
    assert splits.class_names == ("<blank>", "left", "right", "stop") and splits.num_outputs == 4
    batch = collate([ClipDataset(splits.train, SPEC, Task.CTC, steps=4)[i] for i in range(2)])
    assert batch["sequence_lengths"].tolist() == [2, 2]


def test_manifest_errors(tmp_path):
    make_clip_tree(tmp_path / "clips", per_class=1, num_frames=6)
    (tmp_path / "missing.csv").write_text("path,label\nclips/left/clip0,left\nclips/nope,right\n")
    with pytest.raises(DataError, match="missing files: clips/nope"):
        discover(tmp_path / "missing.csv")
    np.save(tmp_path / "bad.npy", np.zeros((5, 4), np.float32))  # clip has 6 frames
    (tmp_path / "bad.jsonl").write_text(
        json.dumps({"path": "clips/left/clip0", "targets": "bad.npy"})
        + "\n"
        + json.dumps({"path": "clips/right/clip0", "targets": "bad.npy"})
    )
    with pytest.raises(DataError, match="5 rows but clip"):
        check_targets(discover(tmp_path / "bad.jsonl", val_fraction=0))
    np.save(tmp_path / "flat.npy", np.zeros(6, np.float32))
    (tmp_path / "flat.jsonl").write_text(json.dumps({"path": "clips/left/clip0", "targets": "flat.npy"}))
    with pytest.raises(DataError, match="must be 2-D"):
        discover(tmp_path / "flat.jsonl")
