"""The training loop and `prernn train` / `prernn evaluate` on real files (tiny sample nets, T <= 4)."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from typer.testing import CliRunner

from helpers import FAST, converted, make_clip_tree, moving_square, write_frame_folder
from prernn_cli.checkpoint import load_converted, save_converted
from prernn_cli.cli import app
from prernn_cli.data import ClipDataset, Sampling, Task, collate, discover
from prernn_cli.errors import TrainingError
from prernn_cli.spec import CellType
from prernn_cli.train import TrainConfig, load_training_state, train

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()

# A training run in a separate process that SIGKILLs itself (a real crash: no cleanup, no
# `finally`) as soon as the progress callback reports the given optimiser step.
KILLED_RUN = """
import json, os, signal, sys
from prernn_cli.checkpoint import load_converted
from prernn_cli.data import discover
from prernn_cli.train import EventKind, TrainConfig, train

model_file, clips, output_dir, kill_at, config = sys.argv[1:]

def crash(event):
    if event.kind is EventKind.STEP and event.global_step == int(kill_at):
        os.kill(os.getpid(), signal.SIGKILL)

train(load_converted(model_file), discover(clips), output_dir, TrainConfig(**json.loads(config)), progress=crash)
"""


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("clips")
    make_clip_tree(root / "train", per_class=3, num_frames=6)
    make_clip_tree(root / "val", per_class=1, num_frames=6)
    return root


def test_cli_train_then_evaluate(clips, model_file, tmp_path):
    run = tmp_path / "run"
    result = runner.invoke(
        app, ["train", str(model_file), "--data", str(clips), "-o", str(run), "--epochs", "1", *FAST]
    )
    assert result.exit_code == 0, result.output
    for name in ("last.safetensors", "best.safetensors", "last.state.pt", "metrics.jsonl", "curves.png"):
        assert (run / name).stat().st_size > 0, name
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1]
    assert {"train_loss", "train_accuracy", "val_loss", "val_accuracy"} <= set(rows[0])
    trained = load_converted(run / "last.safetensors")
    assert trained.spec.class_names == ("left", "right") and trained.spec.task == "classify"

    out = tmp_path / "eval"
    result = runner.invoke(
        app,
        [
            "evaluate",
            str(run / "best.safetensors"),
            "--data",
            str(clips),
            "--steps",
            "4",
            "--device",
            "cpu",
            "--json",
            "-o",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    # best.safetensors is the only epoch's model: evaluate gives the val numbers training recorded
    assert report["metrics"]["clips"] == 2 and report["metrics"]["accuracy"] == rows[0]["val_accuracy"]
    assert report["metrics"]["loss"] == pytest.approx(rows[0]["val_loss"], rel=1e-5)
    assert set(report["per_class_accuracy"]) == {"left", "right"}
    assert np.asarray(report["confusion_matrix"]).sum() == 2
    assert (out / "confusion_val.png").stat().st_size > 0


def _weights(path: Path) -> dict:
    return load_file(str(path))


def _val_outputs(run: Path, splits, task: Task, steps: int) -> tuple[torch.Tensor, dict]:
    """Outputs of the run's saved `last` model on all val clips (uniform steps, one batch), and that batch."""
    model = load_converted(run / "last.safetensors").eval()
    dataset = ClipDataset(splits.val, model.spec.input, task, steps, Sampling.UNIFORM)
    batch = collate([dataset[i] for i in range(len(dataset))])
    with torch.no_grad():
        outputs, _ = model(batch["frames"])
    return outputs.float(), batch


def test_killed_run_resumes_to_the_same_weights(clips, model_file, tmp_path):
    """A run SIGKILLed mid-epoch and resumed ends exactly where an uninterrupted run ends (CPU)."""
    options = dict(epochs=2, batch_size=2, steps=4, workers=0, device="cpu", checkpoint_every=2)
    # 6 train clips, batch 2 -> 3 steps per epoch; saved at steps 2, 3 (epoch end), 4; killed after step 5
    command = [
        sys.executable,
        "-c",
        KILLED_RUN,
        str(model_file),
        str(clips),
        str(tmp_path / "a"),
        "5",
        json.dumps(options),
    ]
    killed = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    assert killed.returncode == -9, killed.stderr
    state = load_training_state(tmp_path / "a")
    assert (state["epoch"], state["batch_in_epoch"], state["global_step"]) == (1, 1, 4)  # mid epoch 2; step 5 is lost
    resumed = train(
        load_converted(model_file), discover(clips), tmp_path / "a", TrainConfig(**options), resume=tmp_path / "a"
    )
    assert [row["epoch"] for row in resumed.history] == [1, 2] and not resumed.stopped_early
    train(load_converted(model_file), discover(clips), tmp_path / "b", TrainConfig(**options))
    a, b = _weights(tmp_path / "a" / "last.safetensors"), _weights(tmp_path / "b" / "last.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)
    history_a = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    history_b = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["train_loss"] for r in history_a] == pytest.approx([r["train_loss"] for r in history_b], abs=1e-6)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(clips, tmp_path):
    splits = discover(clips)
    config = TrainConfig(
        epochs=1,
        batch_size=2,
        steps=4,
        workers=0,
        device="cpu",
        lr=1e12,
        clip_grad=None,
        checkpoint_every=1,
        augment=False,
    )
    with pytest.raises(TrainingError, match="became") as info:
        train(converted(), splits, tmp_path, config)
    message = str(info.value)
    assert "\n" not in message and "last good checkpoint" in message
    last = _weights(tmp_path / "last.safetensors")
    assert all(torch.isfinite(t).all() for t in last.values())


