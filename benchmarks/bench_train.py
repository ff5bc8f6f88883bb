"""Training throughput: is clip loading hidden behind compute, and what does the tool cost over a plain loop?

Three measurements on the same clips, same batch size and T, medians over ``--repeats``:

1. **end to end** — :func:`prernn_cli.train.train` (decoding in DataLoader workers,
   preprocessing, forward/backward/step, progress bookkeeping), clips/s of the
   training loop of each epoch (validation and checkpoint writing excluded; the first
   epoch is a warm-up and dropped); once decoding every epoch, once with
   ``--frame-cache`` (decoded in the first epoch, read from the cache after);
2. **compute alone** — the same model, loss and optimiser stepping over the same
   batches pre-decoded into tensors in memory (no I/O, no decoding);
3. **plain PyTorch, traditional baseline** — a hand-written loop training the
   backbone + ``torch.nn.GRU`` on its feature vector + a linear head (the paper's
   TraGRU) on the same pre-decoded tensors.

Ratios printed: end-to-end / compute-alone, without and with the frame cache (target
>= 0.9: decoding hidden behind compute), and end-to-end / plain-traditional.

Run: ``.venv/bin/python benchmarks/bench_train.py [--clips sample_models/clips] [--workers 2]``.
Without ``--clips`` (or when the folder is missing) it writes synthetic PNG clips to a
temporary folder.
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
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from prernn_cli.architectures import architecture_input, build_architecture  # noqa: E402
from prernn_cli.conversion import convert  # noqa: E402
from prernn_cli.data import ClipDataset, Sampling, Task, collate, discover  # noqa: E402
from prernn_cli.metrics import task_loss  # noqa: E402
from prernn_cli.spec import CellType, HeadKind  # noqa: E402
from prernn_cli.train import TrainConfig, train  # noqa: E402


def synthetic_clips(root: Path, per_class: int, frames: int = 16) -> Path:
    rng = np.random.default_rng(0)
    for name, direction in (("left", -1), ("right", 1)):
        for k in range(per_class):
            folder = root / name / f"clip{k:03d}"
            folder.mkdir(parents=True)
            y = int(rng.integers(2, 20))
            background = rng.integers(0, 80, size=(32, 32, 3), dtype=np.uint8)
            for i in range(frames):
                frame = background.copy()
                x = 2 + i if direction > 0 else 20 - i
                frame[y : y + 10, x : x + 10] = 255
                Image.fromarray(frame).save(folder / f"frame_{i:04d}.png")
    return root


def build_model(traditional: bool = False) -> nn.Module:
    torch.manual_seed(0)
    base = build_architecture("digit_vgg")
    weights = ROOT / "sample_models" / "digit_vgg.pt"
    if weights.exists():
        base.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return convert(
        base,
        "digit_vgg",
        architecture_input("digit_vgg"),
        ["classifier.0"],
        CellType.GRU,
        sih=not traditional,
        traditional=traditional,
        head=HeadKind.CLASSIFY,
        outputs=2,
    )


def end_to_end(splits, args, out: Path, frame_cache: Path | None = None) -> float:
    model = build_model()
    config = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        steps=args.steps,
        workers=args.workers,
        device="cpu",
        augment=True,
        sampling=Sampling.RANDOM,
        frame_cache=str(frame_cache) if frame_cache else None,
    )
    result = train(model, splits, out, config)
    rates = [row["clips_per_s"] for row in result.history[1:]]  # first epoch: warm-up
    return statistics.median(rates)


def predecoded(splits, args) -> list[dict]:
    spec = architecture_input("digit_vgg")
    dataset = ClipDataset(splits.train, spec, Task.CLASSIFY, args.steps, Sampling.UNIFORM)
    items = [dataset[i] for i in range(len(dataset))]
    return [collate(items[i : i + args.batch_size]) for i in range(0, len(items), args.batch_size)]


def compute_alone(batches, args) -> float:
    model = build_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    rates = []
    for _ in range(args.epochs):
        model.train()
        start, clips = time.perf_counter(), 0
        for batch in batches:
            outputs, _ = model(batch["frames"])
            loss = task_loss(Task.CLASSIFY, outputs.float(), batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
            float(loss.detach())
            clips += batch["size"]
        rates.append(clips / (time.perf_counter() - start))
    return statistics.median(rates[1:])


class PlainTraGRU(nn.Module):
    """The traditional baseline written by hand: backbone features -> nn.GRU -> linear head."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        base = build_architecture("digit_vgg")
        self.features = base.features
        self.fc = nn.Sequential(*list(base.classifier.children())[:-1])  # fc6, relu, drop, fc7, relu, drop
        self.gru = nn.GRU(256, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 2)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        b, t = frames.shape[:2]
        x = self.fc(torch.flatten(self.features(frames.flatten(0, 1)), 1)).view(b, t, -1)
        y, _ = self.gru(x)
        return self.head(y)


