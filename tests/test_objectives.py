"""Every objective learns on the shipped clips, and the run stops when val stops improving.

The CTC loss and decoding are checked against brute force on tiny inputs; CTC's random steps
cover the whole clip (a crop could drop a labelled gesture while its label stays). Then, on
the shipped direction-of-motion clips, through the real CLI:

* ctc — clips of two gestures (a shipped clip followed by another, frames linked into a
  temporary folder; labels such as ``left right``): decoded exactly on at least
  :data:`CTC_MIN_ACCURACY` of the 40 val clips, and above chance by the binomial rule;
* regress — per-frame targets = the digit's horizontal centre (its intensity centroid / width,
  computed from the frames): the val AUC beats the constant prediction's by
  :data:`REGRESS_MIN_GAIN`.

Early stopping: a run whose val metric cannot improve stops after N epochs, says why in
``metrics.jsonl`` and the result, and stays stopped when resumed.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from typer.testing import CliRunner

from helpers import FAST, SAMPLES, moving_square, write_frame_folder
from prernn_cli.analyze import better_than_chance
from prernn_cli.checkpoint.converted import read_spec
from prernn_cli.cli import app
from prernn_cli.data import ClipDataset, Sampling, collate, discover
from prernn_cli.data.clips import Clip
from prernn_cli.metrics import cumulative_error_auc, greedy_decode, task_loss
from prernn_cli.spec import InputSpec, Task
from prernn_cli.train import EventKind, TrainConfig, train

runner = CliRunner()
CLIPS = SAMPLES / "clips"
#: two-gesture CTC: share of the 40 val clips decoded exactly (chance: 12/40, the most frequent sequence)
CTC_MIN_ACCURACY = 0.75
#: regression: val AUC minus the AUC of predicting the training targets' mean for every frame
REGRESS_MIN_GAIN = 0.25


def _cli(*args) -> dict:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout) if "--json" in args else {}


# ---------------------------------------------------------------- CTC: loss, decoding, sampling


def _brute_force_ctc(log_probs: torch.Tensor, target: tuple[int, ...]) -> float:
    """-log of the summed probability of every path of T symbols that collapses to ``target`` (blank 0)."""
    steps, classes = log_probs.shape
    total = 0.0
    for path in itertools.product(range(classes), repeat=steps):
        if tuple(k for k, _ in itertools.groupby(path) if k != 0) == target:
            total += math.exp(sum(float(log_probs[t, k]) for t, k in enumerate(path)))
    return -math.log(total)


def test_ctc_loss_is_the_path_sum_over_a_batch_of_sequences():
    outputs = torch.randn(3, 5, 3)  # B, T, K: the model's layout, time on axis 1
    sequences = [(1, 2), (2,), (1, 1)]  # different lengths, concatenated as collate does
    batch = {
        "sequence": torch.tensor([s for seq in sequences for s in seq]),
        "sequence_lengths": torch.tensor([len(seq) for seq in sequences]),
    }
    log_probs = F.log_softmax(outputs, dim=-1)
    # reduction "mean": each clip's loss divided by its target length, then averaged over clips
    expected = np.mean([_brute_force_ctc(log_probs[b], seq) / len(seq) for b, seq in enumerate(sequences)])
    assert float(task_loss(Task.CTC, outputs, batch)) == pytest.approx(expected, rel=1e-4)


def test_greedy_decoding_merges_repeats_and_drops_blanks():
    paths = [(1, 1, 0, 1, 2, 2), (0, 0, 0, 0, 0, 0), (2, 0, 2, 1, 0, 0)]
    outputs = F.one_hot(torch.tensor(paths), 3).float()
    assert greedy_decode(outputs) == [(1, 1, 2), (), (2, 2, 1)]


def test_ctc_random_steps_cover_the_whole_clip(tmp_path):
    """Classification crops in time (random stride and offset); CTC draws one step per segment of the clip."""
    spec = InputSpec(size=(32, 32), mean=(0.5,) * 3, std=(0.5,) * 3)
    clip = Clip(tmp_path / "c", label=0, sequence=(1, 2))
    covered = {}
    for task in (Task.CLASSIFY, Task.CTC):
        dataset = ClipDataset([clip], spec, task, steps=8, sampling=Sampling.RANDOM)
        starts = [dataset._starts(clip, 32, random.Random(seed)) for seed in range(50)]
        assert all(s == sorted(s) and len(set(s)) == 8 for s in starts)  # in order, never repeated
        covered[task] = [(s[0] < 4, s[-1] >= 28) for s in starts]  # a step in the first and the last eighth
    assert all(first and last for first, last in covered[Task.CTC])
    assert not all(first and last for first, last in covered[Task.CLASSIFY])


def test_collate_concatenates_sequences_with_their_lengths():
    items = [
        {"frames": torch.zeros(2, 1), "index": i, "sequence": torch.tensor(seq)}
        for i, seq in enumerate([(1, 2), (2,), (1, 1, 2)])
    ]
    batch = collate(items)
    assert batch["sequence"].tolist() == [1, 2, 2, 1, 1, 2] and batch["sequence_lengths"].tolist() == [2, 1, 3]


# ---------------------------------------------------------------- each objective learns on the shipped clips


def _two_gesture_clips(root: Path) -> Path:
    """A manifest of clips made of two shipped clips in a row (32 frames), frames linked, labels like ``left right``.

    160 train clips from the shipped training clips, 40 val clips from the val clips (held-out digits).
    """
    lines = ["path,labels,split"]
    for split, count in (("train", 160), ("val", 40)):
        shipped = [(c, p) for c in ("left", "right") for p in sorted((CLIPS / split / c).iterdir())]
        rng = random.Random(split)
        for i in range(count):
            (first, a), (second, b) = rng.sample(shipped, 2)
            folder = root / split / f"g{i:03d}"
            folder.mkdir(parents=True)
            for k, frame in enumerate(sorted(a.iterdir()) + sorted(b.iterdir())):
                os.symlink(frame, folder / f"frame_{k:04d}.png")
            lines.append(f"{folder},{first} {second},{split}")
    manifest = root / "two_gestures.csv"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


@pytest.mark.slow
def test_ctc_decodes_two_gestures_in_one_clip(tmp_path):
    manifest = _two_gesture_clips(tmp_path / "clips")
    model = tmp_path / "ctc.safetensors"
    _cli(
        "convert", SAMPLES / "digit_vgg.pt", "--layer", "fc6", "--cell", "gru", "--sih", "--num-classes", 3, "-o", model
    )
    result = _cli(
        "train", model, "--data", manifest, "--task", "ctc", "-o", tmp_path / "run", "--epochs", 10,
        "--batch-size", 4, "--steps", 8, "--optimizer", "adamw", "--lr", 0.001, "--workers", 0, "--device", "cpu",
        "--frame-cache", tmp_path / "cache", "--json",
    )  # fmt: skip
    best = max(row["val_sequence_accuracy"] for row in result["history"])
    val = [line.split(",")[1] for line in manifest.read_text().splitlines()[1:] if line.endswith(",val")]
    chance = max(val.count(labels) for labels in set(val)) / len(val)
    assert best >= CTC_MIN_ACCURACY, result["history"]
    assert better_than_chance(round(best * len(val)), len(val), chance)
    evaluated = _cli("evaluate", tmp_path / "run" / "best.safetensors", "--data", manifest, "--json")
    assert evaluated["metrics"]["sequence_accuracy"] == pytest.approx(best)


def _x_centre(frame: Path) -> float:
    pixels = np.asarray(Image.open(frame).convert("L"), dtype=np.float64)
    column_mass = pixels.sum(axis=0)
    return float((column_mass * np.arange(pixels.shape[1])).sum() / column_mass.sum() / pixels.shape[1])


def _position_targets(root: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """A manifest of the shipped clips with per-frame targets: the digit's x centre in [0, 1]."""
    root.mkdir()
    lines, values = ["path,targets,split"], {"train": [], "val": []}
    for split in ("train", "val"):
        for clip in sorted(p for c in ("left", "right") for p in (CLIPS / split / c).iterdir()):
            targets = np.asarray([[_x_centre(f)] for f in sorted(clip.iterdir())], dtype=np.float32)
            np.save(root / f"{split}_{clip.name}.npy", targets)
            lines.append(f"{clip},{root / f'{split}_{clip.name}.npy'},{split}")
            values[split].append(targets)
    (root / "positions.csv").write_text("\n".join(lines) + "\n")
    return root / "positions.csv", np.concatenate(values["train"]), np.concatenate(values["val"])


