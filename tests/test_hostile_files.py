"""Files made to attack the tool: opening one runs nothing, costs little, and ends in one line and exit 2.

* a converted model whose spec names a callable (``os:abort``, ``sys:exit``, ``tempfile:mkdtemp``, a
  module in the current folder) as its architecture: no command imports or calls it;
* a model built on a user's own class opens only when the user names that class (``--arch``);
* zip archives whose declared sizes would cost gigabytes (decompression bombs);
* safetensors headers and specs of the wrong shape.
"""

from __future__ import annotations

import importlib
import io
import json
import os
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from typer.testing import CliRunner

from helpers import FAST, make_clip_tree
from prernn_cli.archives import MAX_MEMBERS, check_archive
from prernn_cli.checkpoint import load_checkpoint, load_converted
from prernn_cli.cli import app
from prernn_cli.errors import CheckpointError
from prernn_cli.export import export_file
from prernn_cli.spec import SPEC_METADATA_KEY

runner = CliRunner()


def _assert_refused(code: int, stdout: str, stderr: str, *needles: str, args: object = None) -> None:
    """Exit 2, exactly one line on stderr holding every needle, no traceback (``args``: the command, for failures)."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2, (args, code, stdout, stderr)
    assert len(lines) == 1, (args, stderr)
    assert "Traceback" not in stdout + stderr
    for needle in needles:
        assert needle in lines[0], (args, lines[0])


def _read_model(path: Path) -> tuple[dict, dict]:
    with safe_open(str(path), framework="pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}, dict(handle.metadata())


def _with_spec(source: Path, target: Path, **changes) -> Path:
    """``source``'s tensors and metadata saved as ``target``, its spec's entries replaced by ``changes``."""
    tensors, metadata = _read_model(source)
    spec = json.loads(metadata[SPEC_METADATA_KEY])
    metadata[SPEC_METADATA_KEY] = json.dumps({**spec, **changes})
    save_file(tensors, str(target), metadata=metadata)
    return target


# ---------------------------------------------------------------- names read from a file are never imported


@pytest.fixture(scope="module")
def exported(tmp_path_factory, converted_file) -> tuple[Path, Path]:
    """A real converted GRU model and its ONNX export (for ``validate --against`` and ``analyze --compare``)."""
    model = converted_file()
    onnx = tmp_path_factory.mktemp("onnx") / "model.onnx"
    export_file(model, onnx, steps=2)
    return model, onnx


MARKER_MODULE = """\
from pathlib import Path
Path("imported.marker").write_text("imported")


def make(**kwargs):
    Path("called.marker").write_text("called")
    raise SystemExit(0)
"""

# Runs every command in one process, in the hostile file's folder (so that a module there is importable,
# as it is under `python -m prernn_cli`); prints each result. An os.abort() kills it: the test then fails.
DRIVER = """\
import json, sys
from typer.testing import CliRunner
from prernn_cli.cli import app
runner = CliRunner()
results = []
for args in json.loads(sys.argv[1]):
    result = runner.invoke(app, args)
    results.append([args, result.exit_code, result.stdout, result.stderr])
print(json.dumps(results))
"""


def _commands(model: str, real_model: Path, onnx: Path) -> list[list[str]]:
    """Every command that opens a converted model, each given everything else it needs."""
    return [
        ["inspect", model],
        ["inspect", model, "--arch", "digit_vgg"],
        ["params", model, "--layer", "fc6"],
        ["convert", model, "--layer", "fc6", "-o", "out.safetensors"],
        ["train", model, "--data", "clips", "-o", "run", "--epochs", "1", *FAST],
        ["evaluate", model, "--data", "clips", "--device", "cpu"],
        ["export", model, "--onnx", "-o", "out.onnx"],
        ["validate", str(onnx), "--against", model],
        ["analyze", model, "--data", "clips", "-o", "report", "--device", "cpu"],
        ["analyze", str(real_model), "--compare", model, "--data", "clips", "-o", "report", "--device", "cpu"],
    ]


HOSTILE_NAMES = ("os:abort", "sys:exit", "tempfile:mkdtemp", "marker_mod:make")


def test_no_name_in_a_model_file_is_imported_or_called(tmp_path, exported):
    real_model, onnx = exported
    models = {}
    for index, name in enumerate(HOSTILE_NAMES):
        # No class count: a callable the file names would be called with no arguments at all.
        path = _with_spec(
            real_model, tmp_path / f"hostile{index}.safetensors", base_architecture=name, base_num_classes=None
        )
        models[name] = path.name
    (tmp_path / "marker_mod.py").write_text(MARKER_MODULE)
    make_clip_tree(tmp_path / "clips", per_class=2, num_frames=6)
    temp = tmp_path / "temp"
    temp.mkdir()
    before = sorted(p.name for p in tmp_path.iterdir())
    commands = [(name, args) for name, model in models.items() for args in _commands(model, real_model, onnx)]
    env = {**os.environ, "TMPDIR": str(temp), "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, json.dumps([args for _, args in commands])],
        cwd=tmp_path, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])  # os.abort() would end it with -6
    results = json.loads(done.stdout.splitlines()[-1])
    assert [args for args, *_ in results] == [args for _, args in commands]
    for (name, _), (args, code, stdout, stderr) in zip(commands, results):
        _assert_refused(code, stdout, stderr, f"user class {name}", "import and run", f"--arch {name}", args=args)
    assert not (tmp_path / "imported.marker").exists() and not (tmp_path / "called.marker").exists()
    assert not [p for p in temp.iterdir() if p.name.startswith("tmp")]  # tempfile.mkdtemp never ran
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written: no run, report or export


USER_NET = """\
from pathlib import Path

