"""Sweep timm: one representative per model family, analysed and converted like the torchvision sweep.

A family is one of timm's model modules (``timm.list_modules()``: resnet, efficientnet, convnext …);
its representative is its model with the fewest parameters (counted on the meta device, no
memory). Each representative ``timm:NAME`` goes through ``sweep_torchvision.sweep_one`` in its own
subprocess: built with random weights, run at the smallest input it accepts, analysed with
:func:`prernn_cli.surgery.network_report`, and its last ``--max-layers`` convertible layers
converted (LSTM and GRU, with and without SIH) and run forward. A family without a convertible
layer is listed with the most common reasons.

    .venv/bin/python benchmarks/sweep_timm.py                           # every family
    .venv/bin/python benchmarks/sweep_timm.py resnet convnext           # some families
    .venv/bin/python benchmarks/sweep_timm.py --markdown timm.md --json timm.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import timm
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import sweep_torchvision  # noqa: E402

from prernn_cli.architectures import architecture_input, build_empty_architecture  # noqa: E402
from prernn_cli.spec import InputSpec  # noqa: E402
from prernn_cli.surgery import network_report  # noqa: E402


def representative(family: str) -> tuple[str | None, str]:
    """The family's model with the fewest parameters, as ``timm:NAME`` (None and why, when none builds)."""
    best: tuple[int, str] | None = None
    errors = []
    for name in timm.list_models(module=family):
        if name.startswith("test_"):
            continue  # timm's tiny test configurations, not models people hold
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = build_empty_architecture(f"timm:{name}")
        except Exception as error:  # noqa: BLE001 - a builder that fails is recorded, the family goes on
            errors.append(f"{name}: {type(error).__name__}")
            continue
        count = sum(parameter.numel() for parameter in model.parameters())
        if best is None or count < best[0]:
            best = (count, name)
    if best is None:
        return None, f"no model builds ({'; '.join(errors[:2]) or 'no models'})"
    return f"timm:{best[1]}", ""


def last_layers(name: str, record: dict, count: int = 2) -> list[list[str]]:
    """The last ``count`` fc/conv layers before the output layer, with why each is not convertible."""
    if "input" not in record:
        return []
    default = architecture_input(name)
    shape = record["input"]
    spec = InputSpec(channels=shape[0], size=(shape[-2], shape[-1]), mean=default.mean, std=default.std)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = network_report(build_empty_architecture(name), spec)
    weights = [
        layer for layer in report.layers if layer.type in ("Linear", "Conv2d") and layer.name != report.output_layer
    ]
    return [[layer.name, "yes" if layer.convertible else str(layer.reason)] for layer in weights[-count:]]


def sweep_one(name: str, max_layers: int) -> dict:
    record = sweep_torchvision.sweep_one(name, max_layers)
    try:
        record["last_layers"] = last_layers(name, record)
    except Exception as error:  # noqa: BLE001 - the sweep records every failure
        record["last_layers"] = [["?", f"{type(error).__name__}: {error}"[:200]]]
    return record


def verdict(record: dict) -> tuple[str, str]:
    """(convertible layers, or "no"; the converted layers' results, or the reason none is convertible)."""
    if record["status"] in ("error", "timeout", "crash", "skipped"):
        return "—", f"{record['status']}: {record.get('error')}"
    if not record.get("traced", True):
        return "no", f"not traceable: {record.get('trace_error')}"
    if not record["layers"]:
        last = record.get("last_layers") or []
        return "no", "; ".join(f"{layer}: {reason}" for layer, reason in last) or "no fc or conv layer"
    return str(record.get("num_convertible")), sweep_torchvision.summarize(record)


