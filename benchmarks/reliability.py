"""Reliability table: injected faults, hostile files and bad inputs, each through the real CLI.

Every case runs ``python -m prernn_cli`` (or, for kills at a write point, the same Typer app in a
forked child of one driver process) on real files in a temporary folder, and checks the
documented behaviour:

* **faults injected → survived**: a run killed with SIGKILL (mid-training, or just before / after
  each rename that commits one of its files) resumes with ``--resume`` to the same weights as an
  uninterrupted run; a full disk (ENOSPC, on a small tmpfs) or a read-only output folder gives
  exit 1, one line naming the path and the cause, and leaves no partial file and no empty folder.
* **hostile files → refused**: exit 2, one line on stderr, no traceback, nothing run (a marker file
  the payload would create stays absent), the input byte-identical; a decompression bomb also
  within a second and 200 MB peak memory for the whole process.
* **bad inputs → handled**: exit 2, one line, no traceback, inputs byte-identical, nothing written.

"One line" counts stderr's lines other than log records: a skipped clip is logged as a warning
before the error that every clip was skipped. ``train`` runs with ``--json`` (no progress bars).

Prints a Markdown table (category, tried, survived/refused/handled, failures) and one line per
failed case. ENOSPC and read-only cases need ``mount`` (root); elsewhere they are reported skipped.

Run: ``.venv/bin/python benchmarks/reliability.py [--keep DIR]`` (9 to 17 minutes on 2 busy CPU cores).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import pickle
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
TRAIN_FAST = ["--workers", "0", "--steps", "4", "--batch-size", "2", "--device", "cpu", "--seed", "0"]
LOG_LEVELS = ("WARNING ", "INFO ")
CATEGORIES = {"faults injected": "survived", "hostile files": "refused", "bad inputs": "handled"}


# ---------------------------------------------------------------- running the CLI


@dataclass
class Run:
    code: int  # exit status; -N when killed by signal N
    stdout: str
    stderr: str
    seconds: float
    peak_mb: float  # the child's peak resident memory

    @property
    def error_lines(self) -> list[str]:
        """stderr's lines but the log records (a warning per skipped clip is reported, not an error)."""
        return [line for line in self.stderr.splitlines() if line.strip() and not line.startswith(LOG_LEVELS)]


# `python -m prernn_cli`, reporting its peak memory at exit: the kernel's VmHWM of this program, which
# (unlike ru_maxrss) does not count the parent's memory copied by fork before exec
LAUNCHER = """
import atexit, os, runpy, sys

def report_peak():
    with open("/proc/self/status") as status, open(os.environ["PRERNN_PEAK_FILE"], "w") as out:
        out.write(next((line.split()[1] for line in status if line.startswith("VmHWM:")), "0"))

if os.path.exists("/proc/self/status"):
    atexit.register(report_peak)
runpy.run_module("prernn_cli", run_name="__main__", alter_sys=True)
"""


