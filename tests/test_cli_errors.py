"""The CLI's own guard rails: numbers outside their range, text from files printed inert, what --debug shows.

Every case drives the real command line (CliRunner on ``prernn_cli.cli.app``, or ``python -m prernn_cli``
where the real stderr, logging included, matters) on real files.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import traceback
import typing
from pathlib import Path

import pytest
import typer
from typer.models import ParameterInfo
from typer.testing import CliRunner

from helpers import FAST, REPO, moving_square, write_frame_folder
from prernn_cli.cli import app
from prernn_cli.cli.app import handles_errors, settings
from prernn_cli.cli.options import FloatRange
from prernn_cli.errors import UserInputError

runner = CliRunner()
WIDE = {"COLUMNS": "200"}  # no wrapping: a message or a class name stays on one line


def error_line(result) -> str:
    """The only non-blank line on stderr (asserting there is exactly one, and no traceback anywhere)."""
    assert "Traceback" not in result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


# ---------------------------------------------------------------- numbers outside their range

TRAIN = ["train", "m.safetensors", "--data", "clips"]
EVALUATE = ["evaluate", "m.safetensors", "--data", "clips"]
CONVERT = ["convert", "m.pt", "--layer", "fc6"]
OUT_OF_RANGE = [
    (TRAIN, "--lr", "-1"),
    (TRAIN, "--lr", "0"),
    (TRAIN, "--lr", "nan"),
    (TRAIN, "--lr", "inf"),
    (TRAIN, "--lr", "fast"),
    (TRAIN, "--epochs", "0"),
    (TRAIN, "--batch-size", "0"),
    (TRAIN, "--steps", "-1"),  # 0 is the whole clip
    (TRAIN, "--momentum", "2"),
    (TRAIN, "--momentum", "1"),
    (TRAIN, "--weight-decay", "-1"),
    (TRAIN, "--clip-grad", "-1"),
    (TRAIN, "--gamma", "0"),
    (TRAIN, "--gamma", "1.5"),
    (TRAIN, "--val-fraction", "1.5"),
    (TRAIN, "--val-fraction", "1"),
    (TRAIN, "--auc-threshold", "0"),
    (TRAIN, "--pretrained-lr-mult", "-1"),
    (TRAIN, "--warmup-steps", "-1"),
    (TRAIN, "--step-epochs", "0"),
    (TRAIN, "--checkpoint-every", "-1"),
    (TRAIN, "--max-steps", "0"),
    (TRAIN, "--seed", "-1"),
    (TRAIN, "--seed", str(2**32)),
    (TRAIN, "--workers", "-1"),
    (EVALUATE, "--steps", "0"),
    (EVALUATE, "--batch-size", "0"),
    (EVALUATE, "--val-fraction", "-0.5"),
    (EVALUATE, "--auc-threshold", "-1"),
    (EVALUATE, "--workers", "-1"),
    (["analyze", "m.safetensors", "--data", "clips"], "--max-clips", "0"),
    (["analyze", "m.safetensors", "--data", "clips"], "--steps", "0"),
    (["export", "m.safetensors", "--onnx"], "--steps", "0"),
    (["export", "m.safetensors", "--onnx"], "--opset", "0"),
    (["export", "m.safetensors", "--onnx"], "--atol", "-1"),
    (["export", "m.safetensors", "--onnx"], "--rtol", "-1"),
    (["validate", "m.onnx"], "--atol", "nan"),
    (CONVERT, "--num-classes", "0"),
    (CONVERT, "--outputs", "0"),
    (CONVERT, "--hidden-size", "0"),
    (CONVERT, "--seed", "-1"),
    (["params", "--arch", "vgg16", "--layer", "fc6"], "--traditional-layers", "0"),
]


@pytest.mark.parametrize(
    ("command", "option", "value"), OUT_OF_RANGE, ids=[f"{c[0]} {o} {v}" for c, o, v in OUT_OF_RANGE]
)
def test_out_of_range_number_is_a_one_line_usage_error(command, option, value, tmp_path):
    output = tmp_path / "out"
    output_option = ["-o", str(output)] if command[0] in ("train", "convert") else []
    result = runner.invoke(app, [*command, *output_option, option, value], env=WIDE)
    assert result.exit_code == 2, result.output
    line = error_line(result)
    # names the option and what it allows: FloatRange's "not in the range 0<=x<1", Typer's "should be greater ..."
    assert option in line and ("range" in line or "should be" in line), line
    assert result.stdout == ""
    assert not output.exists()


def _numeric_options() -> list[tuple[str, str, type, ParameterInfo]]:
    """(command, parameter, int/float, its Typer info) for every number a command takes."""
    found = []
    for info in app.registered_commands:
        hints = typing.get_type_hints(info.callback, include_extras=True)
        for name, hint in hints.items():
            if typing.get_origin(hint) is not typing.Annotated:
                continue
            base, *extras = typing.get_args(hint)
            kinds = {t for t in (typing.get_args(base) or (base,)) if t is not type(None)}
            if kinds & {int, float}:
                (kind,) = kinds
                (parameter,) = [e for e in extras if isinstance(e, ParameterInfo)]
                found.append((info.name, name, kind, parameter))
    return found


def test_every_numeric_option_has_a_range():
    options = _numeric_options()
    assert len(options) >= 30  # the walk found the commands' options
    unbounded = [
        f"{command} {name}"
        for command, name, kind, parameter in options
        if not (
            isinstance(parameter.parser, FloatRange)
            if kind is float  # Typer's min/max would let nan and inf through
            else parameter.min is not None or parameter.max is not None
        )
    ]
    assert unbounded == []


def test_usage_errors_of_every_kind_are_one_line():
    for args, needle in (
        (["train", "--no-such-option"], "--no-such-option"),
        (["no-such-command"], "no-such-command"),
        (["train", "m.safetensors"], "--data"),  # a required option missing
        (["stream", "m.onnx", "clip", "--provider", "gpu"], "--provider"),
    ):
        result = runner.invoke(app, args, env=WIDE)
        assert result.exit_code == 2, (args, result.output)
        assert needle in error_line(result)


# ---------------------------------------------------------------- --debug, and what handles_errors catches


def test_user_error_is_one_line_without_debug(tmp_path):
    result = runner.invoke(app, ["inspect", str(tmp_path / "missing.pt")], env=WIDE)
    assert result.exit_code == 2
    assert "missing.pt" in error_line(result)


@pytest.mark.parametrize("how", ["--debug", "PRERNN_DEBUG=1"])
def test_debug_shows_the_traceback_of_a_user_error(how, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PRERNN_DEBUG"}
    flags = []
    if how == "--debug":
        flags = ["--debug"]
    else:
        env["PRERNN_DEBUG"] = "1"
    completed = subprocess.run(
        [sys.executable, "-m", "prernn_cli", *flags, "inspect", str(tmp_path / "missing.pt")],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=120,
    )  # fmt: skip
    assert completed.returncode != 0
    assert "Traceback (most recent call last)" in completed.stderr
    assert "missing.pt" in completed.stderr.strip().splitlines()[-1]  # the error itself closes the traceback


def _tiny_app() -> typer.Typer:
    """A one-command app decorated as every prernn command is: it raises what it is told to."""
    tiny = typer.Typer()

    @tiny.command()
    @handles_errors
    def run(kind: str) -> None:
        if kind == "user":
            raise UserInputError("the input is wrong; give another")
        raise ValueError("a programming error")

    return tiny


def test_handles_errors_turns_only_library_errors_into_one_line(monkeypatch):
    monkeypatch.setattr(settings, "debug", False)
    tiny = _tiny_app()
    result = runner.invoke(tiny, ["user"])
    assert result.exit_code == 2
    assert error_line(result) == "error: the input is wrong; give another"

    result = runner.invoke(tiny, ["bug"])
    assert isinstance(result.exception, ValueError)  # not caught: it keeps its traceback
    assert "a programming error" not in result.stderr
    frames = [frame.name for frame in traceback.extract_tb(result.exc_info[2])]
    assert frames[-1] == "run"  # the traceback leads to where the bug is


# ---------------------------------------------------------------- text from files printed inert

MARKUP = "[/bold]x[red]y[/red]"
ESCAPES = "\x1b[2J\x1b]0;title\x07z"


@pytest.fixture(scope="module")
def hostile_names(tmp_path_factory) -> Path:
    """A manifest whose class names are rich markup and terminal escapes; one clip folder's name holds ESC too.

    ``short\\x1b[2J`` has 2 frames, fewer than T: it is skipped, and the skip is logged with its path.
    """
    root = tmp_path_factory.mktemp("hostile")
    rows = []
    for label, direction in ((MARKUP, -1), (ESCAPES, 1)):
        for split, count in (("train", 2), ("val", 1)):
            for k in range(count):
                folder = f"{split}_{direction + 1}_{k}"
                write_frame_folder(root / folder, moving_square(6, direction, seed=k))
                rows.append({"path": folder, "label": label, "split": split})
    write_frame_folder(root / "short\x1b[2J", moving_square(2, 1))
    rows.append({"path": "short\x1b[2J", "label": ESCAPES, "split": "val"})
    with (root / "clips.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, ["path", "label", "split"])
        writer.writeheader()
        writer.writerows(rows)
    return root


def assert_inert(text: str) -> None:
    assert "\x1b" not in text and "\x07" not in text, repr(text)


@pytest.mark.slow
def test_hostile_class_names_are_printed_escaped(hostile_names, model_file, tmp_path):
    manifest = hostile_names / "clips.csv"
    run = tmp_path / "run"
    trained = runner.invoke(
        app, ["train", str(model_file), "--data", str(manifest), "-o", str(run), "--epochs", "1", *FAST], env=WIDE
    )
    assert trained.exit_code == 0, trained.output
    assert_inert(trained.stdout + trained.stderr)
    model = run / "best.safetensors"

    inspected = runner.invoke(app, ["inspect", str(model)], env=WIDE)
    assert inspected.exit_code == 0, inspected.output
    assert_inert(inspected.stdout)
    assert MARKUP in inspected.stdout and "\\x1b[2J\\x1b]0;title\\x07z" in inspected.stdout

    evaluated = runner.invoke(
        app, ["evaluate", str(model), "--data", str(manifest), "--steps", "4", "--device", "cpu"], env=WIDE
    )
    assert evaluated.exit_code == 0, evaluated.output
    assert_inert(evaluated.stdout + evaluated.stderr)
    assert MARKUP in evaluated.stdout and "\\x1b[2J\\x1b]0;title\\x07z" in evaluated.stdout
    assert "short\\x1b[2J" in evaluated.stderr  # the skipped clip, named visibly

    analyzed = runner.invoke(
        app, ["analyze", str(model), "--data", str(manifest), "--steps", "4", "-o", str(tmp_path / "a")], env=WIDE
    )
    assert analyzed.exit_code == 0, analyzed.output
    assert_inert(analyzed.stdout + analyzed.stderr)

    step = tmp_path / "step.onnx"
    exported = runner.invoke(app, ["export", str(model), "--onnx", "--steps", "1", "-o", str(step)], env=WIDE)
    assert exported.exit_code == 0, exported.output
    streamed = runner.invoke(app, ["stream", str(step), str(hostile_names / "val_2_0")], env=WIDE)
    assert streamed.exit_code == 0, streamed.output
    assert_inert(streamed.stdout + streamed.stderr)
    assert MARKUP in streamed.stdout or "\\x1b[2J\\x1b]0;title\\x07z" in streamed.stdout


def test_logged_file_names_are_printed_escaped(hostile_names, model_file, tmp_path):
    """The real stderr of a separate process, where log records about skipped clips land."""
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "PRERNN_DEBUG")}
    completed = subprocess.run(
        [sys.executable, "-m", "prernn_cli", "evaluate", str(model_file), "--data", str(hostile_names / "clips.csv"),
         "--steps", "4", "--device", "cpu", "--workers", "0"],
        capture_output=True, cwd=REPO, env={**env, "COLUMNS": "200"}, timeout=300,
    )  # fmt: skip
    stdout, stderr = completed.stdout.decode(), completed.stderr.decode()
    assert completed.returncode == 0, stderr
    assert_inert(stdout + stderr)
    assert "WARNING" in stderr and "short\\x1b[2J" in stderr  # the log record, with the name made visible
