"""The README runs as written: every ``$ prernn …`` example, in order, in a fresh folder, its output shaped as shown.

The examples are the ``$ prernn …`` lines of README.md's fenced code blocks, each followed by the output
it shows. They run with ``python -m prernn_cli``, in the README's order, in an empty folder holding a
link to sample_models/, at 80 columns, on the CPU (as the README shows them). Training is shortened:
``--epochs N`` becomes ``--epochs $PRERNN_README_EPOCHS`` (1 unless set); nothing else changes.

Each example must exit 0, cut no text with "…", and print the shape of the output shown (stderr,
then stdout, as a terminal shows them):

* a shown line whose first word has no digit (``checkpoint …``, ``wrote …``, a table row's model name)
  is printed, in the same order, starting with that word;
* a shown line without any digit (column names, titles, ``valid``) is printed with all its words.

Lines of numbers, lines indented more than 4 spaces (a table cell's wrapped text, which depends on the
values) and the "…" lines that stand for elided lines are not compared. HOME and TMPDIR are
empty folders of the test's: afterwards they hold only what the README says stays there.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import REPO, SAMPLES

README = REPO / "README.md"
EPOCHS = os.environ.get("PRERNN_README_EPOCHS", "1")
BOX_DRAWING = re.compile("[\u2500-\u257f]")  # table rules and borders: not words
# What the README ("Files outside this folder") says the examples leave outside the folder they run in.
ALLOWED_IN_HOME = re.compile(r"\.cache(/prernn(/.*)?|/matplotlib(/.*)?)?$|\.config(/matplotlib)?$")
ALLOWED_IN_TMPDIR = re.compile(r"torchinductor_[^/]+$")


@dataclass
class Example:
    command: str  # what follows "$ prernn "
    shown: list[str]  # the output lines shown under it


def readme_examples(text: str) -> list[Example]:
    """The ``$ prernn`` lines of the fenced code blocks, in order, each with the lines shown under it."""
    examples: list[Example] = []
    in_block = False
    for line in text.splitlines():
        if line.startswith("```"):
            in_block = not in_block
            current = None
            continue
        if not in_block:
            continue
        if line.startswith("$ prernn "):
            current = Example(line.removeprefix("$ prernn ").strip(), [])
            examples.append(current)
        elif line.startswith("$ "):
            current = None
        elif current is not None:
            current.shown.append(line)
    return examples


def _words(line: str) -> list[str]:
    return BOX_DRAWING.sub(" ", line).split()


def shape_mismatch(shown: list[str], printed: str) -> str | None:
    """The first line of ``shown`` whose shape ``printed`` lacks (see the module's docstring), or None."""
    lines = [_words(line) for line in printed.splitlines()]
    position = 0
    for line in shown:
        words = _words(line)
        wrapped_cell = len(line) - len(line.lstrip()) > 4
        if not words or words == ["…"] or wrapped_cell or any(c.isdigit() for c in words[0]):
            continue
        whole = not any(c.isdigit() for c in line)
        for index in range(position, len(lines)):
            if lines[index] and lines[index][0] == words[0] and (not whole or set(words) <= set(lines[index])):
                position = index + 1
                break
        else:
            return line.strip()
    return None


def _environment(home: Path, tmp: Path) -> dict[str, str]:
    """This environment at 80 columns on the CPU, with HOME and TMPDIR empty and nothing moved elsewhere."""
    moved = ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "MPLCONFIGDIR", "PRERNN_CACHE_DIR", "TORCHINDUCTOR_CACHE_DIR")
    env = {key: value for key, value in os.environ.items() if key not in moved and not key.startswith("ORT_")}
    env.update(COLUMNS="80", CUDA_VISIBLE_DEVICES="", HOME=str(home), TMPDIR=str(tmp), PYTHONPATH=str(REPO))
    return env


def _left_behind(folder: Path) -> list[str]:
    return sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*"))


def test_readme_examples_are_found():
    examples = readme_examples(README.read_text())
    commands = [example.command.split()[0] for example in examples]
    assert {"inspect", "params", "convert", "train", "evaluate", "export", "stream", "analyze"} <= set(commands)
    assert all(example.shown for example in examples), "every example shows its output"


def test_shape_check_tells_a_different_output():
    shown = ["checkpoint   x.pt", "format       state_dict", " name   type   params", " conv1  Conv2d  864", "…"]
    assert shape_mismatch(shown, "checkpoint x.pt\nformat state_dict\n name type params\n fc Linear 10") is None
    assert shape_mismatch(shown, "checkpoint x.pt\nformat safetensors\n name type params") == "format       state_dict"
    assert shape_mismatch(shown, "checkpoint x.pt\nformat state_dict\n name type") == "name   type   params"
    assert shape_mismatch(shown, "format state_dict\ncheckpoint x.pt\n name type params") == "format       state_dict"


@pytest.mark.slow
def test_readme_runs_as_written(tmp_path):
    folder, home, tmp = tmp_path / "work", tmp_path / "home", tmp_path / "tmp"
    for path in (folder, home, tmp):
        path.mkdir()
    (folder / "sample_models").symlink_to(SAMPLES)
    env = _environment(home, tmp)
    for example in readme_examples(README.read_text()):
        command = re.sub(r"--epochs \d+", f"--epochs {EPOCHS}", example.command)
        done = subprocess.run(
            [sys.executable, "-m", "prernn_cli", *shlex.split(command)],
            cwd=folder, env=env, capture_output=True, text=True, check=False,
        )  # fmt: skip
        printed = done.stderr + done.stdout
        assert done.returncode == 0, f"$ prernn {command}\n{printed}"
        assert "…" not in printed, f"$ prernn {command} cuts text at 80 columns:\n{printed}"
        mismatch = shape_mismatch(example.shown, printed)
        assert mismatch is None, f"$ prernn {command}: no line shaped like {mismatch!r} (in order) in:\n{printed}"
    assert [p for p in _left_behind(home) if not ALLOWED_IN_HOME.match(p)] == []
    assert [p for p in _left_behind(tmp) if not ALLOWED_IN_TMPDIR.match(p)] == []
