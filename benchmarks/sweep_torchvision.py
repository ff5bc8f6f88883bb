"""Sweep every torchvision model: analyze, convert each convertible layer, run a 2-step forward.

For every name in ``torchvision.models.list_models()``: classification and video models are
built with random weights, run at the smallest input they accept (tried from small to
large), analysed with :func:`prernn_cli.surgery.network_report`; then each of the last
``--max-layers`` convertible layers is converted with LSTM and GRU, gate-dependent and SIH,
and run forward on ``[1, 2, C, (L,) H, W]``; outputs must be ``[1, 2, num_classes]``.
Detection / segmentation / optical-flow / quantized models are listed as skipped, with why.

Each model runs in its own subprocess with a time cap (``--timeout``), so one slow or
crashing model cannot stop the sweep.

    .venv/bin/python benchmarks/sweep_torchvision.py                      # whole sweep
    .venv/bin/python benchmarks/sweep_torchvision.py resnet18 vit_b_16    # some models
    .venv/bin/python benchmarks/sweep_torchvision.py --json sweep.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import torch
from torchvision import models

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from prernn_cli.architectures import architecture_input, build_architecture  # noqa: E402
from prernn_cli.conversion import convert  # noqa: E402
from prernn_cli.spec import CellType, FrameKind, InputSpec  # noqa: E402
from prernn_cli.surgery import network_report  # noqa: E402

DESIGNS = (("lstm", False), ("lstm", True), ("gru", False), ("gru", True))
IMAGE_SIZES = (32, 64, 96, 128, 160, 224, 299)
SNIPPET_SHAPES = ((4, 32), (8, 32), (4, 64), (8, 64), (16, 112))  # (L, size)


def model_families() -> dict[str, Optional[str]]:
    """Every torchvision model name → None (swept) or the reason it is skipped."""
    swept = set(models.list_models(module=models)) | set(models.list_models(module=models.video))
    skipped = {}
    for module, what in (
        (models.detection, "detection"),
        (models.segmentation, "segmentation"),
        (models.optical_flow, "optical flow"),
        (models.quantization, "quantized"),
    ):
        for name in models.list_models(module=module):
            skipped[name] = f"skipped: {what} model (prernn converts classification/video backbones)"
    result: dict[str, Optional[str]] = {}
    for name in models.list_models():
        result[name] = None if name in swept else skipped.get(name, "skipped: not a classification or video model")
    return result


def smallest_input(name: str, model: torch.nn.Module):
    """The smallest InputSpec (from the architecture's default) whose forward runs."""
    default = architecture_input(name)
    if default.frame_kind is FrameKind.SNIPPET:
        candidates = [(length, size) for length, size in SNIPPET_SHAPES]
    else:
        candidates = [(None, size) for size in IMAGE_SIZES if size <= max(default.size)] or [(None, default.size[0])]
    candidates.append((default.snippet_length, default.size[0]))  # the default always last (mvit: 16x224 only)
    errors = []
    for length, size in candidates:
        spec = InputSpec(
            frame_kind=default.frame_kind,
            channels=default.channels,
            size=(size, size),
            snippet_length=length,
            mean=default.mean,
            std=default.std,
        )
        try:
            with torch.no_grad():
                model(torch.randn(1, *spec.step_shape()))
            return spec
        except Exception as error:  # noqa: BLE001 - too small: try the next size
            errors.append(f"{spec.step_shape()}: {type(error).__name__}")
    raise RuntimeError(f"no tried input runs: {'; '.join(errors[-2:])}")


def sweep_one(name: str, max_layers: int) -> dict:
    """Analyse and convert one model; every failure is recorded, never raised."""
    record: dict = {"model": name, "status": "ok", "layers": [], "not_convertible": {}}
    start = time.perf_counter()
    try:
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = build_architecture(name).eval()
        spec = smallest_input(name, model)
        record["input"] = list(spec.step_shape())
        with torch.no_grad():
            num_classes = model(torch.randn(1, *spec.step_shape())).shape[-1]
        report = network_report(model, spec)
        record["traced"] = report.traced
        if not report.traced:
            record["trace_error"] = report.trace_error
        convertible = report.convertible()
        record["num_convertible"] = len(convertible)
        for layer in report.layers:
            if not layer.convertible and layer.reason != "not an fc or conv layer":
                record["not_convertible"].setdefault(layer.reason, []).append(layer.name)
        for layer in convertible[-max_layers:]:
            entry = {"layer": layer.name, "kind": layer.kind.value, "results": {}}
            for cell, sih in DESIGNS:
                design = f"{cell}{'-sih' if sih else ''}"
                try:
                    converted = convert(model, name, spec, [layer.name], CellType(cell), sih=sih).eval()
                    with torch.no_grad():
                        outputs, _ = converted(torch.randn(1, 2, *spec.step_shape()))
                    expected = (1, 2, num_classes)
                    if tuple(outputs.shape) != expected:
                        raise AssertionError(f"outputs {tuple(outputs.shape)} != {expected}")
                    if not torch.isfinite(outputs).all():
                        raise AssertionError("non-finite outputs")
                    entry["results"][design] = "ok"
                    del converted
                except Exception as error:  # noqa: BLE001 - the sweep records every failure
                    entry["results"][design] = (
                        f"{type(error).__name__}: {str(error).strip().splitlines()[0][:200] if str(error).strip() else ''}"
                    )
                    entry.setdefault("traceback", traceback.format_exc(limit=-6))
                    record["status"] = "fail"
            record["layers"].append(entry)
    except Exception as error:  # noqa: BLE001
        record["status"] = "error"
        record["error"] = (
            f"{type(error).__name__}: {str(error).strip().splitlines()[0][:200] if str(error).strip() else ''}"
        )
        record["traceback"] = traceback.format_exc(limit=-6)
    record["seconds"] = round(time.perf_counter() - start, 1)
    return record


def run_isolated(name: str, max_layers: int, timeout: float, threads: int, script: str = __file__) -> dict:
    """``script --one NAME`` in its own process (a crash or a hang costs one row); its record."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, script, "--one", name, "--max-layers", str(max_layers), "--threads", str(threads)]
    start = time.perf_counter()
    try:
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {
            "model": name,
            "status": "timeout",
            "error": f"over the {timeout:.0f} s cap",
            "layers": [],
            "seconds": timeout,
        }
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        return {
            "model": name,
            "status": "crash",
            "error": f"exit {result.returncode}: {tail[:200]}",
            "layers": [],
            "seconds": round(time.perf_counter() - start, 1),
        }
    return json.loads(lines[-1])


def summarize(record: dict) -> str:
    if record["status"] in ("error", "timeout", "crash"):
        return f"{record['status'].upper()}: {record.get('error')}"
    if not record.get("traced", True):
        return f"none convertible: {record.get('trace_error')}"
    if not record["layers"]:
        reasons = "; ".join(f"{reason} ({len(names)})" for reason, names in list(record["not_convertible"].items())[:3])
        return f"none convertible: {reasons}"
    parts = []
    for entry in record["layers"]:
        bad = {d: r for d, r in entry["results"].items() if r != "ok"}
        parts.append(
            f"{entry['layer']}[{entry['kind']}] "
            + ("OK" if not bad else "FAIL " + "; ".join(f"{d}: {r}" for d, r in bad.items()))
        )
    return ", ".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", help="model names (default: every torchvision model)")
    parser.add_argument(
        "--max-layers", type=int, default=3, help="convert at most the last N convertible layers per model"
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per model")
    parser.add_argument("--threads", type=int, default=min(os.cpu_count() or 1, 8))
    parser.add_argument("--json", type=Path, help="also write every record (with tracebacks) here")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(sweep_one(args.one, args.max_layers)))
        return 0

    families = model_families()
    names = args.models or list(families)
    records = []
    print(
        f"# sweep: {len(names)} models, last {args.max_layers} convertible layers, designs "
        f"{', '.join(c + ('-sih' if s else '') for c, s in DESIGNS)}, cap {args.timeout:.0f} s/model",
        flush=True,
    )
    for name in names:
        skip = families.get(name)
        if skip:
            record = {"model": name, "status": "skipped", "error": skip, "layers": [], "seconds": 0.0}
            line = skip
        else:
            record = run_isolated(name, args.max_layers, args.timeout, args.threads)
            line = summarize(record)
        records.append(record)
        shape = "x".join(map(str, record.get("input", []))) or "-"
        print(
            f"{name:28s} {shape:14s} {record.get('num_convertible', '-')!s:>4} {record['seconds']:6.1f}s  {line}",
            flush=True,
        )
        if record.get("traceback") and record["status"] != "ok":
            print("    " + record["traceback"].strip().replace("\n", "\n    "), flush=True)
        for entry in record.get("layers", []):
            if entry.get("traceback"):
                print("    " + entry["traceback"].strip().replace("\n", "\n    "), flush=True)

    counts: dict[str, int] = {}
    for record in records:
        status = record["status"]
        if status == "ok" and not record["layers"]:
            status = "ok (none convertible)"
        counts[status] = counts.get(status, 0) + 1
    conversions = sum(len(e["results"]) for r in records for e in r["layers"])
    conversions_ok = sum(v == "ok" for r in records for e in r["layers"] for v in e["results"].values())
    print(f"\n# summary: {len(records)} models: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    print(
        f"# conversions run: {conversions_ok}/{conversions} OK "
        f"({sum(len(r['layers']) for r in records)} layers × {len(DESIGNS)} designs)"
    )
    if args.json:
        args.json.write_text(json.dumps(records, indent=1))
    return 0 if all(r["status"] in ("ok", "skipped") for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