def prernn(*args: object, cwd: Path | None = None, timeout: float = 600, env: dict | None = None) -> Run:
    """``python -m prernn_cli ARGS`` in its own process; its exit status, output, time and peak memory."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, tempfile.NamedTemporaryFile() as peak:
        environment = {**os.environ, "COLUMNS": "200", "PYTHONPATH": str(ROOT), "PRERNN_PEAK_FILE": peak.name,
                       **(env or {})}  # fmt: skip
        environment.pop("PRERNN_DEBUG", None)
        start = time.perf_counter()
        process = subprocess.Popen([sys.executable, "-c", LAUNCHER, *map(str, args)], cwd=cwd or ROOT, stdout=out,
                                   stderr=err, env=environment)  # fmt: skip
        try:
            code = process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
        seconds = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        peak_kb = Path(peak.name).read_text().strip() or "0"
        return Run(code, out.read().decode(errors="replace"), err.read().decode(errors="replace"), seconds,
                   int(peak_kb) / 1024)  # fmt: skip


def snapshot(*paths: Path) -> dict[str, str]:
    """SHA-256 of every file under ``paths`` (symlinks not followed): compared before and after."""
    found = {}
    for path in paths:
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for file in files:
            if not file.is_symlink():
                found[str(file)] = hashlib.sha256(file.read_bytes()).hexdigest()
    return found


def clean_refusal(run: Run, code: int = 2) -> str | None:
    """Why ``run`` is not a clean refusal (exit ``code``, one line, no traceback); None when it is."""
    if run.code != code:
        return f"exit {run.code}, expected {code}: {(run.error_lines or ['(no stderr)'])[-1][:160]}"
    if "Traceback" in run.stdout + run.stderr:
        return "printed a traceback"
    if len(run.error_lines) != 1:
        return f"{len(run.error_lines)} lines on stderr"
    return None


# ---------------------------------------------------------------- the results


@dataclass
class Table:
    rows: list[tuple[str, str, str | None]] = field(default_factory=list)  # (category, case, failure)

    def check(self, category: str, case: str, failure: str | None) -> None:
        self.rows.append((category, case, failure))
        print(f"  [{'ok' if failure is None else 'FAILED'}] {category}: {case}" + (f" ({failure})" if failure else ""),
              file=sys.stderr, flush=True)  # fmt: skip

    def skip(self, category: str, case: str, why: str) -> None:
        print(f"  [skipped] {category}: {case} ({why})", file=sys.stderr, flush=True)

    def markdown(self) -> str:
        lines = ["| category | tried | survived / refused / handled | failed |", "|---|---:|---:|---|"]
        for category, verb in CATEGORIES.items():
            rows = [r for r in self.rows if r[0] == category]
            failed = [case for _, case, failure in rows if failure is not None]
            passed = len(rows) - len(failed)
            lines.append(f"| {category} | {len(rows)} | {passed} {verb} | {', '.join(failed) or '-'} |")
        return "\n".join(lines)


def refusal_case(table: Table, category: str, case: str, args: list, inputs: list[Path],
                 marker: Path | None = None, leftovers: list[Path] = (), cwd: Path | None = None) -> Run:  # fmt: skip
    """Run ``prernn ARGS`` (in ``cwd``), expected to end in a clean exit 2, and record whether it did."""
    before = snapshot(*inputs)
    run = prernn(*args, cwd=cwd)
    failure = clean_refusal(run)
    if failure is None and marker is not None and marker.exists():
        failure = "the payload ran"
    if failure is None and snapshot(*inputs) != before:
        failure = "an input changed"
    written = [str(p) for p in leftovers if p.exists()]
    if failure is None and written:
        failure = f"left {written[0]}"
    table.check(category, case, failure)
    return run


# ---------------------------------------------------------------- fixtures on disk


def write_clip(folder: Path, frames: int, direction: int, seed: int = 0, size: int = 32) -> None:
    folder.mkdir(parents=True)
    y = 4 + seed % 16
    for i in range(frames):
        frame = np.zeros((size, size, 3), dtype=np.uint8)
        x = 2 + i if direction > 0 else size - 10 - i
        frame[y : y + 8, x : x + 8] = 255
        Image.fromarray(frame).save(folder / f"frame_{i:04d}.png")


def write_clips(root: Path, frames: int = 6, train: int = 2, val: int = 1) -> Path:
    for split, count in (("train", train), ("val", val)):
        for name, direction in (("left", -1), ("right", 1)):
            for k in range(count):
                write_clip(root / split / name / f"clip{k}", frames, direction, seed=k)
    return root


def converted_model(work: Path) -> Path:
    model = work / "model.safetensors"
    run = prernn("convert", ROOT / "sample_models/digit_vgg.pt", "--layer", "fc6", "--cell", "gru", "--sih",
                 "--num-classes", "2", "-o", model)  # fmt: skip
    if run.code != 0:
        raise SystemExit(f"cannot convert the sample model: {run.stderr}")
    return model


@contextlib.contextmanager
def mounted(folder: Path, options: str) -> Iterator[bool]:
    """A small tmpfs at ``folder`` (``options``: e.g. size=512k, or ro); yields False where mounting is not allowed."""
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    try:
        yield done.returncode == 0
    finally:
        if done.returncode == 0:
            subprocess.run(["umount", str(folder)], capture_output=True)


# ---------------------------------------------------------------- faults injected


def weights_equal(a: Path, b: Path) -> bool:
    from safetensors.numpy import load_file

    left, right = load_file(str(a)), load_file(str(b))
    return left.keys() == right.keys() and all(np.array_equal(left[k], right[k]) for k in left)


def kill_mid_training(table: Table, work: Path, model: Path, clips: Path, reference: Path, kills: int = 2) -> None:
    """SIGKILL a `train` process once it has saved a checkpoint, at a different moment each time, then resume."""
    args = ["--data", clips, "--epochs", "3", "--checkpoint-every", "1", "--json", *TRAIN_FAST]
    for k in range(kills):
        run_dir = work / f"killed{k}"
        environment = {**os.environ, "PYTHONPATH": str(ROOT)}
        process = subprocess.Popen([sys.executable, "-m", "prernn_cli", "train", str(model), "-o", str(run_dir),
                                    *map(str, args)], cwd=ROOT, env=environment,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        deadline = time.monotonic() + 300
        while not (run_dir / "last.safetensors").exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.15 * k)  # a little later into the run each time
        process.send_signal(signal.SIGKILL)
        process.wait()
        resumed = prernn("train", model, "-o", run_dir, "--resume", run_dir, *args)
        failure = None
        if process.returncode != -signal.SIGKILL:
            failure = f"the run ended ({process.returncode}) before the kill"
        elif resumed.code != 0:
            failure = f"resume exit {resumed.code}: {(resumed.error_lines or [''])[-1][:160]}"
        elif not weights_equal(run_dir / "last.safetensors", reference / "last.safetensors"):
            failure = "resumed weights differ from an uninterrupted run"
        table.check("faults injected", f"kill -9 mid-training #{k + 1}, then --resume", failure)


KILL_DRIVER = r"""
import json, os, signal, sys
from pathlib import Path
import torch
torch.set_num_threads(1)
from prernn_cli.cli import app

