"""No output lost, none overwriting an input: crashes at every write, full and read-only disks, runs on nothing.

Everything runs the real thing: the CLI on real files, a training run SIGKILLed at each rename of
its files (tests/crash_driver.py), small tmpfs mounts that really fill up or are really read-only.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.torch import load_file
from typer.testing import CliRunner

from helpers import FAST, SAMPLES, make_clip_tree, moving_square, write_frame_folder
from prernn_cli.cli import app
from prernn_cli.files import finite_json

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def _run(*args):
    return runner.invoke(app, [str(arg) for arg in args])


def _one_line_error(result, code: int, *needles: str) -> str:
    """The command failed with ``code`` and exactly one line on stderr (no traceback) holding each needle."""
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in result.output, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _strict_json(text: str):
    """Parse JSON as the standard says: NaN and Infinity are not JSON."""

    def refuse(constant):
        raise AssertionError(f"{constant} in JSON output")

    return json.loads(text, parse_constant=refuse)


def _tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones too) and its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- a checkpoint is one committed unit

CONFIG = dict(epochs=2, batch_size=2, steps=4, workers=0, device="cpu", checkpoint_every=2)
# 6 training clips, batch 2: 3 steps an epoch. Saves at step 2 (mid-epoch: renames 1-2), at the end of
# epoch 1 (renames 3-7), at step 4 (8-9) and at the end (10-14). Killed before rename 1 nothing is
# committed; before rename n > 1 the disk is as after rename n - 1 plus a temporary file, which
# "before 3" covers; after each rename of the first two saves, every mix of old and new files.
POINTS = [("before", 1), ("after", 1), ("after", 2), ("before", 3), *[("after", n) for n in range(3, 8)]]
COMMITTED_ORDER = [
    "last.state.pt",
    "last.safetensors",
    "last.state.pt",
    "last.safetensors",
    "best.safetensors",
    "metrics.jsonl",
    "curves.png",
]


@pytest.fixture(scope="module")
def crashes(tmp_path_factory, converted_file) -> tuple[Path, dict]:
    """One driver process: the reference run, then a kill and a resume for each point of POINTS."""
    work = tmp_path_factory.mktemp("crashes")
    make_clip_tree(work / "clips" / "train", per_class=3, num_frames=6)
    make_clip_tree(work / "clips" / "val", per_class=1, num_frames=6)
    command = [
        sys.executable,
        str(ROOT / "tests" / "crash_driver.py"),
        str(converted_file()),
        str(work / "clips"),
        str(work),
        json.dumps(CONFIG),
        json.dumps(POINTS),
    ]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return work, json.loads(done.stdout.strip().splitlines()[-1])


def _same_model(a: Path, b: Path) -> None:
    """Equal tensors, bit for bit, and equal metadata (its key order in the file may differ)."""
    left, right = load_file(str(a)), load_file(str(b))
    assert left.keys() == right.keys()
    for key in left:
        assert left[key].dtype == right[key].dtype and left[key].equal(right[key]), key
    with safe_open(str(a), framework="pt") as one, safe_open(str(b), framework="pt") as other:
        assert one.metadata() == other.metadata()


def _rows(path: Path) -> list[dict]:
    timing = ("seconds", "clips_per_s")
    return [{k: v for k, v in _strict_json(line).items() if k not in timing} for line in path.read_text().splitlines()]


def test_a_checkpoint_commits_its_training_state_before_anything_else(crashes):
    work, results = crashes
    assert results["reference"] == 0
    renames = json.loads((work / "renames.json").read_text())
    assert renames[: len(COMMITTED_ORDER)] == COMMITTED_ORDER
    assert renames.count("last.state.pt") == 4 and renames[-2:] == ["metrics.jsonl", "curves.png"]


@pytest.mark.parametrize("when, n", POINTS, ids=[f"{when}-rename-{n}" for when, n in POINTS])
def test_killed_at_any_write_resumes_to_the_uninterrupted_run(crashes, when, n):
    work, results = crashes
    run, reference = work / f"{when}{n}", work / "reference"
    error = work / f"{when}{n}.error"
    assert results[f"{when}{n}"] == {"killed": -9, "resumed": 0}, error.read_text() if error.exists() else ""
    assert sorted(p.name for p in run.iterdir()) == sorted(p.name for p in reference.iterdir())  # no .tmp left
    _same_model(run / "last.safetensors", reference / "last.safetensors")
    _same_model(run / "best.safetensors", reference / "best.safetensors")
    assert _rows(run / "metrics.jsonl") == _rows(reference / "metrics.jsonl")


# ---------------------------------------------------------------- no output overwrites an input


def _output_naming(how: str, source: Path, tmp_path: Path) -> Path:
    """A path that leads to ``source``: itself, a symlink, a detour through ``..``, or a hard link."""
    if how == "same":
        return source
    if how == "symlink":
        link = tmp_path / "elsewhere" / f"link{source.suffix}"
        link.parent.mkdir(exist_ok=True)
        link.symlink_to(source)
        return link
    if how == "dotdot":
        (source.parent / "sub").mkdir(exist_ok=True)
        return source.parent / "sub" / ".." / source.name
    link = tmp_path / "elsewhere" / f"hard{source.suffix}"
    link.parent.mkdir(exist_ok=True)
    os.link(source, link)
    return link


WAYS = ["same", "symlink", "dotdot", "hardlink"]


@pytest.mark.parametrize("how", WAYS)
def test_convert_refuses_an_output_that_is_its_checkpoint(tmp_path, how):
    checkpoint = tmp_path / "in" / "digit_vgg.pt"
    checkpoint.parent.mkdir()
    shutil.copy(SAMPLES / "digit_vgg.pt", checkpoint)
    output = _output_naming(how, checkpoint, tmp_path)
    before = _tree(tmp_path)
    result = _run("convert", checkpoint, "--layer", "fc6", "--cell", "gru", "-o", output)
    _one_line_error(result, 2, "would overwrite the input")
    assert _tree(tmp_path) == before


def test_an_output_that_is_a_device_is_refused_not_replaced():
    result = _run("convert", SAMPLES / "digit_vgg.pt", "--layer", "fc6", "--cell", "gru", "-o", os.devnull)
    _one_line_error(result, 2, "not a regular file")
    assert Path(os.devnull).is_char_device()


@pytest.mark.parametrize("how", WAYS)
def test_export_refuses_an_output_that_is_its_model(tmp_path, model_file, how):
    model = tmp_path / "in" / "m.safetensors"
    model.parent.mkdir()
    shutil.copy(model_file, model)
    output = _output_naming(how, model, tmp_path)
    before = _tree(tmp_path)
    result = _run("export", model, "--onnx", "--steps", "2", "-o", output)
    _one_line_error(result, 2, "would overwrite the input")
    assert _tree(tmp_path) == before


def test_export_refuses_writing_over_or_into_its_clip(tmp_path, model_file, small_clip_tree):
    clip = small_clip_tree / "left" / "clip0"
    before = _tree(tmp_path)
    result = _run("export", model_file, "--onnx", "--steps", "2", "--clip", clip, "-o", clip / "m.onnx")
    _one_line_error(result, 2, "inside the input folder")
    video = tmp_path / "clip.mkv"
    video.write_bytes(b"not a video, but an input all the same")
    before = _tree(tmp_path)
    result = _run("export", model_file, "--onnx", "--steps", "2", "--clip", video, "-o", video)
    _one_line_error(result, 2, "would overwrite the input")
    assert _tree(tmp_path) == before


def _train(model: Path, data: Path, run: Path, *extra):
    return _run("train", model, "--data", data, "-o", run, "--epochs", "1", "--json", *FAST, *extra)  # --json: no bars


def test_train_refuses_a_run_folder_over_its_inputs(tmp_path, model_file, small_clip_tree):
    before = _tree(tmp_path)
    _one_line_error(_train(model_file, small_clip_tree, small_clip_tree), 2, "would overwrite the input")
    _one_line_error(_train(model_file, small_clip_tree, small_clip_tree / "run"), 2, "inside the input folder")
    # the model is the file the run would write as last.safetensors: by its path, and by a hard link
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(model_file, run / "last.safetensors")
    _one_line_error(_train(run / "last.safetensors", small_clip_tree, run), 2, "would overwrite the input")
    model = tmp_path / "model.safetensors"
    os.link(run / "last.safetensors", model)
    before = _tree(tmp_path)
    _one_line_error(_train(model, small_clip_tree, run), 2, "would overwrite the input")
    assert _tree(tmp_path) == before


def test_train_keeps_an_earlier_run_unless_resumed_or_overwritten(tmp_path, model_file, small_clip_tree):
    run = tmp_path / "run"
    two_epochs = ["--epochs", "2"]  # one step each: --max-steps 1 stops after the first
    assert _train(model_file, small_clip_tree, run, *two_epochs, "--max-steps", "1").exit_code == 0
    earlier = _tree(run)
    result = _train(model_file, small_clip_tree, run, *two_epochs)
    _one_line_error(result, 2, "already holds a run", f"--resume {run}", "--overwrite")
    assert _tree(run) == earlier
    result = _train(model_file, small_clip_tree, run, *two_epochs, "--resume", run / "last.safetensors")
    assert result.exit_code == 0, result.output
    assert [row["step"] for row in _strict_json(result.stdout)["history"]] == [1, 2]  # the earlier run went on
    # 4 training clips, 2 steps an epoch: stopped mid-epoch, the new run has written only its checkpoint
    result = _train(model_file, small_clip_tree, run, "--overwrite", "--val-fraction", "0", "--max-steps", "1")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in run.iterdir()) == ["last.safetensors", "last.state.pt"]  # nothing of the old run


def test_train_into_an_existing_file_is_one_line_exit_2(tmp_path, model_file, small_clip_tree):
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    _one_line_error(_train(model_file, small_clip_tree, target), 2, "is a file")
    assert target.read_text() == "keep me"


def test_evaluate_and_analyze_refuse_report_folders_over_their_inputs(tmp_path, model_file, small_clip_tree):
    report = tmp_path / "report"
    report.mkdir()
    os.link(model_file, report / "evaluation_val.json")  # the report file would be the model itself
    os.link(model_file, report / "summary.json")
    before = _tree(tmp_path)
    common = ["--data", small_clip_tree, "--device", "cpu"]
    result = _run("evaluate", model_file, *common, "--steps", "4", "-o", report)
    _one_line_error(result, 2, "would overwrite the input")
    _one_line_error(_run("evaluate", model_file, *common, "-o", small_clip_tree / "r"), 2, "inside the input folder")
    _one_line_error(_run("analyze", model_file, *common, "-o", report), 2, "would overwrite the input")
    _one_line_error(_run("analyze", model_file, *common, "-o", small_clip_tree), 2, "would overwrite the input")
    assert _tree(tmp_path) == before


# ---------------------------------------------------------------- training on nothing, and no NaN in JSON


def _unreadable(root: Path) -> None:
    for name in ("left", "right"):
        for k in range(2):
            (root / name).mkdir(parents=True, exist_ok=True)
            (root / name / f"clip{k}.mp4").write_bytes(b"\x00not a video" * 40)


@pytest.mark.parametrize("kind", ["too_short", "unreadable", "manifest"])
def test_training_on_no_usable_clip_exits_2_before_writing_anything(tmp_path, model_file, kind):
    data = tmp_path / "clips"
    if kind == "too_short":
        make_clip_tree(data, per_class=2, num_frames=2)
        needles = ["all 4 training clips were skipped", "4 too short (need 4 frames for --steps 4)", "lower --steps"]
    else:
        _unreadable(data)
        needles = ["all 4 training clips were skipped", "4 unusable (first:", "cannot decode video", "clip"]
    if kind == "manifest":
        rows = [{"path": f"clips/{c}/clip{k}.mp4", "label": c} for c in ("left", "right") for k in range(2)]
        data = tmp_path / "rows.jsonl"
        data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    run = tmp_path / "out" / "run"
    result = _train(model_file, data, run, "--val-fraction", "0", "--checkpoint-every", "1")
    _one_line_error(result, 2, *needles)
    assert not (tmp_path / "out").exists()  # the run folder it made (and its parent) went with the failure


def test_json_the_tool_writes_has_null_where_a_number_is_not_finite(tmp_path, model_file):
    data = tmp_path / "clips"
    make_clip_tree(data / "train", per_class=2, num_frames=6)
    for name, direction in (("left", -1), ("right", 1)):  # every val clip too short: val loss is NaN
        write_frame_folder(data / "val" / name / "short", moving_square(2, direction))
    run = tmp_path / "run"
    result = _train(model_file, data, run, "--json")
    assert result.exit_code == 0, result.output
    report = _strict_json(result.stdout)
    row = _strict_json((run / "metrics.jsonl").read_text().splitlines()[0])
    assert row["val_loss"] is None and row["val_clips"] == 0 and row["train_clips"] == 4
    assert report["history"][0]["val_loss"] is None and report["best"]["metric"] == "train_accuracy"
    values = {"nan": float("nan"), "inf": np.float32("inf"), "nested": [(-float("inf"), np.float64(2.5))], "n": 3}
    assert _strict_json(finite_json(values)) == {"nan": None, "inf": None, "nested": [[None, 2.5]], "n": 3}


# ---------------------------------------------------------------- disk full, read-only folders


@pytest.fixture
def small_disk(tmp_path):
    """``small_disk(size, read_only=False)``: a real tmpfs of ``size`` mounted under tmp_path (root only)."""
    mounted: list[Path] = []

    def mount(size: str = "64k", read_only: bool = False) -> Path:
        if os.geteuid() != 0:
            pytest.skip("mounting a small tmpfs needs root: a real full disk cannot be made otherwise")
        folder = tmp_path / f"disk{len(mounted)}"
        folder.mkdir()
        options = f"size={size}" + (",ro" if read_only else "")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"mount -t tmpfs is not permitted here ({done.stderr.decode().strip()[:80]})")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", str(folder)], check=True)


def test_convert_on_a_full_disk_is_one_line_exit_1_and_leaves_nothing(small_disk):
    disk = small_disk()
    output = disk / "m.safetensors"
    result = _run("convert", SAMPLES / "digit_vgg.pt", "--layer", "fc6", "--cell", "gru", "-o", output)
    _one_line_error(result, 1, f"cannot write {output}: No space left on device")
    assert list(disk.iterdir()) == []


def test_export_on_a_full_disk_is_one_line_exit_1_and_leaves_nothing(small_disk, model_file):
    disk = small_disk()
    output = disk / "m.onnx"
    result = _run("export", model_file, "--onnx", "--steps", "2", "-o", output)
    _one_line_error(result, 1, f"cannot write {output}: No space left on device")
    assert list(disk.iterdir()) == []


def test_train_on_a_full_disk_is_one_line_exit_1_and_leaves_no_run_folder(small_disk, model_file, small_clip_tree):
    disk = small_disk()
    run = disk / "run"
    result = _train(model_file, small_clip_tree, run)
    _one_line_error(result, 1, f"cannot write {run / 'last.state.pt'}: No space left on device")
    assert list(disk.iterdir()) == []


def test_train_into_a_read_only_folder_is_one_line_exit_1(tmp_path, small_disk, model_file, small_clip_tree):
    if os.geteuid() == 0:  # root writes through permission bits: only a read-only mount stops it
        folder, cause = small_disk(read_only=True), "Read-only file system"
    else:
        folder, cause = tmp_path / "ro", "Permission denied"
        folder.mkdir(mode=0o555)
    result = _train(model_file, small_clip_tree, folder / "run")
    _one_line_error(result, 1, f"cannot write run folder {folder / 'run'}: {cause}")
    result = _train(model_file, small_clip_tree, folder)
    _one_line_error(result, 1, f"cannot write run folder {folder}: {cause}")
    assert list(folder.iterdir()) == []