@pytest.mark.parametrize(
    "setup, message",
    [
        ("head", "--num-classes 2"),
        ("resume_other", "another model"),
        ("strict", "too short"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(clips, model_file, tmp_path, setup, message):
    data, model, extra = clips, model_file, []
    if setup == "head":
        model = tmp_path / "ten.safetensors"
        save_converted(converted(outputs=None), model)  # the sample's own 10-class head
    elif setup == "resume_other":
        other = tmp_path / "lstm.safetensors"
        save_converted(converted(cell=CellType.LSTM, sih=False), other)
        assert (
            runner.invoke(
                app,
                [
                    "train",
                    str(other),
                    "--data",
                    str(clips),
                    "-o",
                    str(tmp_path / "other"),
                    "--epochs",
                    "1",
                    "--max-steps",
                    "1",
                    *FAST,
                ],
            ).exit_code
            == 0
        )
        extra = ["--resume", str(tmp_path / "other")]
    else:
        data = tmp_path / "clips"
        make_clip_tree(data, per_class=2, num_frames=6)
        write_frame_folder(data / "left" / "short", moving_square(2, -1))
        extra = ["--strict"]
    result = runner.invoke(
        app, ["train", str(model), "--data", str(data), "-o", str(tmp_path / "run"), "--epochs", "1", *FAST, *extra]
    )
    assert result.exit_code == 2, result.output
    last_line = result.stderr.strip().splitlines()[-1]  # after any progress lines: one error line, no traceback
    assert last_line.startswith("error:") and message in last_line and "Traceback" not in result.output


def test_bad_clips_are_skipped_and_counted(tmp_path, model_file, small_clip_tree):
    data = small_clip_tree
    (data / "left" / "corrupt.mp4").write_bytes(b"\x00garbage" * 50)
    result = runner.invoke(
        app,
        [
            "train",
            str(model_file),
            "--data",
            str(data),
            "-o",
            str(tmp_path / "run"),
            "--epochs",
            "1",
            "--val-fraction",
            "0",
            "--json",
            *FAST,
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [s["path"] for s in report["skipped"]] == [str(data / "left" / "corrupt.mp4")]
    assert report["history"][0]["skipped"] == 1


def test_freeze_trunk_and_lr_groups(clips, tmp_path):
    model = converted()
    before = {k: v.clone() for k, v in model.trunk.state_dict().items()}
    layer_before = model.layers[0].weight_hh.detach().clone()
    train(
        model,
        discover(clips),
        tmp_path,
        TrainConfig(
            epochs=1, batch_size=2, steps=4, workers=0, device="cpu", freeze_trunk=True, pretrained_lr_mult=0.0
        ),
    )
    for key, value in model.trunk.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)
    assert not torch.equal(model.layers[0].weight_hh.detach(), layer_before)


def test_regress_and_ctc_manifests(tmp_path, small_clip_tree):
    paths = [f"clips/{c}/clip{k}" for c in ("left", "right") for k in range(2)]
    lines = []
    for k, p in enumerate(paths):
        np.save(tmp_path / f"t{k}.npy", np.random.default_rng(k).random((6, 4), dtype=np.float32))
        lines.append(json.dumps({"path": p, "targets": f"t{k}.npy"}))
    (tmp_path / "regress.jsonl").write_text("\n".join(lines))
    splits = discover(tmp_path / "regress.jsonl", val_fraction=0.25)
    result = train(
        converted(outputs=4),
        splits,
        tmp_path / "r",
        TrainConfig(task=Task.REGRESS, epochs=1, batch_size=2, steps=3, workers=0, device="cpu"),
    )
    row = result.history[0]
    # recomputed from the saved model: the mean distance of the 2 (x, y) points per frame, and the l2 loss
    outputs, batch = _val_outputs(tmp_path / "r", splits, Task.REGRESS, 3)
    errors = (
        (outputs.reshape(*outputs.shape[:2], 2, 2) - batch["targets"].reshape(*outputs.shape[:2], 2, 2))
        .norm(dim=-1)
        .mean(dim=-1)
    )
    assert row["val_clips"] == len(splits.val) == outputs.shape[0]
    assert row["val_mean_error"] == pytest.approx(float(errors.mean()), rel=1e-5)
    assert row["val_loss"] == pytest.approx(float(F.mse_loss(outputs, batch["targets"])), rel=1e-5)
    assert 0.0 <= row["val_auc"] <= 1.0

    (tmp_path / "ctc.jsonl").write_text("\n".join(json.dumps({"path": p, "labels": p.split("/")[1]}) for p in paths))
    splits = discover(tmp_path / "ctc.jsonl", val_fraction=0.25)
    assert splits.class_names == ("<blank>", "left", "right")
    result = train(
        converted(outputs=3),
        splits,
        tmp_path / "c",
        TrainConfig(task=Task.CTC, epochs=1, batch_size=2, steps=4, workers=0, device="cpu"),
    )
    # recomputed from the saved model: best-path decoding by hand (merge repeats, drop blank 0) against the labels
    outputs, batch = _val_outputs(tmp_path / "c", splits, Task.CTC, 4)
    decoded = [tuple(k for k, _ in itertools.groupby(path) if k != 0) for path in outputs.argmax(dim=-1).tolist()]
    truths = [tuple(t.tolist()) for t in batch["sequence"].split(batch["sequence_lengths"].tolist())]
    assert len(truths) == len(splits.val) == result.history[0]["val_clips"]
    assert result.history[0]["val_sequence_accuracy"] == np.mean([d == t for d, t in zip(decoded, truths)])
    assert load_converted(tmp_path / "c" / "last.safetensors").spec.class_names == ("<blank>", "left", "right")


def test_3d_backbone_trains(tmp_path):
    make_clip_tree(tmp_path / "clips", per_class=2, num_frames=8)
    model = converted("digit_c3d", "fc6", CellType.LSTM, sih=True)
    splits = discover(tmp_path / "clips", val_fraction=0.5)
    result = train(
        model, splits, tmp_path / "run", TrainConfig(epochs=1, batch_size=2, steps=2, workers=1, device="cpu")
    )
    row = result.history[0]
    assert (row["train_clips"], row["val_clips"]) == (2, 2) and not result.skipped
    # the recorded val numbers are those of the saved model, recomputed: clip prediction = mean per-step log-probs
    outputs, batch = _val_outputs(tmp_path / "run", splits, Task.CLASSIFY, 2)
    predicted = F.log_softmax(outputs, dim=-1).mean(dim=1).argmax(dim=-1)
    assert row["val_accuracy"] == float((predicted == batch["label"]).float().mean())
    loss = F.cross_entropy(outputs.flatten(0, 1), batch["label"].repeat_interleave(outputs.shape[1]))
    assert row["val_loss"] == pytest.approx(float(loss), rel=1e-5)


@pytest.mark.slow
def test_ddp_two_processes_on_cpu(clips, model_file, tmp_path):
    """`torchrun --nproc_per_node=2` runs gloo DDP; only rank 0 writes; both ranks end with equal weights."""
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [
        str(torchrun),
        "--nproc_per_node=2",
        "--master_port=29517",
        "-m",
        "prernn_cli",
        "train",
        str(model_file),
        "--data",
        str(clips),
        "-o",
        str(tmp_path / "ddp"),
        "--epochs",
        "1",
        "--json",
        *FAST,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)  # one JSON document: rank 1 prints nothing
    row = report["history"][0]
    assert (row["train_clips"], row["val_clips"]) == (6, 2)  # each rank saw half; metrics merged over both
    assert (tmp_path / "ddp" / "last.safetensors").exists()
    rows = (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 1


@pytest.mark.slow
def test_ddp_fills_and_reads_one_trunk_cache(clips, model_file, tmp_path):
    """Both DDP ranks share one trunk cache: an entry per clip (train and val), metrics merged over the ranks."""
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--nproc_per_node=2", "--master_port=29519", "-m", "prernn_cli", "train", str(model_file)]
    cmd += ["--data", str(clips), "-o", str(tmp_path / "ddp"), "--epochs", "2", "--json", *FAST]
    cmd += ["--freeze-trunk", "--trunk-cache", str(tmp_path / "trunk")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    history = json.loads(done.stdout)["history"]
    assert [(row["train_clips"], row["val_clips"]) for row in history] == [(6, 2), (6, 2)]
    assert len(list((tmp_path / "trunk").rglob("*.npy"))) == 8  # 6 train + 2 val clips, each computed once