def plain_traditional(batches, args) -> float:
    hidden = build_model(traditional=True).spec.layers[0].hidden_size  # same size as our TraGRU
    model = PlainTraGRU(hidden)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    rates = []
    for _ in range(args.epochs):
        start, clips = time.perf_counter(), 0
        for batch in batches:
            outputs = model(batch["frames"])
            loss = nn.functional.cross_entropy(
                outputs.flatten(0, 1), batch["label"].repeat_interleave(outputs.shape[1])
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            clips += batch["size"]
        rates.append(clips / (time.perf_counter() - start))
    return statistics.median(rates[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=Path, default=None, help="clip folder (default: synthetic clips)")
    parser.add_argument("--per-class", type=int, default=24, help="synthetic clips per class")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        clips = (
            args.clips if args.clips and args.clips.exists() else synthetic_clips(Path(tmp) / "clips", args.per_class)
        )
        splits = discover(clips, val_fraction=0.0)
        if splits.source == "split folders":
            splits.train = splits.train + splits.val
        splits.val = []  # throughput of the training loop only
        batches = predecoded(splits, args)
        e2e, cached, alone, plain = [], [], [], []
        for repeat in range(args.repeats):
            e2e.append(end_to_end(splits, args, Path(tmp) / f"run{repeat}"))
            # a fresh cache each repeat: its first epoch decodes and fills it, and is dropped as the warm-up
            cached.append(
                end_to_end(splits, args, Path(tmp) / f"cached{repeat}", frame_cache=Path(tmp) / f"cache{repeat}")
            )
            alone.append(compute_alone(batches, args))
            plain.append(plain_traditional(batches, args))
    result = {
        "clips": len(splits.train),
        "batch_size": args.batch_size,
        "steps": args.steps,
        "workers": args.workers,
        "threads": torch.get_num_threads(),
        "device": "cpu",
        "end_to_end_clips_per_s": statistics.median(e2e),
        "end_to_end_frame_cache_clips_per_s": statistics.median(cached),
        "compute_alone_clips_per_s": statistics.median(alone),
        "plain_traditional_clips_per_s": statistics.median(plain),
    }
    result["ratio_end_to_end_vs_compute"] = result["end_to_end_clips_per_s"] / result["compute_alone_clips_per_s"]
    result["ratio_frame_cache_vs_compute"] = (
        result["end_to_end_frame_cache_clips_per_s"] / result["compute_alone_clips_per_s"]
    )
    result["ratio_end_to_end_vs_plain_traditional"] = (
        result["end_to_end_clips_per_s"] / result["plain_traditional_clips_per_s"]
    )
    if args.json:
        print(json.dumps(result, indent=2))
        return
    for key, value in result.items():
        print(f"{key:42s} {value:.3f}" if isinstance(value, float) else f"{key:42s} {value}")
    for key in ("ratio_end_to_end_vs_compute", "ratio_frame_cache_vs_compute"):
        print(f"target: {key} >= 0.9 -> {'met' if result[key] >= 0.9 else 'NOT met'}")


if __name__ == "__main__":
    main()
