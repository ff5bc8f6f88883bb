"""Benchmarks for the Pre-cells and converted models.

1. Pre-layer sequence time (project + recur) vs ``torch.nn.LSTM`` / ``nn.GRU`` of the same sizes
   on the same input ``[B, T, in]``, forward and forward+backward (target ≤ 1.2× on CPU).
2. SIH vs gate-dependent time, next to the analytical FLOP ratio.
3. Whole PreRNN model vs the plain CNN on the same B·T frames: time overhead vs extra FLOPs.
4. Peak memory converting a full-size vgg16 fc6 to a gate-dependent LSTM (fresh subprocess),
   vs 1.3 × (input model bytes + output model bytes).

Timings are medians over ``--repeats`` runs after warm-up. Candidates that are compared are
timed *interleaved* (A, B, A, B, …, order alternating) so that load on the machine hits both
alike; a ratio is the median of the per-repeat ratios, measured in the same run.

    .venv/bin/python benchmarks/bench_cells.py            # full run
    .venv/bin/python benchmarks/bench_cells.py --quick    # a fast run (smaller sizes)
    .venv/bin/python benchmarks/bench_cells.py --device cuda --only 1,2
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from prernn_cli.architectures import architecture_input, build_architecture, paper_aliases  # noqa: E402
from prernn_cli.cells import PreGRU, PreLSTM  # noqa: E402
from prernn_cli.conversion import convert  # noqa: E402
from prernn_cli.spec import CellType, InputSpec  # noqa: E402


# ---------------------------------------------------------------------- timing
def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def interleaved(fns: Sequence[Callable[[], object]], repeats: int, device: str, warmup: int = 2) -> list[list[float]]:
    """Per-candidate lists of wall times (s), measured interleaved with alternating order."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    _sync(device)
    times: list[list[float]] = [[] for _ in fns]
    for rep in range(repeats):
        order = range(len(fns)) if rep % 2 == 0 else reversed(range(len(fns)))
        for index in order:
            _sync(device)
            start = time.perf_counter()
            fns[index]()
            _sync(device)
            times[index].append(time.perf_counter() - start)
    return times


def median_ratio(a: list[float], b: list[float]) -> float:
    return statistics.median(x / y for x, y in zip(a, b))


def ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1e3:9.2f}"


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    print(f"\n## {title}\n")
    cells = [list(map(str, header))] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    line = lambda row: "| " + " | ".join(c.rjust(w) for c, w in zip(row, widths)) + " |"  # noqa: E731
    print(line(cells[0]))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells[1:]:
        print(line(row))


# ---------------------------------------------------------------------- 1 and 2: cells
def _forward(module: nn.Module, x: torch.Tensor) -> Callable[[], object]:
    def run():
        with torch.no_grad():
            return module(x)

    return run


def _forward_backward(module: nn.Module, x: torch.Tensor) -> Callable[[], object]:
    def run():
        module.zero_grad(set_to_none=True)
        outputs = module(x)[0]
        outputs.sum().backward()

    return run


def _pre_layer(cell: CellType, input_size: int, hidden: int, sih: bool, device: str) -> nn.Module:
    cls = PreLSTM if cell is CellType.LSTM else PreGRU
    return cls(input_size, hidden, sih=sih, device=device)


