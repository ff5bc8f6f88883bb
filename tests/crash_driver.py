"""Test driver (run as a script by test_outputs.py): kill a training run at each rename of its files, then resume.

    python crash_driver.py MODEL CLIPS WORKDIR CONFIG_JSON POINTS_JSON

Every write of a run goes through ``os.replace`` (the atomic rename of ``prernn_cli.files``).
This script imports torch and prernn once, then for each kill point ``[when, n]`` forks a
child that trains into ``WORKDIR/<when><n>`` and SIGKILLs itself just ``before`` or ``after``
the n-th rename into its run folder (a real crash: no cleanup, no ``finally``), then forks a
second child that resumes that folder to the end. ``WORKDIR/reference`` is an uninterrupted
run of the same config, which records the names it renamed into ``WORKDIR/renames.json``.

Prints one JSON object: for each kill point, how the killed child ended (-9 expected) and
the resuming child's exit status (0 expected, its error in ``WORKDIR/<when><n>.error``).
Forking keeps the run fast (one import of torch); with one torch thread, the parent never
starts a thread pool that a forked child could inherit broken.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import sys
import traceback
from pathlib import Path

import matplotlib
import torch

from prernn_cli.checkpoint import load_converted
from prernn_cli.data import discover
from prernn_cli.train import TrainConfig, train


def _watch_renames(folder: Path, on_rename) -> None:
    """Call ``on_rename(count, target, before)`` around each ``os.replace`` into ``folder``."""
    real_replace = os.replace
    count = 0

    def replace(src, dst, *args, **kwargs):
        nonlocal count
        if Path(dst).parent.resolve() != folder.resolve():
            return real_replace(src, dst, *args, **kwargs)
        count += 1
        on_rename(count, Path(dst).name, True)
        real_replace(src, dst, *args, **kwargs)
        on_rename(count, Path(dst).name, False)

    os.replace = replace


def _in_child(job) -> int:
    """Run ``job`` in a forked child; its wait status as an exit code (negative: killed by that signal)."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            job()
        except BaseException:  # noqa: BLE001 - the child reports any failure through its exit status
            traceback.print_exc()
            code = 3
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def main() -> None:
    model_file, clips, workdir, config_json, points_json = sys.argv[1:]
    workdir = Path(workdir)
    config = TrainConfig(**json.loads(config_json))
    torch.set_num_threads(1)
    matplotlib.use("Agg")
    importlib.import_module("matplotlib.pyplot")  # once here, not in every child that plots curves

    def run(folder: Path, resume: Path | None = None) -> None:
        train(load_converted(model_file), discover(clips), folder, config, resume=resume)

    def reference() -> None:
        folder = workdir / "reference"
        names: list[str] = []
        _watch_renames(folder, lambda count, name, before: names.append(name) if before else None)
        run(folder)
        (workdir / "renames.json").write_text(json.dumps(names))

    results = {"reference": _in_child(reference)}
    for when, n in json.loads(points_json):
        folder = workdir / f"{when}{n}"

        def crash(folder=folder, when=when, n=n) -> None:
            def kill(count, name, before):
                if count == n and before == (when == "before"):
                    os.kill(os.getpid(), signal.SIGKILL)

            _watch_renames(folder, kill)
            run(folder)

        def resume(folder=folder) -> None:
            try:
                run(folder, resume=folder)
            except Exception as error:
                (folder.parent / f"{folder.name}.error").write_text(f"{type(error).__name__}: {error}")
                raise

        results[f"{when}{n}"] = {"killed": _in_child(crash), "resumed": _in_child(resume)}
    print(json.dumps(results))


if __name__ == "__main__":
    main()
