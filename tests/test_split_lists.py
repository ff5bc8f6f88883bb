"""UCF101/HMDB51 split lists (``--split-file``) and the group-aware holdout (``--group-by``), on tiny fake layouts.

The layouts are real files named as the datasets name them: short PNG frame folders, and a few
tiny ffv1 videos, under class folders, with the datasets' own list files (CRLF line ends as shipped).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from helpers import FAST, moving_square, write_frame_folder, write_video
from prernn_cli.cli import app
from prernn_cli.data import discover
from prernn_cli.errors import DataError, UserInputError

runner = CliRunner()
WIDE = {"COLUMNS": "200"}
UCF_CLASSES = ("ApplyEyeMakeup", "Archery")
GROUP = re.compile(r"_g(\d+)_")


def error_line(result) -> str:
    assert "Traceback" not in result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def _ucf_clip(data: Path, name: str, clip: str, direction: int, seed: int, video: bool = False) -> None:
    frames = moving_square(6, direction, seed=seed)
    if video:
        write_video(data / name / f"{clip}.mkv", frames)  # listed as .avi: found with another video suffix
    else:
        write_frame_folder(data / name / clip, frames)  # frames extracted: found as a folder


@pytest.fixture
def ucf(tmp_path) -> dict:
    """UCF101 in small: 2 classes x groups 1..4 x 2 clips; split 1 tests groups 1, trains on 2..4."""
    data, lists = tmp_path / "UCF-101", tmp_path / "ucfTrainTestlist"
    lists.mkdir()
    train, test = [], []
    for label, name in enumerate(UCF_CLASSES, start=1):
        for group in range(1, 5):
            for c in range(1, 3):
                clip = f"v_{name}_g{group:02d}_c{c:02d}"
                _ucf_clip(data, name, clip, 1 if label == 1 else -1, seed=group * 10 + c, video=(group, c) == (2, 1))
                (test if group == 1 else train).append((f"{name}/{clip}.avi", label))
    (lists / "classInd.txt").write_bytes("".join(f"{i} {n}\r\n" for i, n in enumerate(UCF_CLASSES, start=1)).encode())
    (lists / "trainlist01.txt").write_bytes("".join(f"{p} {lab}\r\n" for p, lab in train).encode())
    (lists / "testlist01.txt").write_bytes("".join(f"{p}\r\n" for p, _ in test).encode())
    return {"data": data, "lists": lists, "train": train, "test": test}


@pytest.fixture
def hmdb(tmp_path) -> dict:
    """HMDB51 in small: 2 classes, 4 videos each; split 1 marks 2 train, 1 test, 1 unused per class."""
    data, splits = tmp_path / "hmdb51", tmp_path / "testTrainMulti_7030_splits"
    splits.mkdir()
    for k, name in enumerate(("brush_hair", "cartwheel")):
        codes = ["1", "1", "2", "0"]
        for i in range(len(codes)):
            write_video(data / name / f"{name}_clip{i}.avi", moving_square(6, 1 if k else -1, seed=i))
        (splits / f"{name}_test_split1.txt").write_text(
            "".join(f"{name}_clip{i}.avi {code} \n" for i, code in enumerate(codes))
        )
        (splits / f"{name}_test_split2.txt").write_text(  # another split: not read for split 1
            "".join(f"{name}_clip{i}.avi {'2' if i == 0 else '1'} \n" for i in range(4))
        )
    return {"data": data, "splits": splits}


# ---------------------------------------------------------------- UCF101


def test_ucf101_lists_give_train_and_test_with_labels_from_classind(ucf):
    splits = discover(ucf["data"], split_file=ucf["lists"] / "trainlist01.txt")
    assert splits.class_names == UCF_CLASSES and splits.source == "UCF101 split 1"
    assert len(splits.train) == len(ucf["train"]) == 12 and len(splits.val) == len(ucf["test"]) == 4
    assert all("_g01_" in c.path.name for c in splits.val) and not any("_g01_" in c.path.name for c in splits.train)
    assert {(c.path.parent.name, c.label) for c in splits.train} == {("ApplyEyeMakeup", 0), ("Archery", 1)}
    assert any(c.path.suffix == ".mkv" for c in splits.train)  # the .avi listed, the .mkv found
    assert all(c.path.exists() for c in splits.train + splits.val)
    again = discover(ucf["data"], split_file=ucf["lists"] / "testlist01.txt")  # either list names split 1
    assert [c.path for c in again.train] == [c.path for c in splits.train]


def test_ucf101_label_disagreeing_with_folder_is_an_error(ucf):
    path = ucf["lists"] / "trainlist01.txt"
    path.write_text(path.read_text().replace("ApplyEyeMakeup_g02_c01.avi 1", "ApplyEyeMakeup_g02_c01.avi 2", 1))
    with pytest.raises(DataError, match="label 2 but the clip's folder is ApplyEyeMakeup"):
        discover(ucf["data"], split_file=path)


@pytest.mark.parametrize(
    "damage, message",
    [
        ("missing clip", "1 clip(s) listed in"),
        ("no classInd", "classInd.txt beside them"),
        ("no testlist", "testlist01.txt is missing"),
        ("other name", "is neither a UCF101 list"),
    ],
)
def test_ucf101_broken_layouts_are_one_line_errors(ucf, damage, message, tmp_path):
    split_file = ucf["lists"] / "trainlist01.txt"
    if damage == "missing clip":
        with split_file.open("a") as handle:
            handle.write("Archery/v_Archery_g09_c01.avi 2\r\n")
    elif damage == "no classInd":
        (ucf["lists"] / "classInd.txt").unlink()
    elif damage == "no testlist":
        (ucf["lists"] / "testlist01.txt").unlink()
    else:
        split_file = split_file.rename(ucf["lists"] / "mylist.txt")
    result = runner.invoke(
        app, ["train", str(tmp_path / "none.safetensors"), "--data", str(ucf["data"]), "--split-file",
              str(split_file), "-o", str(tmp_path / "run")], env=WIDE,
    )  # fmt: skip
    assert result.exit_code == 2 and message in error_line(result)
    assert not (tmp_path / "run").exists()


def test_train_evaluate_analyze_read_the_ucf101_split(ucf, converted_file, tmp_path):
    model = converted_file(cell="lstm", sih=False)
    split = ["--data", str(ucf["data"]), "--split-file", str(ucf["lists"] / "trainlist01.txt")]
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", str(model), *split, "-o", str(run), "--epochs", "1", *FAST, "--json"])
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)["history"][0]
    assert (row["train_clips"], row["val_clips"]) == (12, 4)
    result = runner.invoke(app, ["evaluate", str(run / "last.safetensors"), *split, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["metrics"]["clips"] == 4
    result = runner.invoke(app, ["analyze", str(run / "last.safetensors"), *split, "-o", str(tmp_path / "a"), "--json"])
    assert result.exit_code == 0, result.output
    analysis = json.loads(result.stdout)["models"][0]
    assert analysis["clips"] == 4 and analysis["performance"]["clips"] == 4  # the test list's clips


# ---------------------------------------------------------------- HMDB51


def test_hmdb51_split_files_mark_train_test_and_unused(hmdb):
    splits = discover(hmdb["data"], split_file=hmdb["splits"] / "cartwheel_test_split1.txt")
    assert splits.class_names == ("brush_hair", "cartwheel") and splits.source == "HMDB51 split 1"
    assert sorted(c.path.name for c in splits.train) == [
        "brush_hair_clip0.avi", "brush_hair_clip1.avi", "cartwheel_clip0.avi", "cartwheel_clip1.avi"
    ]  # fmt: skip
    assert sorted(c.path.name for c in splits.val) == ["brush_hair_clip2.avi", "cartwheel_clip2.avi"]
    assert {c.label for c in splits.val} == {0, 1}
    other = discover(hmdb["data"], split_file=hmdb["splits"] / "brush_hair_test_split2.txt")
    assert len(other.train) == 6 and len(other.val) == 2  # split 2's own marks


def test_hmdb51_bad_code_is_an_error(hmdb):
    path = hmdb["splits"] / "brush_hair_test_split1.txt"
    path.write_text(path.read_text().replace(" 0 ", " 3 "))
    with pytest.raises(DataError, match="1|2|0"):
        discover(hmdb["data"], split_file=path)


# ---------------------------------------------------------------- group-aware holdout


def _grouped_folder(root: Path, groups: int = 5, clips: int = 2) -> Path:
    for k, name in enumerate(UCF_CLASSES):
        for g in range(1, groups + 1):
            for c in range(1, clips + 1):
                write_frame_folder(root / name / f"v_{name}_g{g:02d}_c{c:02d}", moving_square(4, 1 - 2 * k, seed=c))
    return root


def test_group_by_holds_out_whole_groups(tmp_path):
    data = _grouped_folder(tmp_path / "clips")
    splits = discover(data, val_fraction=0.4, group_by=r"_g(\d+)_")
    train_groups = {GROUP.search(c.path.name).group(1) for c in splits.train}
    val_groups = {GROUP.search(c.path.name).group(1) for c in splits.val}
    assert len(val_groups) == 2 and not train_groups & val_groups  # 40% of 5 groups, none on both sides
    assert len(splits.val) == 2 * 2 * 2  # every clip of a held-out group, in both classes
    assert [c.path for c in discover(data, val_fraction=0.4, group_by=r"_g(\d+)_").val] == [c.path for c in splits.val]
    plain = discover(data, val_fraction=0.4)  # clip by clip: groups leak across the split
    leaked = {GROUP.search(c.path.name).group(1) for c in plain.train} & {
        GROUP.search(c.path.name).group(1) for c in plain.val
    }
    assert leaked


def test_group_by_errors(tmp_path):
    data = _grouped_folder(tmp_path / "clips", groups=3)
    with pytest.raises(UserInputError, match="not a regular expression"):
        discover(data, group_by="_g(")
    with pytest.raises(DataError, match="does not match --group-by"):
        discover(data, group_by=r"_x(\d+)_")
    with pytest.raises(DataError, match="one group"):
        discover(data, group_by=r"(v_)")


def test_evaluate_holds_out_the_groups_training_held_out(tmp_path, model_file):
    data = _grouped_folder(tmp_path / "clips", groups=5, clips=1)
    run = tmp_path / "run"
    result = runner.invoke(
        app, ["train", str(model_file), "--data", str(data), "-o", str(run), "--epochs", "1", "--val-fraction", "0.4",
              "--group-by", r"_g(\d+)_", *FAST, "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["history"][0]["val_clips"] == 4  # 2 of 5 groups x 2 classes
    result = runner.invoke(app, ["evaluate", str(run / "last.safetensors"), "--data", str(data), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["metrics"]["clips"] == 4  # the recorded --group-by, not a clip-wise holdout
    result = runner.invoke(app, ["train", str(model_file), "--data", str(data), "-o", str(tmp_path / "r2"),
                                 "--group-by", "_g(", *FAST], env=WIDE)  # fmt: skip
    assert result.exit_code == 2 and "--group-by" in error_line(result)