model, clips, work, args = sys.argv[1], sys.argv[2], Path(sys.argv[3]), json.loads(sys.argv[4])

def cli(run_dir, extra, kill_at=None, record=None):
    real = os.replace
    count = [0]
    def replace(src, dst, *a, **k):
        if Path(dst).parent.resolve() != run_dir.resolve():
            return real(src, dst, *a, **k)
        count[0] += 1
        if record is not None:
            record.append(Path(dst).name)
        if kill_at == (count[0], "before"):
            os.kill(os.getpid(), signal.SIGKILL)
        real(src, dst, *a, **k)
        if kill_at == (count[0], "after"):
            os.kill(os.getpid(), signal.SIGKILL)
    os.replace = replace
    try:
        app(["train", model, "--data", clips, "-o", str(run_dir), *extra, *args], prog_name="prernn")
    except SystemExit as exit:
        return exit.code or 0
    return 0

def child(job):
    pid = os.fork()
    if pid == 0:
        sys.stdout = sys.stderr = open(os.devnull, "w")
        os._exit(job())
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)

names = []
reference = work / "points_reference"
child_names = work / "points_names.json"
def reference_run():
    code = cli(reference, [], record=names)
    child_names.write_text(json.dumps(names))
    return code
results = {"reference": child(reference_run), "points": []}
for n, name in enumerate(json.loads(child_names.read_text()), start=1):
    for when in ("before", "after"):
        run_dir = work / f"point{n}{when}"
        killed = child(lambda: cli(run_dir, [], kill_at=(n, when)))
        resumed = child(lambda: cli(run_dir, ["--resume", str(run_dir)]))
        results["points"].append({"n": n, "name": name, "when": when, "killed": killed, "resumed": resumed,
                                  "dir": str(run_dir)})