@pytest.mark.slow
def test_regression_beats_the_constant_prediction(tmp_path):
    manifest, train_targets, val_targets = _position_targets(tmp_path / "targets")
    model = tmp_path / "regress.safetensors"
    _cli("convert", SAMPLES / "digit_vgg.pt", "--layer", "fc6", "--cell", "gru", "--sih", "--outputs", 1, "-o", model)
    result = _cli(
        "train", model, "--data", manifest, "--task", "regress", "-o", tmp_path / "run", "--epochs", 3,
        "--optimizer", "adamw", "--lr", 0.001, "--workers", 0, "--device", "cpu", "--json",
    )  # fmt: skip
    constant = cumulative_error_auc(np.abs(val_targets - train_targets.mean())[:, 0], 0.08)
    best = max(row["val_auc"] for row in result["history"])
    assert best >= constant + REGRESS_MIN_GAIN, (best, constant)


# ---------------------------------------------------------------- early stopping, steps and clips seen


def test_early_stop_records_why_and_stays_stopped(tmp_path, model_file, small_clip_tree):
    # --lr 1e-12: the weights cannot move, so val accuracy and loss stay where epoch 1 left them
    args = ["train", model_file, "--data", small_clip_tree, "-o", tmp_path / "run", "--epochs", 10,
            "--val-fraction", 0.5, "--lr", 1e-12, *FAST]  # fmt: skip
    result = _cli(*args, "--early-stop", 2, "--json")
    assert [row["epoch"] for row in result["history"]] == [1, 2, 3]
    reason = result["stop_reason"]
    assert reason.startswith("early stop after epoch 3: val_accuracy has not improved for 2 epochs (best ")
    assert reason.endswith(" at epoch 1)") and result["history"][-1]["stopped"] == reason
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["stopped"] == reason and "stopped" not in rows[0]
    assert [row["clips_seen"] for row in rows] == [2, 4, 6] and [row["step"] for row in rows] == [1, 2, 3]
    resumed = _cli(*args, "--early-stop", 2, "--resume", tmp_path / "run", "--json")
    assert len(resumed["history"]) == 3 and resumed["stop_reason"] == reason
    table = runner.invoke(app, [str(a) for a in args] + ["--overwrite", "--early-stop", "1"])
    assert table.exit_code == 0 and "early stop after epoch 2" in table.stdout
    assert "(step 2, 4 clips seen)" in " ".join(table.stderr.split())