import torch
from torch import nn

Path(__file__).with_name("imported.marker").write_text("imported")


class Net(nn.Module):
    def __init__(self, num_classes=5):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, stride=4), nn.ReLU(), nn.AdaptiveAvgPool2d(2))
        self.fc6 = nn.Linear(16, 8)
        self.relu = nn.ReLU()
        self.fc7 = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.fc7(self.relu(self.fc6(torch.flatten(self.features(x), 1))))
"""


def test_a_user_class_model_opens_only_with_its_name_on_the_command_line(tmp_path, monkeypatch):
    module = "prernn_hostile_usernet"
    (tmp_path / f"{module}.py").write_text(USER_NET)
    monkeypatch.syspath_prepend(str(tmp_path))
    marker = tmp_path / "imported.marker"
    arch = f"{module}:Net"
    weights, model = tmp_path / "net.pt", tmp_path / "net.safetensors"
    torch.manual_seed(0)
    torch.save(importlib.import_module(module).Net().state_dict(), weights)
    args = ["convert", str(weights), "--arch", arch, "--layer", "fc6", "--cell", "gru", "-o", str(model)]
    assert runner.invoke(app, args).exit_code == 0
    assert json.loads(_read_model(model)[1][SPEC_METADATA_KEY])["base_architecture"] == arch

    marker.unlink()  # a fresh session: the module is not imported yet
    monkeypatch.delitem(sys.modules, module)
    for given in ([], ["--arch", f"{module}:Other"], ["--arch", "digit_vgg"]):
        result = runner.invoke(app, ["inspect", str(model), *given])
        _assert_refused(result.exit_code, result.stdout, result.stderr, f"user class {arch}", f"--arch {arch}")
    with pytest.raises(CheckpointError, match="opening it would import and run that code"):
        load_converted(model)
    assert not marker.exists() and module not in sys.modules

    result = runner.invoke(app, ["inspect", str(model), "--arch", arch])
    assert result.exit_code == 0, result.stderr
    assert "converted" in result.stdout and marker.exists()
    loaded = load_converted(model, user_class=arch)
    assert loaded.spec.base_architecture == arch
    with torch.no_grad():
        outputs, _ = loaded(torch.rand(1, 2, 3, 224, 224))
    assert outputs.shape == (1, 2, 5)


def test_a_registered_name_needs_no_arch_and_refuses_another(tmp_path, converted_file):
    model = converted_file()
    assert runner.invoke(app, ["inspect", str(model), "--arch", "digit_vgg"]).exit_code == 0
    result = runner.invoke(app, ["inspect", str(model), "--arch", "resnet18"])
    _assert_refused(result.exit_code, result.stdout, result.stderr, "digit_vgg, not resnet18", "drop --arch")
    unknown = _with_spec(model, tmp_path / "unknown.safetensors", base_architecture="no_such_net")
    result = runner.invoke(app, ["inspect", str(unknown)])
    _assert_refused(result.exit_code, result.stdout, result.stderr, "does not know ('no_such_net')")


# ---------------------------------------------------------------- decompression bombs


def _torch_archive(kind: str) -> bytes:
    buffer = io.BytesIO()
    if kind == "torchscript":
        with pytest.warns(FutureWarning):
            torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), buffer)
    else:
        torch.save({"weight": torch.zeros(4, 4), "bias": torch.zeros(4)}, buffer)
    return buffer.getvalue()


def _rewrite(source: bytes, target: Path, inflate: dict[str, int]) -> Path:
    """``source``'s members written to ``target``; those named in ``inflate`` padded with that many zeros, deflated."""
    with zipfile.ZipFile(io.BytesIO(source)) as archive, zipfile.ZipFile(target, "w") as out:
        for info in archive.infolist():
            data = archive.read(info)
            suffix = next((s for s in inflate if info.filename.endswith(s)), None)
            if suffix is None:
                out.writestr(info, data)
                continue
            entry = zipfile.ZipInfo(info.filename)
            entry.compress_type = zipfile.ZIP_DEFLATED
            with out.open(entry, "w", force_zip64=True) as member:
                member.write(data)
                chunk = bytes(1 << 20)
                for _ in range(inflate[suffix] >> 20):
                    member.write(chunk)
    return target