print(json.dumps(results))
"""


def kill_at_write_points(table: Table, work: Path, model: Path, clips: Path) -> None:
    """SIGKILL `train` just before and just after each rename that commits one of its files, then resume."""
    args = ["--epochs", "2", "--json", *TRAIN_FAST]
    done = subprocess.run(
        [sys.executable, "-c", KILL_DRIVER, str(model), str(clips), str(work), json.dumps(args)],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=1800,
    )  # fmt: skip
    if done.returncode != 0:
        table.check("faults injected", "kill at each write point", f"driver failed: {done.stderr.strip()[-200:]}")
        return
    results = json.loads(done.stdout.strip().splitlines()[-1])
    reference = work / "points_reference" / "last.safetensors"
    for point in results["points"]:
        case = f"kill {point['when']} write {point['n']} ({point['name']}), then --resume"
        failure = None
        if point["killed"] != -signal.SIGKILL:
            failure = f"the kill did not happen ({point['killed']})"
        elif point["resumed"] != 0:
            failure = f"resume exit {point['resumed']}"
        elif not weights_equal(Path(point["dir"]) / "last.safetensors", reference):
            failure = "resumed weights differ from an uninterrupted run"
        table.check("faults injected", case, failure)


def full_disk(table: Table, work: Path, model: Path, clips: Path) -> None:
    """ENOSPC in convert, train and export; a read-only output folder in train: exit 1, one line, nothing left."""
    disk = work / "full"
    with mounted(disk, "size=600k") as ok:
        if not ok:
            for case in ("ENOSPC in convert", "ENOSPC in train", "ENOSPC in export", "read-only folder in train"):
                table.skip("faults injected", case, "cannot mount a tmpfs here")
            return
        cases = {
            "ENOSPC in convert": ("convert", ROOT / "sample_models/digit_vgg.pt", "--layer", "fc6", "-o",
                                  disk / "m.safetensors"),
            "ENOSPC in train": ("train", model, "--data", clips, "-o", disk / "run", "--epochs", "1", "--json",
                                *TRAIN_FAST),
            "ENOSPC in export": ("export", model, "--onnx", "--steps", "1", "-o", disk / "m.onnx"),
        }  # fmt: skip
        for case, args in cases.items():
            run = prernn(*args)
            failure = clean_refusal(run, code=1)
            if failure is None and "No space left" not in run.stderr:
                failure = f"the error does not name the cause: {run.error_lines[0][:120]}"
            if failure is None and any(disk.iterdir()):
                failure = f"left {sorted(p.name for p in disk.iterdir())}"
            table.check("faults injected", case, failure)
    readonly = work / "readonly"
    with mounted(readonly, "ro,size=64k") as ok:
        if not ok:
            table.skip("faults injected", "read-only folder in train", "cannot mount a read-only tmpfs here")
            return
        run = prernn("train", model, "--data", clips, "-o", readonly / "run", "--epochs", "1", "--json", *TRAIN_FAST)
        table.check("faults injected", "read-only folder in train", clean_refusal(run, code=1))


# ---------------------------------------------------------------- hostile files


class _Payload:
    """Unpickling this runs ``os.system``: it creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def malicious_pickles(table: Table, work: Path) -> None:
    import torch

    marker = work / "pickle_ran"
    torch_format, plain = work / "evil.pt", work / "evil_plain.pt"
    torch.save({"weight": torch.zeros(2), "payload": _Payload(marker)}, torch_format)
    plain.write_bytes(pickle.dumps({"payload": _Payload(marker)}))
    for path in (torch_format, plain):
        for command in (["inspect", path], ["convert", path, "--layer", "fc6", "-o", work / "out.safetensors"],
                        ["params", path, "--layer", "fc6"]):  # fmt: skip
            refusal_case(table, "hostile files", f"malicious pickle ({path.name}) in {command[0]}", command, [path],
                         marker, [work / "out.safetensors"], cwd=work)  # fmt: skip


def with_spec(model: Path, target: Path, **changes) -> Path:
    """A copy of ``model`` whose spec has ``changes``."""
    data = model.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    spec = json.loads(header["__metadata__"]["prernn_spec"])
    header["__metadata__"]["prernn_spec"] = json.dumps({**spec, **changes})
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    target.write_bytes(struct.pack("<Q", len(text)) + text + data[8 + length :])
    return target


