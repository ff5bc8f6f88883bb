"""Seconds per epoch with a frozen trunk, with and without ``--trunk-cache``, measured in one run.

torchvision ``mobilenet_v2`` (random weights: only the timing matters) at 112×112, its
``features.18.0`` (conv, BN, ReLU6, then global pooling) converted to a PreGRU-SIH with a
2-class head (``--traditional``: a TraGRU of ``--hidden-size`` on the pooled features), ``--freeze-trunk``; ~50 synthetic clips of 16 frames (written to a temporary
folder), T=8, batch 8, 20 % held out for validation. Both runs read frames from one
``--frame-cache`` filled beforehand, so what differs is the trunk alone: without the cache
it runs on every sampled frame of every epoch, with it once per clip before the first epoch.

The two alternate in ``--rounds`` short runs (a shared machine's load changes by the minute);
reported are medians over every run's epochs after its first (a warm-up):

* ``train s/epoch``: the training loop (the metrics row's ``seconds``);
* ``epoch s``: the whole epoch as a user waits for it: training, validation, checkpoint;
* ``fill s``: the trunk cache's one-time pass (computing every clip's entry, first round);
* the ratios without / with the cache.

On an oversubscribed machine (load above the cores) OpenMP's barriers make every small
op cost milliseconds at 2 threads, which hits the recurrent layer's per-step ops far
harder than the trunk's large convolutions; ``--threads 1`` measures compute there.

Run: ``.venv/bin/python benchmarks/bench_trunk_cache.py [--clips 50] [--rounds 4] [--threads 2] [--traditional]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.models import mobilenet_v2

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from prernn_cli.choices import OptimizerKind  # noqa: E402
from prernn_cli.conversion import convert  # noqa: E402
from prernn_cli.data import discover  # noqa: E402
from prernn_cli.spec import CellType, HeadKind, InputSpec  # noqa: E402
from prernn_cli.train import EventKind, TrainConfig, train  # noqa: E402

SIZE = 112


def synthetic_clips(root: Path, clips: int, frames: int) -> Path:
    """``clips`` PNG clips of ``frames`` frames, 112×112: a bright square moving left or right on noise."""
    rng = np.random.default_rng(0)
    for k in range(clips):
        name, direction = ("left", -1) if k % 2 else ("right", 1)
        folder = root / name / f"clip{k:03d}"
        folder.mkdir(parents=True)
        y = int(rng.integers(8, SIZE - 40))
        background = rng.integers(0, 80, size=(SIZE, SIZE, 3), dtype=np.uint8)
        for i in range(frames):
            frame = background.copy()
            x = 8 + 4 * i if direction > 0 else SIZE - 40 - 4 * i
            frame[y : y + 24, x : x + 24] = 255
            Image.fromarray(frame).save(folder / f"frame_{i:04d}.png")
    return root


def build_model(args):
    """PreGRU-SIH on ``features.18.0`` (hidden 1280), or with ``--traditional`` a TraGRU of ``--hidden-size``."""
    torch.manual_seed(0)
    spec = InputSpec(size=(SIZE, SIZE))
    if args.traditional:
        options = {"traditional": True, "hidden_size": args.hidden_size}
    else:
        options = {"sih": True}
    return convert(
        mobilenet_v2(weights=None), "mobilenet_v2", spec, ["features.18.0"], CellType.GRU,
        head=HeadKind.CLASSIFY, outputs=2, **options,
    )  # fmt: skip


def timed_run(splits, args, out: Path, frame_cache: Path, trunk_cache: Path | None) -> dict:
    """Train once (``args.epochs``); each epoch's seconds (loop only, and whole), and the time before the first."""
    config = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, steps=args.steps, workers=args.workers, device="cpu",
        freeze_trunk=True, augment=False, optimizer=OptimizerKind.ADAMW, lr=1e-3, frame_cache=str(frame_cache),
        trunk_cache=str(trunk_cache) if trunk_cache else None,
    )  # fmt: skip
    marks: list[float] = []

    def progress(event):
        if event.kind in (EventKind.START, EventKind.EPOCH_START, EventKind.DONE):
            marks.append(time.perf_counter())

    started = time.perf_counter()
    result = train(build_model(args), splits, out, config, progress=progress, overwrite=True)
    return {
        "train_s": [row["seconds"] for row in result.history],
        "epoch_s": [b - a for a, b in zip(marks[1:], marks[2:])],  # EPOCH_START to the next EPOCH_START (or DONE)
        "before_first_epoch_s": marks[1] - started,  # model to device, data, the trunk cache's fill
    }


def interleaved(splits, args, tmp: Path) -> dict:
    """``--rounds`` rounds, each training once without the cache and once with it; epochs after each run's first.

    Alternating the two in short rounds spreads a shared machine's changing load over both.
    """
    frames, trunk = tmp / "frames", tmp / "trunk"
    timed_run(splits, argparse.Namespace(**{**vars(args), "epochs": 1}), tmp / "warm", frames, None)  # frame cache
    samples: dict = {"without": {"train_s": [], "epoch_s": []}, "with": {"train_s": [], "epoch_s": []}}
    before: dict = {}  # the first round's time before the first epoch: with the cache, its fill
    for _ in range(args.rounds):
        for name, cache in (("without", None), ("with", trunk)):
            run = timed_run(splits, args, tmp / name, frames, cache)
            for key in ("train_s", "epoch_s"):
                samples[name][key] += run[key][1:]  # each run's first epoch is a warm-up
            before.setdefault(name, run["before_first_epoch_s"])
    medians = {name: {key: statistics.median(values) for key, values in runs.items()} for name, runs in samples.items()}
    return {
        "without_cache": medians["without"],
        "with_cache": medians["with"],
        "train_speedup": medians["without"]["train_s"] / medians["with"]["train_s"],
        "epoch_speedup": medians["without"]["epoch_s"] / medians["with"]["epoch_s"],
        "fill_s": before["with"] - before["without"],
        "samples_per_median": len(samples["with"]["train_s"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=50)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=3, help="per run, at least 2: each run's first is a warm-up")
    parser.add_argument("--rounds", type=int, default=4, help="runs without and with the cache, alternating")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--traditional", action="store_true", help="a TraGRU on the pooled features instead")
    parser.add_argument("--hidden-size", type=int, default=256, help="the TraGRU's hidden size")
    parser.add_argument("--json", action="store_true", help="print the numbers as one JSON document")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        splits = discover(synthetic_clips(Path(folder) / "clips", args.clips, args.frames), val_fraction=0.2)
        numbers = interleaved(splits, args, Path(folder))
    model = f"TraGRU hidden {args.hidden_size}" if args.traditional else "PreGRU-SIH features.18.0"
    if args.json:
        print(json.dumps({"model": model, **vars(args), **numbers}, indent=2))
        return
    print(f"mobilenet_v2 {model}, {SIZE}x{SIZE}, {args.clips} clips x {args.frames} frames, T={args.steps}, "
          f"{args.threads} threads; medians of {numbers['samples_per_median']} epochs each, {args.rounds} rounds")  # fmt: skip
    print(f"{'':14}{'train s/epoch':>15}{'epoch s':>10}")
    for name in ("without_cache", "with_cache"):
        row = numbers[name]
        print(f"{name.replace('_', ' '):14}{row['train_s']:>15.3f}{row['epoch_s']:>10.3f}")
    print(f"speed-up: training loop {numbers['train_speedup']:.1f}x, whole epoch {numbers['epoch_speedup']:.1f}x; "
          f"one-time fill {numbers['fill_s']:.1f} s")  # fmt: skip


if __name__ == "__main__":
    main()
