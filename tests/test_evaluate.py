"""A trained model remembers how it was trained: evaluate (no flags) reproduces what training reported."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from prernn_cli.checkpoint import load_converted
from prernn_cli.cli import app
from prernn_cli.spec import Task

runner = CliRunner()

# Training settings that differ from every default, so a fallback to a default would show.
COMMON = ["--workers", "0", "--batch-size", "2", "--device", "cpu", "--epochs", "2", "--val-fraction", "0.5"]


def _manifest(root: Path, clips: Path, task: Task) -> Path:
    """A JSONL manifest over the four clips of ``clips``: per-frame targets (regress) or label sequences (ctc)."""
    rows = []
    for k, clip in enumerate(sorted(p for p in clips.glob("*/*") if p.is_dir())):
        if task is Task.REGRESS:
            np.save(root / f"t{k}.npy", np.random.default_rng(k).random((6, 4), dtype=np.float32))
            rows.append({"path": str(clip), "targets": f"t{k}.npy"})
        else:
            rows.append({"path": str(clip), "labels": f"{clip.parent.name} {clip.parent.name}"})
    path = root / f"{task.value}.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in rows))
    return path


CASES = {
    Task.CLASSIFY: (2, ["--steps", "3", "--clip-pool", "last"], "accuracy"),
    Task.REGRESS: (4, ["--steps", "3", "--error-norm", "bbox", "--auc-threshold", "0.5"], "auc"),
    Task.CTC: (3, ["--steps", "5"], "sequence_accuracy"),
}


@pytest.mark.parametrize("task", list(CASES), ids=[t.value for t in CASES])
def test_evaluate_of_best_reproduces_trainings_best_val_metric(task, tmp_path, small_clip_tree, converted_file):
    outputs, settings, metric = CASES[task]
    data = small_clip_tree if task is Task.CLASSIFY else _manifest(tmp_path, small_clip_tree, task)
    run = tmp_path / "run"
    trained = runner.invoke(
        app, ["train", str(converted_file(outputs=outputs)), "--data", str(data), "-o", str(run), *COMMON, *settings]
    )
    assert trained.exit_code == 0, trained.output
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    record = load_converted(run / "best.safetensors").spec.training
    assert record is not None and record.task is task and record.val_fraction == 0.5
    assert record.steps == int(settings[1])

    evaluated = runner.invoke(app, ["evaluate", str(run / "best.safetensors"), "--data", str(data), "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads(evaluated.stdout)
    assert report["settings"]["differs_from_training"] == []
    best_epoch = max(rows, key=lambda row: (row[f"val_{metric}"], -row["val_loss"]))
    best = next(row for row in rows if row["epoch"] == best_epoch["epoch"])
    assert report["metrics"][metric] == best[f"val_{metric}"]
    assert report["metrics"]["loss"] == pytest.approx(best["val_loss"], rel=1e-6)
    assert report["metrics"]["clips"] == best["val_clips"]


def test_a_flag_that_differs_from_training_is_said_and_used(tmp_path, small_clip_tree, model_file):
    run = tmp_path / "run"
    trained = runner.invoke(
        app,
        ["train", str(model_file), "--data", str(small_clip_tree), "-o", str(run), *COMMON, "--steps", "3",
         "--clip-pool", "last"],
    )  # fmt: skip
    assert trained.exit_code == 0, trained.output
    evaluated = runner.invoke(
        app,
        ["evaluate", str(run / "best.safetensors"), "--data", str(small_clip_tree), "--clip-pool", "mean", "--json"],
    )
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads(evaluated.stdout)
    assert report["settings"]["clip_pool"] == "mean" and report["settings"]["steps"] == 3
    assert report["settings"]["differs_from_training"] == ["--clip-pool mean (trained with last)"]
    assert "note: evaluating with --clip-pool mean (trained with last)" in evaluated.stderr


def test_inspect_shows_how_a_model_was_trained(tmp_path, small_clip_tree, model_file):
    run = tmp_path / "run"
    args = ["train", str(model_file), "--data", str(small_clip_tree), "-o", str(run), *COMMON, "--steps", "3"]
    assert runner.invoke(app, args).exit_code == 0
    shown = runner.invoke(app, ["inspect", str(run / "best.safetensors")], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    line = next(line for line in shown.stdout.splitlines() if line.startswith("trained"))
    assert "task classify, T 3, sampling random, clip pool mean, val fraction 0.5" in line
