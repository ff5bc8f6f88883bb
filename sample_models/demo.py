"""The main job on the shipped samples, end to end, on CPU in a few minutes.

Converts the shipped DigitVGG's fc6 into a PreGRU-SIH and builds its traditional
counterpart (TraGRU on fc7, hidden size matched to PreGRU's recurrent parameter
count), trains both briefly on the shipped direction-of-motion clips, evaluates
them, prints the comparison side by side, looks inside their gates (the paper's
Figure 2), then exports both to ONNX (validated against PyTorch) and streams a
validation clip through the exported PreGRU step model.

Every step is a real ``prernn`` command, printed before it runs and shown as it runs
(training draws its progress bars), followed by the time it took, so each can be rerun
by hand. Run from the repository root:

    .venv/bin/python sample_models/demo.py [--out demo_out] [--epochs 4]
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from rich import box
from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
console = Console(highlight=False)
TRAINING = ["--steps", "8", "--optimizer", "adamw", "--lr", "0.001", "--clip-pool", "last", "--seed", "0"]
DESIGNS = {"PreGRU-SIH": ["--sih"], "TraGRU": ["--traditional"]}


def prernn(*args: object, capture_json: bool = False):
    """Run one ``prernn`` command as a user would: print it, let it print, then its time; its JSON when asked."""
    argv = [str(arg) for arg in args]
    console.print(f"\n[bold cyan]$ prernn {shlex.join(argv)}[/]", soft_wrap=True)
    started = time.perf_counter()
    command = [sys.executable, "-m", "prernn_cli", *argv]
    done = subprocess.run(command, check=False, stdout=subprocess.PIPE if capture_json else None, text=True)
    if done.returncode != 0:
        sys.exit(done.returncode)
    console.print(f"[dim]({time.perf_counter() - started:.1f} s)[/]")
    return json.loads(done.stdout) if capture_json else None


def read_metrics(run: Path) -> list[dict]:
    """The epoch rows ``prernn train`` wrote to the run folder's metrics.jsonl."""
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def train_and_evaluate(name: str, flags: list[str], clips: Path, checkpoint: Path, out: Path, epochs: int) -> dict:
    """Convert, train (its progress live) and evaluate one design; its epoch rows, evaluation and best checkpoint."""
    model = out / f"{name.lower()}.safetensors"
    run = out / f"run_{name.lower()}"
    prernn("convert", checkpoint, "--layer", "fc6", "--cell", "gru", *flags, "--num-classes", "2", "-o", model)
    prernn("train", model, "--data", clips, "-o", run, "--epochs", epochs, *TRAINING)
    best = run / "best.safetensors"
    evaluation = prernn(
        "evaluate", best, "--data", clips, "--split", "val", "--steps", "8", "--clip-pool", "last",
        "-o", out / f"eval_{name.lower()}", "--json", capture_json=True,
    )  # fmt: skip
    return {"history": read_metrics(run), "evaluation": evaluation, "best": best}


def comparison_table(runs: dict, epochs: int) -> Table:
    """Both designs epoch by epoch: one section per epoch, one row per design (fits 80 columns)."""
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, header_style="bold")
    table.add_column("epoch", justify="right")
    table.add_column("model")
    for column in ("train loss", "val loss", "val acc"):
        table.add_column(column, justify="right")
    for epoch in range(epochs):
        for name in DESIGNS:
            row = runs[name]["history"][epoch]
            table.add_row(
                str(epoch + 1), name, f"{row['train_loss']:.3f}", f"{row['val_loss']:.3f}",
                f"{row['val_accuracy']:.3f}", end_section=name == list(DESIGNS)[-1],
            )  # fmt: skip
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="folder for everything the demo writes")
    parser.add_argument("--epochs", type=int, default=4)
    options = parser.parse_args()
    out = options.out
    out.mkdir(parents=True, exist_ok=True)
    clips = HERE / "clips"
    checkpoint = HERE / "digit_vgg.pt"
    started = time.perf_counter()

    prernn("inspect", checkpoint)
    runs = {
        name: train_and_evaluate(name, flags, clips, checkpoint, out, options.epochs) for name, flags in DESIGNS.items()
    }
    console.print("\n[bold]PreGRU-SIH vs TraGRU on the shipped direction-of-motion clips (val: 40 clips)[/]")
    console.print(comparison_table(runs, options.epochs))
    for name in DESIGNS:
        metrics = runs[name]["evaluation"]["metrics"]
        console.print(f"{name}: best checkpoint's val accuracy {metrics['accuracy']:.3f}")

    pre, tra = runs["PreGRU-SIH"]["best"], runs["TraGRU"]["best"]
    prernn("analyze", pre, "--compare", tra, "--data", clips / "val", "-o", out / "analysis")
    prernn("export", pre, "--steps", "8", "-o", out / "pregru-sih.onnx")
    prernn("export", pre, "--steps", "1", "-o", out / "pregru-sih.step.onnx")
    prernn("export", tra, "--steps", "8", "-o", out / "tragru.onnx")
    stream_clip = sorted((clips / "val" / "left").iterdir())[0]
    prernn("stream", out / "pregru-sih.step.onnx", stream_clip)
    console.print(f"\n[bold]Done in {time.perf_counter() - started:.0f} s[/]; everything is in {out}/")


if __name__ == "__main__":
    main()
