"""Late fusion on shipped samples: a task where each stream alone sees half the label and fusion sees all of it.

The task has four classes ``<a>-<b>`` for a, b in {left, right}. Every clip name exists in two
folders (two "modalities"): stream 1's folder holds, under that name, a digit moving in direction
a; stream 2's folder holds a *different* digit moving in direction b. A model on stream 1 alone
can only tell a (at best 50 % on 4 balanced classes), one on stream 2 only b; the average of their
class probabilities tells both. Clips come from ``sample_models/clips`` (frame folders, copied).

Run (from the repository root; about a minute on 2 CPU cores):

    .venv/bin/python benchmarks/fusion_demo.py [--out benchmarks/out/fusion_demo] [--epochs 10] [--lr 0.003] [--steps 8]

It builds the task, converts DigitVGG's fc6 into a PreGRU-SIH twice, trains one model per
stream with ``prernn train``, and runs ``prernn fuse`` on the two, all through the CLI; the
fused report lands in ``OUT/fused/`` and the numbers are printed as JSON.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_CLIPS = ROOT / "sample_models" / "clips"
DIRECTIONS = ("left", "right")
CLASSES = tuple(f"{a}-{b}" for a in DIRECTIONS for b in DIRECTIONS)


def build_task(out: Path, clips: Path = SAMPLE_CLIPS) -> tuple[Path, Path]:
    """Write ``out/stream1`` and ``out/stream2`` (each ``{train,val}/<a>-<b>/clipNNN_<a>``); return both folders.

    Every sample pair i (digit i % 10) gives two clips, one per direction a: stream 1 holds pair i
    moving in direction a, stream 2 another digit (pair i + 3 in the same block of ten) moving in
    direction b, b alternating with the block of ten and with a. So every class holds every digit
    equally often in both streams (a model cannot tell a class from a digit), a digit image alone
    does not tell b in stream 1 (nor a in stream 2), and each class gets a quarter of the clips
    (40 train and 10 val from the 80 + 20 sample pairs).
    """
    folders = (out / "stream1", out / "stream2")
    for split in ("train", "val"):
        pairs = sorted(p.name.rsplit("_", 1)[0] for p in (clips / split / "left").iterdir())
        for i, pair in enumerate(pairs):
            block, digit = divmod(i, 10)
            other = pairs[block * 10 + (digit + 3) % 10]
            for turn, first in enumerate(DIRECTIONS):
                second = DIRECTIONS[(block + turn) % 2]
                name = f"{first}-{second}"
                clip = f"clip{i:03d}_{first}"
                shutil.copytree(clips / split / first / f"{pair}_{first}", folders[0] / split / name / clip)
                shutil.copytree(clips / split / second / f"{other}_{second}", folders[1] / split / name / clip)
    return folders


def _prernn(*args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "prernn_cli", *args], cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"prernn {' '.join(args)} failed:\n{done.stderr}")
    return done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "fusion_demo")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=0.003)
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    if args.out.exists():
        shutil.rmtree(args.out)
    streams = build_task(args.out / "task")
    models = []
    for index, data in enumerate(streams, start=1):
        converted = args.out / f"stream{index}.safetensors"
        _prernn("convert", "sample_models/digit_vgg.pt", "--layer", "fc6", "--cell", "gru", "--sih",
                "--num-classes", "4", "-o", str(converted))  # fmt: skip
        run = args.out / f"run{index}"
        _prernn("train", str(converted), "--data", str(data), "-o", str(run), "--epochs", str(args.epochs),
                "--optimizer", "adamw", "--lr", str(args.lr), "--steps", str(args.steps), "--clip-pool", "last",
                "--device", "cpu", "--workers", "0", "--frame-cache", str(args.out / "frames"))  # fmt: skip
        models.append(str(run / "best.safetensors"))
    fused = _prernn("fuse", *models, "--data", str(streams[0]), "--data", str(streams[1]), "--json",
                    "-o", str(args.out / "fused"))  # fmt: skip
    summary = json.loads(fused.stdout)
    report = json.loads((args.out / "fused" / "fusion_val.json").read_text())
    result = {
        "val_clips": summary["fused"]["clips"],
        "stream_accuracy": [stream["metrics"]["accuracy"] for stream in summary["streams"]],
        "stream_direction_accuracy": [_direction_accuracy(report, part) for part in (0, 1)],
        "fused_accuracy": summary["fused"]["accuracy"],
    }
    print(json.dumps(result, indent=2))


def _direction_accuracy(report: dict, part: int) -> float:
    """How often stream ``part + 1`` gets its half of the label (a or b) right, its probabilities summed per direction."""
    classes = report["classes"]
    right = 0
    for clip in report["per_clip"]:
        scores = {d: 0.0 for d in DIRECTIONS}
        for name, probability in zip(classes, clip["stream_probabilities"][part]):
            scores[name.split("-")[part]] += probability
        right += max(scores, key=scores.get) == clip["label"].split("-")[part]
    return right / len(report["per_clip"])


if __name__ == "__main__":
    main()