def hostile_specs(table: Table, work: Path, model: Path, clips: Path) -> None:
    """Specs naming callables to import: each command refuses, and the marker module never runs."""
    folder = work / "specs"
    folder.mkdir()
    marker = folder / "module_ran"
    (folder / "evilmod.py").write_text(f"open({str(marker)!r}, 'w').close()\ndef build(**kwargs):\n    return None\n")
    for name in ("os:abort", "sys:exit", "tempfile:mkdtemp"):
        path = with_spec(model, folder / f"{name.split(':')[0]}.safetensors", base_architecture=name)
        refusal_case(table, "hostile files", f"spec naming {name} in inspect", ["inspect", path], [path], cwd=folder)
    path = with_spec(model, folder / "local.safetensors", base_architecture="evilmod:build")
    commands = {
        "inspect": ["inspect", path],
        "train": ["train", path, "--data", clips, "-o", folder / "run", "--epochs", "1", *TRAIN_FAST],
        "evaluate": ["evaluate", path, "--data", clips, "--device", "cpu"],
        "export": ["export", path, "--onnx", "-o", folder / "m.onnx"],
        "analyze": ["analyze", path, "--data", clips, "-o", folder / "report"],
    }
    for command, args in commands.items():
        refusal_case(table, "hostile files", f"spec naming a module in the current folder, in {command}", args,
                     [path], marker, [folder / "run", folder / "m.onnx", folder / "report"], cwd=folder)  # fmt: skip


