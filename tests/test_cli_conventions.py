"""One set of command-line conventions, checked on every command (walked from the app, not listed by hand).

The rules (README, "Commands"):

* an on/off option is a flag (``--sih``, ``--amp / --no-amp``), and help shows it without a value;
* positional arguments have upper-case names: a converted model is ``MODEL``, a checkpoint
  ``CHECKPOINT``, an exported file ``ONNX_MODEL``, a clip ``CLIP``;
* every command that chooses time steps takes ``-T/--steps``;
* every command that runs a network over clips in torch takes ``--device``, default ``auto``;
* ``-o/--output`` is required where the file is the point of the command (convert, train), and
  optional elsewhere with its default stated in the help;
* ``--json`` prints one JSON document, on every command;
* help is whole at 80 columns and when piped: no line wider, no name cut with "…".
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import typer.main
from typer.testing import CliRunner

from helpers import REPO, SAMPLES
from prernn_cli.cli import app

runner = CliRunner()
CLI = typer.main.get_command(app)
COMMANDS = dict(CLI.commands)

ARGUMENTS = {
    "inspect": ["CHECKPOINT"],
    "params": ["CHECKPOINT"],
    "convert": ["CHECKPOINT"],
    "train": ["MODEL"],
    "evaluate": ["MODEL"],
    "fuse": ["MODEL"],
    "export": ["MODEL"],
    "validate": ["ONNX_MODEL"],
    "stream": ["ONNX_MODEL", "CLIP"],
    "analyze": ["MODEL"],
}
RUN_A_NETWORK_OVER_CLIPS = {"train", "evaluate", "fuse", "analyze"}
OUTPUT_IS_THE_POINT = {"convert", "train"}


def _options(command) -> list:
    return [param for param in command.params if param.param_type_name == "option"]


def _option(command, name: str):
    return next((param for param in _options(command) if name in param.opts), None)


def test_every_command_is_covered():
    assert set(COMMANDS) == set(ARGUMENTS)


@pytest.mark.parametrize("name", sorted(ARGUMENTS))
def test_on_off_options_are_flags(name):
    for param in _options(COMMANDS[name]):
        if isinstance(param.default, bool):
            assert param.is_flag, f"{name} {param.opts[0]} takes a value; make it a flag"


@pytest.mark.parametrize("name", sorted(ARGUMENTS))
def test_arguments_have_the_one_name_for_their_kind(name):
    arguments = [param for param in COMMANDS[name].params if param.param_type_name == "argument"]
    assert [param.metavar for param in arguments] == ARGUMENTS[name]
    usage = runner.invoke(app, [name, "--help"], env={"COLUMNS": "200"}).stdout.splitlines()[1]
    assert re.search(r"Usage: prernn \w+ \[OPTIONS\] (\[?[A-Z_]+(\.\.\.)?\]? ?)+$", usage.strip()), usage


@pytest.mark.parametrize("name", sorted(ARGUMENTS))
def test_steps_have_the_short_name_T(name):
    steps = _option(COMMANDS[name], "--steps")
    assert steps is None or "-T" in steps.opts


def test_commands_that_run_a_network_over_clips_take_device_auto():
    with_device = {name for name, command in COMMANDS.items() if _option(command, "--device") is not None}
    assert with_device == RUN_A_NETWORK_OVER_CLIPS
    for name in with_device:
        assert _option(COMMANDS[name], "--device").default == "auto", name


@pytest.mark.parametrize("name", sorted(ARGUMENTS))
def test_output_is_required_only_where_it_is_the_point(name):
    output = _option(COMMANDS[name], "--output")
    if output is None:
        assert name not in OUTPUT_IS_THE_POINT
        return
    assert "-o" in output.opts
    assert output.required == (name in OUTPUT_IS_THE_POINT)
    if not output.required:
        assert "Default:" in output.help, f"{name} -o: say what is written without it"


@pytest.mark.parametrize("name", sorted(ARGUMENTS))
def test_json_is_one_document_everywhere(name):
    option = _option(COMMANDS[name], "--json")
    assert option is not None and option.is_flag and "one JSON document" in option.help


@pytest.mark.parametrize("name", [None, *sorted(ARGUMENTS)])
def test_help_is_whole_at_80_columns(name):
    argv = [name, "--help"] if name else ["--help"]
    result = runner.invoke(app, argv, env={"COLUMNS": "80"})
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "…" not in result.stdout and "<bool>" not in result.stdout
    command = COMMANDS[name] if name else CLI
    words = set(re.findall(r"[\w/.,:|{}-]+", result.stdout))
    for param in command.params:
        for opt in (*param.opts, *param.secondary_opts):
            if opt.startswith("-"):
                assert opt in words or f"{opt}," in words, f"{opt} is not shown whole"


def test_piped_help_is_80_columns_wide_and_whole():
    env = {key: value for key, value in os.environ.items() if key not in ("COLUMNS", "TERMINAL_WIDTH")}
    done = subprocess.run(
        [sys.executable, "-m", "prernn_cli", "train", "--help"],
        cwd=REPO, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert max(len(line) for line in done.stdout.splitlines()) <= 80
    assert "…" not in done.stdout and "--pretrained-lr-mult FLOAT" in done.stdout
    assert "--augment / --no-augment" in done.stdout and "--amp / --no-amp" in done.stdout


@pytest.mark.slow
def test_export_writes_onnx_without_being_told_and_stream_json_is_one_document(tmp_path, model_file):
    step = tmp_path / "model.step.onnx"
    exported = runner.invoke(app, ["export", str(model_file), "--steps", "1", "-o", str(step), "--json"])
    assert exported.exit_code == 0, exported.stderr
    assert json.loads(exported.stdout)["validation"]["passed"] and step.is_file()
    clip = SAMPLES / "clips" / "val" / "left" / "pair000_left"
    streamed = runner.invoke(app, ["stream", str(step), str(clip), "--json"])
    assert streamed.exit_code == 0, streamed.stderr
    document = json.loads(streamed.stdout)  # the whole output parses as one document
    assert [p["step"] for p in document["predictions"]] == list(range(16))
    assert document["provider"]["provider"] in ("cpu", "cuda") and streamed.stderr == ""