@pytest.mark.parametrize("kind", ["torch.save", "torchscript"])
def test_a_decompression_bomb_is_refused_before_it_is_read(tmp_path, kind):
    # The attack at 1/32 scale: 64 MiB of zeros deflated into ~64 KiB (the real one: 2 GiB in 2 MB).
    member = "data.pkl" if kind == "torch.save" else "constants.pkl"
    bomb = _rewrite(_torch_archive(kind), tmp_path / "bomb.pt", {member: 64 << 20})
    assert bomb.stat().st_size < 200_000
    for args in (
        ["inspect", bomb],
        ["params", bomb, "--layer", "fc6"],
        ["convert", bomb, "--layer", "fc6", "-o", tmp_path / "out.safetensors"],
    ):
        result = runner.invoke(app, [str(arg) for arg in args])
        _assert_refused(result.exit_code, result.stdout, result.stderr, "decompression bomb", member)
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match="decompression bomb"):
        load_checkpoint(bomb)
    assert time.perf_counter() - start < 1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bomb.pt"]


def _patch_central_entry(data: bytearray, suffix: bytes, **fields: int) -> None:
    """Set ``method`` / ``declared`` (uncompressed size) in the central-directory entry of the member ending in ``suffix``."""
    at = data.find(b"PK\x01\x02")
    while at >= 0:
        name_length = struct.unpack_from("<H", data, at + 28)[0]
        if bytes(data[at + 46 : at + 46 + name_length]).endswith(suffix):
            if "method" in fields:
                struct.pack_into("<H", data, at + 10, fields["method"])
            if "declared" in fields:
                struct.pack_into("<L", data, at + 24, fields["declared"])
            return
        at = data.find(b"PK\x01\x02", at + 4)
    raise AssertionError(f"no member ending in {suffix!r}")


def _many_members(data: bytearray) -> None:
    """Declare more members than any checkpoint has, in the zip64 end record torch.save writes."""
    at = data.rfind(b"PK\x06\x06")
    struct.pack_into("<QQ", data, at + 24, MAX_MEMBERS + 1, MAX_MEMBERS + 1)
    end = data.rfind(b"PK\x05\x06")
    struct.pack_into("<HH", data, end + 8, 0xFFFF, 0xFFFF)


HOSTILE_ARCHIVES = {
    "huge_pickle": (lambda d: _patch_central_entry(d, b"data.pkl", declared=300 << 20), "over 256 MiB for a pickle"),
    "stored_but_larger": (lambda d: _patch_central_entry(d, b"data/0", declared=1 << 30), "stored uncompressed"),
    "deflated_claim": (lambda d: _patch_central_entry(d, b"data/0", method=8, declared=1 << 30), "over 100x"),
    "too_many_members": (_many_members, f"over {MAX_MEMBERS}"),
}


@pytest.mark.parametrize("kind", sorted(HOSTILE_ARCHIVES))
def test_hostile_declared_sizes_are_refused(tmp_path, kind):
    patch, needle = HOSTILE_ARCHIVES[kind]
    data = bytearray(_torch_archive("torch.save"))
    patch(data)
    path = tmp_path / "hostile.pt"
    path.write_bytes(bytes(data))
    result = runner.invoke(app, ["inspect", str(path)])
    _assert_refused(result.exit_code, result.stdout, result.stderr, "decompression bomb", needle)


