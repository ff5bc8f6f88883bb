"""The main job on the shipped samples, end to end, on CPU in a few minutes.

Converts the shipped DigitVGG's fc6 into a PreGRU-SIH and builds its traditional
counterpart (TraGRU on fc7, hidden size matched to PreGRU's recurrent parameter
count), trains both briefly on the shipped direction-of-motion clips, evaluates
them, prints the comparison side by side, looks inside their gates (the paper's
Figure 2), then exports both to ONNX (validated against PyTorch) and streams a
validation clip through the exported PreGRU step model.

Every step is a real ``prernn`` command, printed before it runs, so each can be
rerun by hand. Run from the repository root:

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

from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
console = Console(highlight=False)
TRAINING = ["--steps", "8", "--optimizer", "adamw", "--lr", "0.001", "--clip-pool", "last", "--seed", "0"]


def prernn(*args: object, capture_json: bool = False):
    """Run one ``prernn`` command as a user would, printing it first; return its JSON when asked."""
    argv = [str(arg) for arg in args]
    console.print(f"\n[bold cyan]$ prernn {' '.join(shlex.quote(arg) for arg in argv)}[/]")
    command = [sys.executable, "-m", "prernn_cli", *argv]
    if capture_json:
        done = subprocess.run(command, check=False, stdout=subprocess.PIPE, text=True)
        if done.returncode != 0:
            sys.exit(done.returncode)
        return json.loads(done.stdout)
    done = subprocess.run(command, check=False)
    if done.returncode != 0:
        sys.exit(done.returncode)
    return None


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
    designs = {"PreGRU-SIH": ["--sih"], "TraGRU": ["--traditional"]}
    runs = {}
    for name, flags in designs.items():
        model = out / f"{name.lower()}.safetensors"
        prernn("convert", checkpoint, "--layer", "fc6", "--cell", "gru", *flags, "--num-classes", "2", "-o", model)
        result = prernn(
            "train",
            model,
            "--data",
            clips,
            "-o",
            out / f"run_{name.lower()}",
            "--epochs",
            options.epochs,
            *TRAINING,
            "--json",
            capture_json=True,
        )
        best = Path(result["files"]["best"])
        evaluation = prernn(
            "evaluate",
            best,
            "--data",
            clips,
            "--split",
            "val",
            "--steps",
            "8",
            "--clip-pool",
            "last",
            "-o",
            out / f"eval_{name.lower()}",
            "--json",
            capture_json=True,
        )
        runs[name] = {"history": result["history"], "evaluation": evaluation, "best": best}

    table = Table(
        title="PreGRU-SIH vs TraGRU on the shipped direction-of-motion clips (val: 40 clips)", header_style="bold"
    )
    table.add_column("epoch", justify="right")
    for name in designs:
        table.add_column(f"{name}\ntrain loss", justify="right")
        table.add_column(f"{name}\nval loss", justify="right")
        table.add_column(f"{name}\nval acc", justify="right")
    for epoch in range(options.epochs):
        row = [str(epoch + 1)]
        for name in designs:
            history = runs[name]["history"][epoch]
            row += [f"{history['train_loss']:.3f}", f"{history['val_loss']:.3f}", f"{history['val_accuracy']:.3f}"]
        table.add_row(*row)
    console.print()
    console.print(table)
    for name in designs:
        metrics = runs[name]["evaluation"]["metrics"]
        console.print(f"{name}: best checkpoint's val accuracy {metrics['accuracy']:.3f}  ({runs[name]['best']})")

    prernn(
        "analyze",
        runs["PreGRU-SIH"]["best"],
        "--compare",
        runs["TraGRU"]["best"],
        "--data",
        clips / "val",
        "-o",
        out / "analysis",
    )
    onnx_pre = out / "pregru-sih.onnx"
    prernn("export", runs["PreGRU-SIH"]["best"], "--onnx", "--steps", "8", "-o", onnx_pre)
    prernn("export", runs["PreGRU-SIH"]["best"], "--onnx", "--steps", "1", "-o", out / "pregru-sih.step.onnx")
    prernn("export", runs["TraGRU"]["best"], "--onnx", "--steps", "8", "-o", out / "tragru.onnx")
    stream_clip = sorted((clips / "val" / "left").iterdir())[0]
    prernn("stream", out / "pregru-sih.step.onnx", stream_clip)
    console.print(f"\n[bold]Done in {time.perf_counter() - started:.0f} s[/]; everything is in {out}/")


if __name__ == "__main__":
    main()
