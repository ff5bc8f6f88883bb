"""Seconds per epoch with a frozen trunk, with and without ``--trunk-cache``, measured in one run.

torchvision ``mobilenet_v2`` (random weights: only the timing matters) at 112×112, its
``features.18.0`` (conv, BN, ReLU6, then global pooling) converted to a PreGRU-SIH with a
2-class head (``--traditional``: a TraGRU of ``--hidden-size`` on the pooled features), ``--freeze-trunk``; ~50 synthetic clips of 16 frames (written to a temporary
folder), T=8, batch 8, 20 % held out for validation. Both runs read frames from one
``--frame-cache`` filled beforehand, so what differs is the trunk alone: without the cache
it runs on every sampled frame of every epoch, with it once per clip before the first epoch.

Reported per run, medians over the epochs after the first (the first is a warm-up):

* ``train s/epoch``: the training loop (the metrics row's ``seconds``);
* ``epoch s``: the whole epoch as a user waits for it: training, validation, checkpoint;
* ``fill s``: the trunk cache's one-time pass (computing every clip's entry);
* the ratios without / with the cache, and the whole ``train()`` call's wall time.

Run: ``.venv/bin/python benchmarks/bench_trunk_cache.py [--clips 50] [--epochs 6] [--threads 2]``
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
    """Train once; per-epoch seconds (loop only, and whole epoch), the cache's fill, the call's wall time."""
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
    result = train(build_model(args), splits, out, config, progress=progress)
    wall = time.perf_counter() - started
    if args.epochs < 2:  # the warm-up run: it fills the frame cache
        return {}
    epochs = [b - a for a, b in zip(marks[1:], marks[2:])]  # EPOCH_START to the next EPOCH_START (or DONE)
    return {
        "train_s": statistics.median(row["seconds"] for row in result.history[1:]),
        "epoch_s": statistics.median(epochs[1:]),
        "before_first_epoch_s": marks[1] - started,  # model to device, data, the trunk cache's fill
        "wall_s": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=50)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=6, help="at least 2: the first is a warm-up")
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
        tmp = Path(folder)
        splits = discover(synthetic_clips(tmp / "clips", args.clips, args.frames), val_fraction=0.2)
        frames = tmp / "frames"
        timed_run(splits, argparse.Namespace(**{**vars(args), "epochs": 1}), tmp / "warm", frames, None)  # frames
        without = timed_run(splits, args, tmp / "without", frames, None)
        cached = timed_run(splits, args, tmp / "with", frames, tmp / "trunk")
    numbers = {
        "model": "tragru" if args.traditional else "pregru-sih", "clips": args.clips, "frames": args.frames, "steps": args.steps, "size": SIZE, "threads": args.threads,
        "without_cache": without, "with_cache": cached,
        "train_speedup": without["train_s"] / cached["train_s"],
        "epoch_speedup": without["epoch_s"] / cached["epoch_s"],
        "fill_s": cached["before_first_epoch_s"] - without["before_first_epoch_s"],
    }  # fmt: skip
    if args.json:
        print(json.dumps(numbers, indent=2))
        return
    model = f"TraGRU hidden {args.hidden_size}" if args.traditional else "PreGRU-SIH features.18.0"
    print(f"mobilenet_v2 {model}, {SIZE}x{SIZE}, {args.clips} clips x {args.frames} frames, T={args.steps}, "
          f"{args.threads} threads, medians of epochs 2..{args.epochs}")  # fmt: skip
    print(f"{'':14}{'train s/epoch':>15}{'epoch s':>10}{'run wall s':>12}")
    for name, row in (("without cache", without), ("with cache", cached)):
        print(f"{name:14}{row['train_s']:>15.3f}{row['epoch_s']:>10.3f}{row['wall_s']:>12.1f}")
    print(f"speed-up: training loop {numbers['train_speedup']:.1f}x, whole epoch {numbers['epoch_speedup']:.1f}x; "
          f"one-time fill {numbers['fill_s']:.1f} s")  # fmt: skip


if __name__ == "__main__":
    main()