@pytest.mark.parametrize(("arch", "layer", "expected"), [("digit_vgg", "classifier.0", 5), ("digit_c3d", "fc6", 1)])
def test_steps_0_takes_the_whole_shortest_training_clip(
    tmp_path, converted_file, small_clip_tree, arch, layer, expected
):
    # the training clips have 6 frames and one of 5: T = 5 frames, or one 4-frame snippet of DigitC3D
    write_frame_folder(small_clip_tree / "left" / "short", moving_square(5, -1, seed=9))
    model = converted_file(arch=arch, layer=layer)
    args = ["train", model, "--data", small_clip_tree, "-o", tmp_path / "run", "--epochs", 1, "--val-fraction", 0]
    _cli(*args, "-T", 0, "--workers", 0, "--batch-size", 2, "--device", "cpu", "--json")
    assert read_spec(tmp_path / "run" / "last.safetensors").training.steps == expected
    write_frame_folder(small_clip_tree / "right" / "tiny", moving_square(3, 1, seed=9))
    if arch == "digit_c3d":  # a 3-frame clip holds no 4-frame snippet: say so, and how to go on
        failed = runner.invoke(app, [str(a) for a in args] + ["-T", "0", "--overwrite", "--workers", "0"])
        assert failed.exit_code == 2 and len(failed.stderr.strip().splitlines()) == 1
        assert "shortest training clip has 3 frames, fewer than one step's 4; give --steps N" in failed.stderr


def test_progress_events_count_optimizer_steps_and_clips_seen(tmp_path, small_clip_tree):
    from helpers import converted

    events = []
    config = TrainConfig(epochs=2, batch_size=1, steps=4, workers=0, device="cpu", val_fraction=0.0)
    result = train(
        converted(), discover(small_clip_tree, val_fraction=0.0), tmp_path / "run", config, progress=events.append
    )
    steps = [(e.global_step, e.clips_seen) for e in events if e.kind is EventKind.STEP]
    assert steps == [(i, i) for i in range(1, 9)]  # 4 clips a batch of 1 each, two epochs
    ends = [e.clips_seen for e in events if e.kind is EventKind.EPOCH_END]
    assert ends == [4, 8] and result.stop_reason == "completed 2 epochs"


def test_regression_trains_without_dropout_or_translation(tmp_path, small_clip_tree, caplog):
    """Dropout and the random translation would falsify per-frame position targets: both are off for regression."""
    from helpers import converted

    lines = ["path,targets"]
    for k, clip in enumerate(sorted(p for c in ("left", "right") for p in (small_clip_tree / c).iterdir())):
        np.save(tmp_path / f"t{k}.npy", np.zeros((6, 1), dtype=np.float32))
        lines.append(f"{clip},{tmp_path / f't{k}.npy'}")
    (tmp_path / "r.csv").write_text("\n".join(lines) + "\n")
    model = converted(outputs=1)
    assert any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules())
    config = TrainConfig(task=Task.REGRESS, epochs=1, batch_size=2, steps=4, workers=0, device="cpu")
    with caplog.at_level("INFO"):
        train(model, discover(tmp_path / "r.csv", val_fraction=0.0), tmp_path / "run", config)
    assert all(m.p == 0 for m in model.modules() if isinstance(m, torch.nn.Dropout))
    assert "random translation is off for --task regress" in caplog.text and "dropout is off" in caplog.text