class _OwnLoop(nn.Module):
    """A Pre-layer forced onto its own route (project all frames, then its time loop), as SIH and conv layers run."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor):
        projected = self.layer.project(x.flatten(0, 1)).view(*x.shape[:2], -1)
        return self.layer.recur(projected)


def bench_vs_torch(sizes, batch, steps, repeats, device) -> list[list[object]]:
    rows = []
    for input_size, hidden in sizes:
        x = torch.randn(batch, steps, input_size, device=device)
        for cell, reference_cls in ((CellType.LSTM, nn.LSTM), (CellType.GRU, nn.GRU)):
            ours = _pre_layer(cell, input_size, hidden, False, device)
            reference = reference_cls(input_size, hidden, batch_first=True, device=device)
            candidates = [(cell.value, ours)]
            if cell is CellType.LSTM:  # forward runs torch's fused op here; show the layer's own loop as well
                candidates.append(("lstm, own loop", _OwnLoop(ours)))
            for label, candidate in candidates:
                for mode, make in (("fwd", _forward), ("fwd+bwd", _forward_backward)):
                    t_ours, t_ref = interleaved([make(candidate, x), make(reference, x)], repeats, device)
                    rows.append(
                        [
                            f"{input_size}→{hidden}",
                            label,
                            mode,
                            ms(t_ours),
                            ms(t_ref),
                            f"{median_ratio(t_ours, t_ref):.2f}",
                        ]
                    )
            del ours, reference, candidates
    return rows


def analytical_flops(cell: CellType, input_size: int, hidden: int, sih: bool) -> int:
    """Per frame: projection in·copies·H·2 plus recurrence G·H²·2 (elementwise ops not counted)."""
    gates = cell.num_gates
    copies = 1 if sih else gates
    return input_size * copies * hidden * 2 + gates * hidden * hidden * 2


def bench_sih(sizes, batch, steps, repeats, device) -> list[list[object]]:
    rows = []
    for input_size, hidden in sizes:
        x = torch.randn(batch, steps, input_size, device=device)
        for cell in (CellType.LSTM, CellType.GRU):
            gd = _pre_layer(cell, input_size, hidden, False, device)
            sih = _pre_layer(cell, input_size, hidden, True, device)
            t_sih, t_gd, t_gd_loop = interleaved(
                [_forward(sih, x), _forward(gd, x), _forward(_OwnLoop(gd), x)], repeats, device
            )
            flop_ratio = analytical_flops(cell, input_size, hidden, True) / analytical_flops(
                cell, input_size, hidden, False
            )
            rows.append(
                [
                    f"{input_size}→{hidden}",
                    cell.value,
                    ms(t_sih),
                    ms(t_gd),
                    f"{median_ratio(t_sih, t_gd):.2f}",
                    ms(t_gd_loop),
                    f"{median_ratio(t_sih, t_gd_loop):.2f}",
                    f"{flop_ratio:.2f}",
                ]
            )
            del gd, sih
    return rows


# ---------------------------------------------------------------------- 3: whole model
def _count_flops(fn: Callable[[], object]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def bench_models(cases, batch, steps, repeats, device) -> list[list[object]]:
    rows = []
    for arch, size, layers in cases:
        torch.manual_seed(0)
        base = build_architecture(arch).to(device).eval()
        spec = architecture_input(arch)
        if size is not None:
            spec = InputSpec(
                frame_kind=spec.frame_kind,
                channels=spec.channels,
                size=(size, size),
                snippet_length=spec.snippet_length,
                mean=spec.mean,
                std=spec.std,
            )
        frames = torch.randn(batch, steps, *spec.step_shape(), device=device)
        flat = frames.flatten(0, 1)

        def plain(base=base, flat=flat):  # bound now: the loop rebinds both
            with torch.no_grad():
                return base(flat)

        plain_flops = _count_flops(plain)
        for cell, sih in (
            (CellType.VRNN, False),
            (CellType.LSTM, False),
            (CellType.LSTM, True),
            (CellType.GRU, False),
            (CellType.GRU, True),
        ):
            model = (
                convert(base, arch, spec, layers, cell, sih=sih, aliases=paper_aliases(arch, base)).to(device).eval()
            )

            def recurrent(model=model, frames=frames):
                with torch.no_grad():
                    return model(frames)

            flops = _count_flops(recurrent)
            t_model, t_plain = interleaved([recurrent, plain], repeats, device)
            design = f"{cell.value}{'-sih' if sih else ''}"
            rows.append(
                [
                    f"{arch}@{spec.size[0]}",
                    ",".join(layers),
                    design,
                    ms(t_plain),
                    ms(t_model),
                    f"{(median_ratio(t_model, t_plain) - 1) * 100:+.1f}%",
                    f"{(flops / plain_flops - 1) * 100:+.1f}%",
                ]
            )
            del model
    return rows


# ---------------------------------------------------------------------- 4: peak memory
_MEMORY_CHILD = r"""
import json, resource, sys, warnings
warnings.simplefilter("ignore")
import torch
from prernn_cli.checkpoint import load_checkpoint
from prernn_cli.conversion import convert
from prernn_cli.architectures import paper_aliases
from prernn_cli.spec import CellType
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
baseline = rss()
loaded = load_checkpoint(sys.argv[1], arch="vgg16")
after_load = hwm()
model = convert(loaded.model, "vgg16", loaded.input_spec, ["fc6"], CellType.LSTM, aliases=paper_aliases("vgg16", loaded.model))
out_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
print(json.dumps({"baseline": baseline, "after_load_hwm": after_load, "peak": hwm(),
                  "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "output_bytes": out_bytes}))
"""


def bench_memory() -> list[list[object]]:
    import json

    import torchvision

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vgg = torchvision.models.vgg16(weights=None)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "vgg16.pt"
        torch.save(vgg.state_dict(), path)
        in_bytes = sum(t.numel() * t.element_size() for t in vgg.state_dict().values())
        del vgg
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        result = subprocess.run(
            [sys.executable, "-c", _MEMORY_CHILD, str(path)], capture_output=True, text=True, env=env, check=False
        )
    if result.returncode != 0:
        raise RuntimeError(f"memory child failed: {result.stderr.strip().splitlines()[-1]}")
    data = json.loads(result.stdout.strip().splitlines()[-1])
    budget = 1.3 * (in_bytes + data["output_bytes"])
    gib = lambda b: f"{b / 2**30:.2f}"  # noqa: E731
    peak, net = data["peak"], data["peak"] - data["baseline"]
    return [
        [
            gib(in_bytes),
            gib(data["output_bytes"]),
            gib(data["baseline"]),
            gib(data["after_load_hwm"]),
            gib(peak),
            f"{peak / (in_bytes + data['output_bytes']):.2f}",
            f"{net / (in_bytes + data['output_bytes']):.2f}",
            "yes" if peak <= budget else "NO",
        ]
    ]


# ---------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a fast run")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--threads", type=int, default=min(os.cpu_count() or 1, 8), help="torch.set_num_threads")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per candidate (≥ 7)")
    parser.add_argument("--only", default="1,2,3,4", help="which benchmarks to run, e.g. 1,3")
    args = parser.parse_args(argv)
    if args.repeats < 7:
        parser.error("--repeats must be at least 7")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    torch.set_num_threads(args.threads)
    only = {int(part) for part in args.only.split(",")}
    device = args.device
    print(
        f"# bench_cells  torch {torch.__version__}  device={device}  threads={torch.get_num_threads()}  "
        f"repeats={args.repeats} (medians, interleaved)  quick={args.quick}"
    )

    if args.quick:
        sizes, batch, steps = [(256, 256), (1024, 512)], 4, 8
        model_cases, mb, mt = [("digit_vgg", None, ["fc6"]), ("digit_resnet", None, ["res5c"])], 2, 4
    else:
        sizes, batch, steps = [(256, 256), (1024, 512), (4096, 4096)], 8, 16
        model_cases = [
            ("vgg11", 64, ["fc6"]),
            ("vgg11", 64, ["fc7"]),
            ("digit_vgg", None, ["fc6"]),
            ("digit_resnet", None, ["res5c"]),
            ("resnet18", 112, ["res5c"]),
        ]
        mb, mt = 2, 8
    if 1 in only:
        rows = bench_vs_torch(sizes, batch, steps, args.repeats, device)
        print_table(
            f"1. Pre-layer (gate-dependent, fc) vs torch.nn  [B={batch}, T={steps}], ms",
            ["in→H", "cell", "pass", "Pre-layer", "torch.nn", "ratio"],
            rows,
        )
        print(
            "   lstm: a gate-dependent fc PreLSTM is an nn.LSTM with bias_hh = 0 and runs as torch.lstm on CPU;\n"
            "   'own loop' is the route of SIH and conv layers. Our GRU is Cho's form (reset before W_hh), "
            "torch.nn.GRU applies r after W_hn h."
        )
    if 2 in only:
        rows = bench_sih(sizes, batch, steps, args.repeats, device)
        print_table(
            f"2. SIH vs gate-dependent, forward  [B={batch}, T={steps}], ms",
            [
                "in→H",
                "cell",
                "SIH",
                "gate-dep",
                "time ratio",
                "gate-dep, own loop",
                "time ratio, same route",
                "FLOP ratio",
            ],
            rows,
        )
        print(
            "   FLOPs per frame: in·copies·H·2 (projection) + G·H²·2 (recurrence). A small gate-dependent LSTM runs as\n"
            "   torch.lstm (fused, no per-step dispatch); SIH always runs the layer's own loop, so 'same route' isolates the design."
        )
    if 3 in only:
        rows = bench_models(model_cases, mb, mt, args.repeats, device)
        print_table(
            f"3. Whole PreRNN model vs the plain CNN on the same B·T={mb * mt} frames, forward, ms",
            ["model", "layer", "design", "CNN", "PreRNN", "time overhead", "extra FLOPs"],
            rows,
        )
        print("   FLOPs counted with torch.utils.flop_counter (matmul/conv only)")
    if 4 in only and device == "cpu":
        rows = bench_memory()
        print_table(
            "4. Peak memory: load vgg16 state_dict + convert fc6 → gate-dependent LSTM (fresh process), GiB",
            [
                "input model",
                "output model",
                "baseline RSS",
                "HWM after load",
                "peak RSS",
                "peak/(in+out)",
                "(peak-baseline)/(in+out)",
                "≤ 1.3×",
            ],
            rows,
        )


if __name__ == "__main__":
    main()