def test_many_members_each_small_are_refused_by_their_total(tmp_path):
    # Each member stays under the ratio check (1 MiB); together they declare far more than the file holds.
    members = {f"extra{index}.bin": 1 << 20 for index in range(80)}
    source = io.BytesIO(_torch_archive("torch.save"))
    with zipfile.ZipFile(source, "a") as archive:
        for name in members:
            archive.writestr(f"archive/{name}", b"")
    path = _rewrite(source.getvalue(), tmp_path / "spread.pt", members)
    result = runner.invoke(app, ["inspect", str(path)])
    _assert_refused(result.exit_code, result.stdout, result.stderr, "decompression bomb", "its members declare")


def test_ordinary_archives_pass_the_checks(tmp_path):
    for kind in ("torch.save", "torchscript"):
        path = tmp_path / f"{kind}.pt"
        path.write_bytes(_torch_archive(kind))
        names = check_archive(path)
        assert any(name.endswith("/data.pkl") for name in names), names


# ---------------------------------------------------------------- malformed safetensors headers and specs


def _raw_header(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + length]), raw[8 + length :]


def _write_raw(path: Path, header: dict, body: bytes) -> Path:
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + body)
    return path


def _first_tensor(header: dict) -> str:
    return next(key for key in header if key != "__metadata__")


def _spec_edit(change):
    def edit(header: dict) -> None:
        spec = json.loads(header["__metadata__"][SPEC_METADATA_KEY])
        header["__metadata__"][SPEC_METADATA_KEY] = json.dumps(change(spec))

    return edit


def _set(header: dict, key: str, field: str, value) -> None:
    header[key][field] = value


MALFORMED = {
    "offsets_as_strings": lambda h: _set(h, _first_tensor(h), "data_offsets", ["0", "4"]),
    "one_offset": lambda h: _set(h, _first_tensor(h), "data_offsets", [0]),
    "offsets_backwards": lambda h: _set(h, _first_tensor(h), "data_offsets", [8, 4]),
    "offsets_fractional": lambda h: _set(h, _first_tensor(h), "data_offsets", [0, 1e30]),
    "offsets_overlapping": lambda h: _set(
        h, [k for k in h if k != "__metadata__"][1], "data_offsets", h[_first_tensor(h)]["data_offsets"]
    ),
    "entry_not_an_object": lambda h: h.__setitem__(_first_tensor(h), "tensor"),
    "metadata_value_number": lambda h: h["__metadata__"].__setitem__("format", 5),
    "metadata_value_object": lambda h: h["__metadata__"].__setitem__(SPEC_METADATA_KEY, {"cell": "gru"}),
    "metadata_a_list": lambda h: h.__setitem__("__metadata__", [SPEC_METADATA_KEY]),
    "metadata_a_number": lambda h: h.__setitem__("__metadata__", 7),
    "spec_a_list": lambda h: h["__metadata__"].__setitem__(SPEC_METADATA_KEY, "[1, 2]"),
    "spec_a_string": lambda h: h["__metadata__"].__setitem__(SPEC_METADATA_KEY, '"digit_vgg"'),
    "spec_not_json": lambda h: h["__metadata__"].__setitem__(SPEC_METADATA_KEY, "{base_architecture"),
    "spec_without_layers": _spec_edit(lambda s: {k: v for k, v in s.items() if k != "layers"}),
    "spec_without_architecture": _spec_edit(lambda s: {k: v for k, v in s.items() if k != "base_architecture"}),
    "spec_architecture_a_number": _spec_edit(lambda s: {**s, "base_architecture": 5}),
    "spec_classes_a_string": _spec_edit(lambda s: {**s, "base_num_classes": "ten"}),
    "spec_layers_strings": _spec_edit(lambda s: {**s, "layers": ["fc6"]}),
    "spec_input_a_list": _spec_edit(lambda s: {**s, "input": [3, 32, 32]}),
    "spec_cell_unknown": _spec_edit(lambda s: {**s, "cell": "transformer"}),
}


@pytest.mark.parametrize("kind", sorted(MALFORMED))
def test_a_malformed_header_or_spec_is_one_line(tmp_path, converted_file, kind):
    header, body = _raw_header(converted_file())
    MALFORMED[kind](header)
    path = _write_raw(tmp_path / f"{kind}.safetensors", header, body)
    for args in (["inspect", str(path)], ["evaluate", str(path), "--data", str(tmp_path)]):
        result = runner.invoke(app, args)
        _assert_refused(result.exit_code, result.stdout, result.stderr, "save")
        assert "corrupt" in result.stderr or "not a" in result.stderr, result.stderr