def malformed_headers(table: Table, work: Path, model: Path) -> None:
    data = model.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header, body = json.loads(data[8 : 8 + length]), data[8 + length :]
    name = next(key for key in header if key != "__metadata__")

    def changed(change: Callable[[dict], None]) -> bytes:
        copy = json.loads(json.dumps(header))
        change(copy)
        text = json.dumps(copy).encode()
        text += b" " * (-len(text) % 8)
        return struct.pack("<Q", len(text)) + text + body

    cases = {
        "offsets as strings": changed(lambda h: h[name].update(data_offsets=[str(v) for v in h[name]["data_offsets"]])),
        "short offsets": changed(lambda h: h[name].update(data_offsets=h[name]["data_offsets"][:1])),
        "metadata value not a string": changed(lambda h: h["__metadata__"].update(format=1)),
        "spec JSON but not an object": changed(lambda h: h["__metadata__"].update(prernn_spec="[1, 2]")),
        "header length past the end": struct.pack("<Q", 1 << 40) + data[8:],
        "truncated body": data[: len(data) // 2],
    }
    for case, content in cases.items():
        path = work / f"malformed_{case.replace(' ', '_')}.safetensors"
        path.write_bytes(content)
        refusal_case(table, "hostile files", f"malformed safetensors: {case}", ["inspect", path], [path])


def decompression_bomb(table: Table, work: Path) -> None:
    """A small .pt whose data.pkl inflates to 2 GiB: refused fast, with bounded memory."""
    import torch

    small = work / "small.pt"
    torch.save({"w": torch.zeros(4)}, small)
    bomb = work / "bomb.pt"
    with zipfile.ZipFile(small) as source, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as target:
        for info in source.infolist():
            content = source.read(info)
            if not info.filename.endswith("data.pkl"):
                target.writestr(info.filename, content)
                continue
            with target.open(info.filename, "w", force_zip64=True) as handle:
                handle.write(content)
                zeros = bytes(1 << 24)
                for _ in range(128):  # 2 GiB of padding after the pickle's STOP
                    handle.write(zeros)
    run = refusal_case(table, "hostile files", f"decompression bomb ({bomb.stat().st_size / 1e6:.1f} MB .pt → 2 GiB)",
                       ["inspect", bomb], [bomb])  # fmt: skip
    failure = None
    if run.seconds > 1.0 or run.peak_mb > 200:  # the whole process: start, refusal, exit
        failure = f"{run.seconds:.1f} s and {run.peak_mb:.0f} MB peak (limits: 1 s, 200 MB)"
    table.check("hostile files", f"decompression bomb refused in {run.seconds:.1f} s, peak {run.peak_mb:.0f} MB",
                failure)  # fmt: skip


def onnx_outside_data(table: Table, work: Path, step: Path, clip: Path) -> None:
    """An ONNX file whose weights point outside its folder (../, an absolute path): refused, not read."""
    import onnx
    from onnx.external_data_helper import set_external_data

    folder = work / "onnx_hostile"
    folder.mkdir()
    for case, location in (("../outside.bin", "../outside.bin"), ("an absolute path", str(work / "outside.bin"))):
        proto = onnx.load(str(step))
        tensor = max(proto.graph.initializer, key=lambda t: len(t.raw_data))
        (work / "outside.bin").write_bytes(tensor.raw_data)
        set_external_data(tensor, location=location, offset=0, length=len(tensor.raw_data))
        tensor.ClearField("raw_data")
        tensor.data_location = onnx.TensorProto.EXTERNAL
        path = folder / f"outside_{len(list(folder.iterdir()))}.onnx"
        onnx.save(proto, str(path))
        for command in (["stream", path, clip], ["validate", path]):
            refusal_case(table, "hostile files", f"ONNX external data at {case}, in {command[0]}", command,
                         [path, work / "outside.bin"])  # fmt: skip


# ---------------------------------------------------------------- bad inputs


def bad_options(table: Table, work: Path, model: Path, clips: Path) -> None:
    train = ["train", model, "--data", clips, "-o", work / "never"]
    for option, value in (("--lr", "-1"), ("--epochs", "0"), ("--momentum", "2"), ("--val-fraction", "1.5"),
                          ("--gamma", "0"), ("--seed", "-1")):  # fmt: skip
        refusal_case(table, "bad inputs", f"train {option} {value}", [*train, option, value], [model],
                     leftovers=[work / "never"])  # fmt: skip
    refusal_case(table, "bad inputs", "export --atol -1", ["export", model, "--onnx", "--atol", "-1"], [model])
    refusal_case(table, "bad inputs", "convert --num-classes 0",
                 ["convert", ROOT / "sample_models/digit_vgg.pt", "--layer", "fc6", "--num-classes", "0", "-o",
                  work / "never.safetensors"], [], leftovers=[work / "never.safetensors"])  # fmt: skip


def bad_manifests(table: Table, work: Path, model: Path, clips: Path) -> None:
    folder = work / "manifests"
    folder.mkdir()
    good = "clips/train/left/clip0,left,train\nclips/train/right/clip0,right,train\n"
    (folder / "clips").symlink_to(clips)
    cases = {
        "no label column": b"path,split\nclips/train/left/clip0,train\n",
        "no header": good.encode(),
        "empty": b"",
        "not UTF-8": b"path,label\n\xff\xfeclips/x,l\xe9ft\n",
        "a NUL byte in a path": ("path,label,split\n" + good + "bad\x00name,left,val\n").encode(),
        "rows outside the data root": b"path,label\n/etc/passwd,left\n/etc/hostname,right\n/etc,left\n",
        "missing clips": b"path,label\nnowhere/a,left\nnowhere/b,right\n",
        "one class only": b"path,label\nclips/train/left/clip0,left\nclips/train/left/clip1,left\n",
        "JSONL not JSON": b'{"path": "clips/train/left/clip0", "label": "left"}\n{not json\n',
        "JSONL row not an object": b'["clips/train/left/clip0", "left"]\n',
    }
    for case, content in cases.items():
        suffix = ".jsonl" if case.startswith("JSONL") else ".csv"
        manifest = folder / f"{case.replace(' ', '_')}{suffix}"
        manifest.write_bytes(content)
        run_dir = folder / f"run_{manifest.stem}"
        refusal_case(table, "bad inputs", f"manifest: {case}",
                     ["train", model, "--data", manifest, "-o", run_dir, "--epochs", "1", "--json", *TRAIN_FAST],
                     [manifest, clips], leftovers=[run_dir])  # fmt: skip


def bad_frame_folders(table: Table, work: Path, model: Path) -> None:
    """Clip trees where every clip is unusable: training on nothing is refused, naming why."""

    def damage(name: str, change: Callable[[Path], None]) -> Path:
        root = write_clips(work / f"frames_{name}", frames=6, train=1, val=1)
        for frame in sorted(root.rglob("frame_*.png")):
            change(frame)
        return root

    cases = {
        "every clip too short": write_clips(work / "frames_short", frames=2, train=1, val=1),
        "zero-byte frames": damage("zero", lambda p: p.write_bytes(b"")),
        "truncated PNGs": damage("truncated", lambda p: p.write_bytes(p.read_bytes()[:40])),
        "text files named .png": damage("text", lambda p: p.write_text("not an image\n")),
        "mixed frame sizes": damage("mixed", lambda p: p.name.endswith("3.png")
                                    and Image.new("RGB", (48, 40)).save(p, format="PNG")),
    }  # fmt: skip
    loop = write_clips(work / "frames_loop", frames=6, train=1, val=1)
    for clip in [p for p in loop.glob("*/*/*") if p.is_dir()]:
        shutil.rmtree(clip)
        clip.symlink_to(clip, target_is_directory=True)  # a symlink to itself
    cases["symlink loops"] = loop
    for case, root in cases.items():
        run_dir = work / f"run_frames_{case.replace(' ', '_')}"
        refusal_case(table, "bad inputs", f"frame folders: {case}",
                     ["train", model, "--data", root, "-o", run_dir, "--epochs", "1", "--json", *TRAIN_FAST],
                     [root], leftovers=[run_dir])  # fmt: skip


def outputs_over_inputs(table: Table, work: Path, model: Path, clips: Path) -> None:
    folder = work / "same"
    folder.mkdir()
    checkpoint = folder / "a.pt"
    shutil.copy(ROOT / "sample_models/digit_vgg.pt", checkpoint)
    copy = folder / "m.safetensors"
    shutil.copy(model, copy)
    (folder / "link.pt").symlink_to(checkpoint)
    os.link(checkpoint, folder / "hard.pt")
    (folder / "sub").mkdir()
    convert = ["convert", checkpoint, "--layer", "fc6", "-o"]
    cases = {
        "convert -o its input": [*convert, checkpoint],
        "convert -o a symlink to its input": [*convert, folder / "link.pt"],
        "convert -o a hard link to its input": [*convert, folder / "hard.pt"],
        "convert -o its input via ..": [*convert, folder / "sub" / ".." / "a.pt"],
        "export -o its input": ["export", copy, "--onnx", "-o", copy],
        "train -o an existing file": ["train", copy, "--data", clips, "-o", checkpoint, "--epochs", "1", *TRAIN_FAST],
    }
    for case, args in cases.items():
        refusal_case(table, "bad inputs", f"output = input: {case}", args, [checkpoint, copy])
    run_dir = folder / "run"
    first = prernn("train", copy, "--data", clips, "-o", run_dir, "--epochs", "1", "--json", *TRAIN_FAST)
    if first.code != 0:
        table.check("bad inputs", "train -o an existing run without --resume", f"first run failed: {first.stderr}")
        return
    refusal_case(table, "bad inputs", "train -o an existing run without --resume",
                 ["train", copy, "--data", clips, "-o", run_dir, "--epochs", "1", *TRAIN_FAST], [run_dir, copy])  # fmt: skip


# ---------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="Work in this folder and keep it (default: a temporary one).")
    options = parser.parse_args()
    work = options.keep or Path(tempfile.mkdtemp(prefix="prernn_reliability_"))
    work.mkdir(parents=True, exist_ok=True)
    table = Table()
    started = time.perf_counter()
    try:
        model = converted_model(work)
        clips = write_clips(work / "clips")
        reference = work / "reference"
        run = prernn("train", model, "--data", clips, "-o", reference, "--epochs", "3", "--checkpoint-every", "1",
                     "--json", *TRAIN_FAST)  # fmt: skip
        if run.code != 0:
            raise SystemExit(f"the reference run failed: {run.stderr}")
        step = work / "step.onnx"
        if prernn("export", model, "--onnx", "--steps", "1", "-o", step).code != 0:
            raise SystemExit("cannot export the sample model")

        kill_mid_training(table, work, model, clips, reference)
        kill_at_write_points(table, work, model, clips)
        full_disk(table, work, model, clips)
        malicious_pickles(table, work)
        hostile_specs(table, work, model, clips)
        malformed_headers(table, work, model)
        decompression_bomb(table, work)
        onnx_outside_data(table, work, step, clips / "val" / "left" / "clip0")
        bad_options(table, work, model, clips)
        bad_manifests(table, work, model, clips)
        bad_frame_folders(table, work, model)
        outputs_over_inputs(table, work, model, clips)
    finally:
        if options.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    print(table.markdown())
    failed = [(category, case, failure) for category, case, failure in table.rows if failure]
    for category, case, failure in failed:
        print(f"- {category}: {case}: {failure}")
    print(f"\n{len(table.rows)} cases in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
