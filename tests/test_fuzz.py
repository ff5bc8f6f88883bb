"""Fuzzing what commands read: a converted model's header and spec, manifests, and frame folders.

Hypothesis mutates real files (a converted model, a manifest, a clip tree) and the real command runs
on them in-process. Whatever the mutation, a command ends in exit 0 or 2: on a failure one line on
stderr, no traceback, nothing left in its output folder; and its inputs are byte-identical afterwards.
Examples are derandomized (the same ones on every run); ``@example`` keeps the ones that once failed.
``PRERNN_FUZZ_EXAMPLES=500`` runs more examples per test; ``PRERNN_FUZZ_RANDOM=1`` draws new ones on each
run (pytest prints the ``--hypothesis-seed`` that repeats a failure).
"""

from __future__ import annotations

import copy
import csv
import hashlib
import io
import json
import os
import shutil
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

from helpers import FAST, make_clip_tree
from prernn_cli.cli import app
from prernn_cli.spec import SPEC_METADATA_KEY

runner = CliRunner()
EXAMPLES = int(os.environ.get("PRERNN_FUZZ_EXAMPLES", "12"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=os.environ.get("PRERNN_FUZZ_RANDOM") != "1",
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
# values that stand where a number, a string, a list or an object was
HOSTILE = st.sampled_from(
    [None, True, -1, 0, 2**63, 2**64 + 7, 1e308, -1e308, 0.5, "12", "", "x" * 3000, "os:abort", "../../etc/passwd",
     [], {}, [[[[[[]]]]]], {"a": {"b": {"c": [1]}}}, [0, "4"], ["0", 4], [2**64, 0], [-4, 4], "\x1b[2J", "[/bold]"]
)  # fmt: skip


# ---------------------------------------------------------------- checking one run


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` by its SHA-256: compared before and after a command."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def check_run(args: list[str], inputs: Path, output: Path | None = None):
    """Run ``prernn *args``; assert the outcome is clean (see the module docstring). The result."""
    before = snapshot(inputs)
    result = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code in (0, 2), (result.exit_code, result.stderr, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.stdout + result.stderr
    if result.exit_code != 0:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
        if output is not None:
            left = [p for p in output.rglob("*") if p.is_file()] if output.exists() else []
            assert left == [], left
    assert snapshot(inputs) == before, "an input changed"
    return result


# ---------------------------------------------------------------- mutating JSON documents


def json_paths(document, prefix: tuple = ()) -> list[tuple]:
    """Every place in a JSON document: the key/index path of each value, the document itself first."""
    paths = [prefix]
    if isinstance(document, dict):
        for key, value in document.items():
            paths += json_paths(value, (*prefix, key))
    elif isinstance(document, list):
        for index, value in enumerate(document):
            paths += json_paths(value, (*prefix, index))
    return paths


def mutate(document, path: tuple, operation: str, value):
    """A copy of ``document`` with the value at ``path`` dropped, replaced, stringified or wrapped."""
    if not path:
        return value if operation != "wrap" else [document]
    document = copy.deepcopy(document)
    parent = document
    for key in path[:-1]:
        parent = parent[key]
    key = path[-1]
    if operation == "drop":
        del parent[key]
    elif operation == "replace":
        parent[key] = value
    elif operation == "stringify":
        parent[key] = json.dumps(parent[key])
    else:  # wrap: one more level of nesting
        parent[key] = [parent[key]]
    return document


@st.composite
def json_mutations(draw, document) -> object:
    paths = json_paths(document)
    path = paths[draw(st.integers(0, len(paths) - 1))]
    operation = draw(st.sampled_from(["drop", "replace", "replace", "stringify", "wrap"]))
    return mutate(document, path, operation, draw(HOSTILE))


# ---------------------------------------------------------------- (a) a converted model's header and spec


def split_safetensors(data: bytes) -> tuple[dict, bytes]:
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + length]), data[8 + length :]


def join_safetensors(header: object, body: bytes, raw_header: bytes | None = None) -> bytes:
    text = raw_header if raw_header is not None else json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + body


def inspect_model_bytes(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        path = root / "model.safetensors"
        path.write_bytes(data)
        check_run(["inspect", str(path)], root)
        assert sorted(p.name for p in root.iterdir()) == ["model.safetensors"]  # nothing written beside it


@FUZZ
@given(data=st.data())
def test_fuzzed_safetensors_header(model_file, data):
    header, body = split_safetensors(model_file.read_bytes())
    inspect_model_bytes(join_safetensors(data.draw(json_mutations(header)), body))


@FUZZ
@given(data=st.data())
@example(data=None)  # the spec text is JSON but not an object
def test_fuzzed_spec(model_file, data):
    header, body = split_safetensors(model_file.read_bytes())
    spec = json.loads(header["__metadata__"][SPEC_METADATA_KEY])
    mutated = data.draw(json_mutations(spec)) if data is not None else ["not", "an", "object"]
    header["__metadata__"][SPEC_METADATA_KEY] = json.dumps(mutated)
    inspect_model_bytes(join_safetensors(header, body))


@pytest.mark.parametrize(
    "case",
    [
        "offsets as strings",
        "short offsets",
        "metadata not strings",
        "spec not JSON",
        "huge class count",
        "length past the end",
        "empty",
    ],
)
def test_malformed_safetensors_files(model_file, case):
    header, body = split_safetensors(model_file.read_bytes())
    name = next(key for key in header if key != "__metadata__")
    raw = None
    if case == "offsets as strings":
        header[name]["data_offsets"] = [str(v) for v in header[name]["data_offsets"]]
    elif case == "short offsets":
        header[name]["data_offsets"] = header[name]["data_offsets"][:1]
    elif case == "metadata not strings":
        header["__metadata__"]["format"] = 1
    elif case == "spec not JSON":
        header["__metadata__"][SPEC_METADATA_KEY] = "{not json"
    elif case == "huge class count":  # once an overflow deep inside torch
        spec = json.loads(header["__metadata__"][SPEC_METADATA_KEY])
        header["__metadata__"][SPEC_METADATA_KEY] = json.dumps({**spec, "base_num_classes": 2**63})
    data = join_safetensors(header, body, raw)
    if case == "length past the end":
        data = struct.pack("<Q", len(data) * 4) + data[8:]
    elif case == "empty":
        data = b""
    inspect_model_bytes(data)


# ---------------------------------------------------------------- (b) manifests

BASE_ROWS = [
    {"path": "clips/left/clip0", "label": "left", "split": "train"},
    {"path": "clips/right/clip0", "label": "right", "split": "train"},
    {"path": "clips/left/clip1", "label": "left", "split": "val"},
    {"path": "clips/right/clip1", "label": "right", "split": "val"},
]
ROW_VALUES = st.one_of(
    HOSTILE,
    st.sampled_from(["/etc/passwd", "/", "..", "clips", "clips/left", "/dev/null", "nul\x00byte", "TRAIN", "val "]),
)


@pytest.fixture(scope="module")
def manifest_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("manifest")
    make_clip_tree(root / "clips", per_class=2, num_frames=6)
    return root


@st.composite
def manifest_texts(draw) -> tuple[str, bytes]:
    """A mutated manifest: its suffix and bytes (some rows changed, a column dropped, or bytes broken)."""
    rows = copy.deepcopy(BASE_ROWS)
    for _ in range(draw(st.integers(1, 3))):
        row = rows[draw(st.integers(0, len(rows) - 1))]
        key = draw(st.sampled_from(["path", "label", "split"]))
        if draw(st.booleans()):
            row.pop(key, None)
        else:
            row[key] = draw(ROW_VALUES)
    suffix = draw(st.sampled_from([".csv", ".jsonl"]))
    if suffix == ".jsonl":
        text = "\n".join(json.dumps(row) for row in rows).encode()
    else:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, ["path", "label", "split"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)
        text = buffer.getvalue().encode("utf-8", "surrogatepass")
    damage = draw(st.sampled_from(["none", "none", "truncate", "latin-1", "empty", "no header"]))
    if damage == "truncate":
        text = text[: draw(st.integers(0, len(text)))]
    elif damage == "latin-1":
        text = text.replace(b"left", b"l\xe9ft\xff")
    elif damage == "empty":
        text = b""
    elif damage == "no header" and suffix == ".csv":
        text = text.split(b"\n", 1)[-1]
    return suffix, text


def run_on_manifest(root: Path, suffix: str, text: bytes, command: Callable[[Path, Path], list[str]]) -> None:
    manifest = root / f"manifest{suffix}"
    manifest.write_bytes(text)
    output = Path(tempfile.mkdtemp(prefix="out", dir=root.parent))
    try:
        check_run(command(manifest, output / "run"), root, output / "run")
    finally:
        manifest.unlink()
        shutil.rmtree(output)


def evaluate_args(model: Path) -> Callable[[Path, Path], list[str]]:
    return lambda data, out: ["evaluate", str(model), "--data", str(data), "-o", str(out), *FAST]


def train_args(model: Path) -> Callable[[Path, Path], list[str]]:
    # --json: no progress bars on stderr, so a failure is the one line there
    return lambda data, out: [
        "train",
        str(model),
        "--data",
        str(data),
        "-o",
        str(out),
        "--epochs",
        "1",
        "--json",
        *FAST,
    ]


@FUZZ
@given(manifest=manifest_texts())
@example(manifest=(".csv", b'path,label,split\n"nul\x00byte",left,train\nclips/right/clip0,right,train\n'))
def test_fuzzed_manifest_evaluate(model_file, manifest_root, manifest):
    run_on_manifest(manifest_root, *manifest, evaluate_args(model_file))


@settings(FUZZ, max_examples=max(1, EXAMPLES // 3))
@given(manifest=manifest_texts())
@example(manifest=(".csv", b"path,label,split\r\n,left,train\r\n,right,train\r\nclips/left/clip1,left,val\r\n"))
def test_fuzzed_manifest_train(model_file, manifest_root, manifest):
    run_on_manifest(manifest_root, *manifest, train_args(model_file))


# ---------------------------------------------------------------- (c) frame folders


def png_bytes(size: tuple[int, int], mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    pixels = np.zeros((size[1], size[0], 3 if mode == "RGB" else 1), dtype=np.uint8).squeeze()
    Image.fromarray(pixels).convert(mode).save(buffer, format="PNG")
    return buffer.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width`` × ``height`` (a decompression bomb's header), with a tiny body."""
    data = bytearray(png_bytes((4, 4)))
    data[16:24] = struct.pack(">II", width, height)  # IHDR width, height (its CRC is left stale)
    return bytes(data)


FRAME_DAMAGE = ["truncate", "zero bytes", "other size", "not an image", "folder", "grey", "palette", "16 bit", "bomb"]


def damage_frame(path: Path, how: str, cut: int) -> None:
    data = path.read_bytes()
    path.unlink()
    if how == "truncate":
        path.write_bytes(data[: cut % max(1, len(data))])
    elif how == "zero bytes":
        path.write_bytes(b"")
    elif how == "other size":
        path.write_bytes(png_bytes((48, 40)))
    elif how == "not an image":
        path.write_bytes(b"#!/bin/sh\necho not a frame\n" * 4)
    elif how == "folder":
        path.mkdir()
    elif how == "grey":
        path.write_bytes(png_bytes((32, 32), "L"))
    elif how == "palette":
        path.write_bytes(png_bytes((32, 32), "P"))
    elif how == "16 bit":
        path.write_bytes(png_bytes((32, 32), "I;16"))
    else:
        path.write_bytes(png_declaring(200_000, 200_000))


@FUZZ
@given(
    damage=st.lists(
        st.tuples(st.integers(0, 3), st.integers(0, 5), st.sampled_from(FRAME_DAMAGE), st.integers(0, 10_000)),
        min_size=1,
        max_size=4,
    ),
    command=st.sampled_from(["evaluate", "evaluate", "train"]),
)
@example(damage=[(k, 0, "zero bytes", 0) for k in range(4)], command="evaluate")  # every clip unreadable
def test_fuzzed_frame_folders(model_file, tmp_path_factory, damage, command):
    root = tmp_path_factory.mktemp("frames")
    make_clip_tree(root / "train", per_class=1, num_frames=6)
    make_clip_tree(root / "val", per_class=1, num_frames=6)
    clips = sorted(p for p in root.glob("*/*/*") if p.is_dir())
    for clip, frame, how, cut in damage:
        target = clips[clip] / f"frame_{frame:04d}.png"
        if target.is_file():
            damage_frame(target, how, cut)
    (clips[0] / "notes.png.txt").write_text("not a frame")
    args = (train_args if command == "train" else evaluate_args)(model_file)
    output = tmp_path_factory.mktemp("out")
    check_run(args(root, output / "run"), root, output / "run")
    shutil.rmtree(root)
    shutil.rmtree(output)