# Why a family has no convertible layer, from the reason for the fc/conv layer nearest its output.
_CATEGORIES = (
    ("cannot be traced", "not traceable with torch.fx (data-dependent control flow, several inputs)"),
    ("applies to a", "fc layers apply per token or position (attention / MLP blocks), none per frame"),
    ("grouped conv", "its last convs are grouped or depthwise"),
    ("used in several places", "its last convs feed several branches (attention, concatenation)"),
    ("before global average pooling", "more than BatchNorm/add/activation between its last conv and the pooling"),
    ("main path", "its last fc is one of two heads averaged (distillation) or off the main path"),
)


# A norm the rule does not fold: one after the residual add (pre-activation designs), or a LayerNorm /
# GroupNorm. (timm's BatchNormAct2d right after the conv is read as BatchNorm then activation.)
_FUSED_NORM = re.compile(r"reaches \S*(bn|norm)\S* before global average pooling")
_FUSED_NORM_TEXT = "its last conv's norm comes after the residual add or is not a BatchNorm"


def category(record: dict) -> str:
    if record["layers"]:
        return "convertible (conversion and 2-step forward OK for every design)"
    if record["status"] not in ("ok", "fail"):
        return f"{record['status']}"
    if not record.get("traced", True):
        return _CATEGORIES[0][1]
    last = (record.get("last_layers") or [["", ""]])[-1][1]
    if _FUSED_NORM.search(last):
        return _FUSED_NORM_TEXT
    return next((text for needle, text in _CATEGORIES if needle in last), "other")


def markdown(rows: list[tuple[str, dict]]) -> str:
    """One row per outcome, with its families (representative: converted layer, for convertible ones)."""
    groups: dict[str, list[str]] = {}
    for family, record in rows:
        model = (record.get("model") or "—").removeprefix("timm:")
        layer = f": {record['layers'][-1]['layer']}" if record["layers"] else ""
        groups.setdefault(category(record), []).append(f"{family} ({model}{layer})")
    lines = ["| outcome | families | representative models |", "|---|---:|---|"]
    order = sorted(groups, key=lambda key: (not key.startswith("convertible"), key == "other", -len(groups[key])))
    for outcome, members in ((key, groups[key]) for key in order):
        lines.append(f"| {outcome} | {len(members)} | {', '.join(members)} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("families", nargs="*", help="timm model modules (default: every one)")
    parser.add_argument("--max-layers", type=int, default=1, help="convert at most the last N convertible layers")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per model")
    parser.add_argument("--threads", type=int, default=min(os.cpu_count() or 1, 8))
    parser.add_argument("--json", type=Path, help="also write every record (with tracebacks) here")
    parser.add_argument("--markdown", type=Path, help="also write the table as Markdown here")
    parser.add_argument("--from-json", type=Path, help="print the table of an earlier --json run, running nothing")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.from_json:
        print(markdown([(record["family"], record) for record in json.loads(args.from_json.read_text())]), end="")
        return 0
    if args.one:
        print(json.dumps(sweep_one(args.one, args.max_layers)))
        return 0
    families = args.families or timm.list_modules()
    print(
        f"# timm {timm.__version__}: {len(families)} families, last {args.max_layers} convertible layer(s)", flush=True
    )
    rows: list[tuple[str, dict]] = []
    for family in families:
        name, why = representative(family)
        if name is None:
            record = {"model": None, "status": "skipped", "error": why, "layers": []}
        else:
            record = sweep_torchvision.run_isolated(name, args.max_layers, args.timeout, args.threads, script=__file__)
        rows.append((family, record))
        count, text = verdict(record)
        print(f"{family:22s} {str(name):40s} {count:>4} {record.get('seconds', 0):6.1f}s  {text}", flush=True)
    convertible = sum(1 for _, record in rows if record["layers"])
    print(f"\n# {convertible}/{len(rows)} families have a convertible layer")
    if args.json:
        args.json.write_text(json.dumps([{"family": f, **r} for f, r in rows], indent=1))
    if args.markdown:
        args.markdown.write_text(markdown(rows))
    return 0 if all(record["status"] in ("ok", "skipped") for _, record in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
