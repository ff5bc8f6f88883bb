"""ONNX export benchmark: onnxruntime vs PyTorch eager on the same model and input.

Measures, in one run, for each model:

* chunk latency: one call on T steps (default T = 16), batch 1 — eager ``model(frames, state)``
  vs onnxruntime on the exported T-step graph;
* per-step streaming latency: one step at a time, state carried — eager ``model(frames[:, t:t+1], state)``
  vs the exported step model (T = 1) through :class:`prernn_cli.stream.OnnxStreamer`
  with and without IO binding;
* export time (torch.onnx.export dynamo + save + validation), file size fp32 vs fp16.

Medians over ``--repeats`` timed calls after ``--warmup`` untimed ones; both runtimes get the
same number of intra-op threads (``--threads``, default: all cores). With a usable GPU the
CUDA provider is measured too, with and without IO binding (state kept on the device).

Run from the repository root::

    .venv/bin/python benchmarks/bench_export.py                 # the three sample nets
    .venv/bin/python benchmarks/bench_export.py --json out.json --repeats 50

Target: onnxruntime on CPU at most 0.8× eager latency.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from prernn_cli.architectures import architecture_input, build_architecture  # noqa: E402
from prernn_cli.conversion import convert  # noqa: E402
from prernn_cli.export import OnnxExportSpec, export_onnx, flatten_state, unflatten_state  # noqa: E402
from prernn_cli.export.runtime import open_session  # noqa: E402
from prernn_cli.spec import CellType  # noqa: E402
from prernn_cli.stream import OnnxStreamer, Provider  # noqa: E402

MODELS = {
    "vgg-fc6fc7-lstm": ("digit_vgg", ["classifier.0", "classifier.3"], "lstm", False),
    "resnet-res5c-gru": ("digit_resnet", ["layer3.1.conv2"], "gru", False),
    "c3d-fc6-lstm-sih": ("digit_c3d", ["fc6"], "lstm", True),
}


def median_ms(fn, repeats: int, warmup: int) -> float:
    return paired_medians_ms([fn], repeats, warmup)[0]


def paired_medians_ms(fns, repeats: int, warmup: int) -> list[float]:
    """Median wall time of each function, calls interleaved (a, b, a, b, ...) so that load
    from other processes hits every contender alike: the ratios stay fair on a busy machine."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, bucket in zip(fns, times):
            start = time.perf_counter()
            fn()
            bucket.append(time.perf_counter() - start)
    return [1000.0 * statistics.median(bucket) for bucket in times]


def export_all(model, name: str, steps: int, threads: int, folder: Path, row: dict) -> dict[str, Path]:
    """The chunk (T steps), step (T = 1) and fp16 chunk exports; their time and size go into ``row``."""
    exported = {}
    for label, kwargs in (
        ("chunk", dict(steps=steps)),
        ("step", dict(steps=1)),
        ("chunk_fp16", dict(steps=steps, half=True)),
    ):
        start = time.perf_counter()
        result = export_onnx(
            model, folder / f"{name}.{label}.onnx", OnnxExportSpec.create(model.spec, **kwargs), threads=threads
        )
        row[f"export_s_{label}"] = round(time.perf_counter() - start, 2)
        row[f"size_mb_{label}"] = round(result.size_bytes / 1e6, 3)
        exported[label] = result.path
    row["fp16_size_ratio"] = round(row["size_mb_chunk_fp16"] / row["size_mb_chunk"], 3)
    return exported


def chunk_latency(
    model,
    spec: OnnxExportSpec,
    exported: dict[str, Path],
    frames: torch.Tensor,
    repeats: int,
    warmup: int,
    threads: int,
    row: dict,
) -> None:
    """One T-step call from zero state, batch 1: eager vs onnxruntime (fp32, and fp16 on the CPU provider)."""
    state = flatten_state(model.initial_state(1))
    cpu = open_session(exported["chunk"], threads=threads)
    feeds = {"frames": frames.numpy(), **{n: s.numpy() for n, s in zip(spec.state_inputs, state)}}
    with torch.inference_mode():
        row["eager_chunk_ms"], row["ort_chunk_ms"] = paired_medians_ms(
            [lambda: model(frames, unflatten_state(state, model.spec.cell)), lambda: cpu.run(None, feeds)],
            repeats,
            warmup,
        )
    row["chunk_ratio"] = row["ort_chunk_ms"] / row["eager_chunk_ms"]
    half = open_session(exported["chunk_fp16"], threads=threads)
    feeds16 = {k: v.astype(np.float16) for k, v in feeds.items()}
    row["ort_fp16_cpu_chunk_ms"] = median_ms(lambda: half.run(None, feeds16), max(3, repeats // 4), 1)


def eager_stream(model, step_frames: list[torch.Tensor], synchronize: bool = False):
    """One call per step, state carried, through the PyTorch model."""

    def run():
        carried = None
        for chunk in step_frames:
            _, carried = model(chunk, carried)
        if synchronize:
            torch.cuda.synchronize()

    return run


def ort_stream(streamer: OnnxStreamer, numpy_steps: np.ndarray):
    """One call per step, state carried, through the exported step model."""

    def run():
        streamer.reset()
        for _ in streamer.run(numpy_steps):
            pass

    return run


def step_latency(
    model, exported: dict[str, Path], frames: torch.Tensor, repeats: int, warmup: int, threads: int, row: dict
) -> None:
    """Per step over a T-step stream, state carried: eager vs the step model, with and without IO binding."""
    steps = frames.shape[1]
    step_frames = [frames[:, t : t + 1] for t in range(steps)]
    bound = OnnxStreamer(exported["step"], Provider.CPU, io_binding=True, threads=threads)
    plain = OnnxStreamer(exported["step"], Provider.CPU, io_binding=False, threads=threads)
    contenders = [
        eager_stream(model, step_frames),
        ort_stream(bound, frames[0].numpy()),
        ort_stream(plain, frames[0].numpy()),
    ]
    with torch.inference_mode():
        medians = paired_medians_ms(contenders, repeats, warmup)
    row["eager_step_ms"], row["ort_step_ms"], row["ort_step_ms_nobind"] = (m / steps for m in medians)
    row["step_ratio"] = row["ort_step_ms"] / row["eager_step_ms"]


def gpu_latency(model, exported: dict[str, Path], frames: torch.Tensor, repeats: int, warmup: int, row: dict) -> None:
    """The CUDA provider and eager CUDA, when a GPU is really usable (the model is moved there and back)."""
    import onnxruntime as ort

    if not torch.cuda.is_available() or "CUDAExecutionProvider" not in ort.get_available_providers():
        return
    steps = frames.shape[1]
    gpu_model = model.cuda()
    gpu_frames = frames.cuda()
    gpu_steps = [gpu_frames[:, t : t + 1] for t in range(steps)]
    with torch.inference_mode():
        row["cuda_eager_chunk_ms"] = median_ms(
            lambda: (gpu_model(gpu_frames), torch.cuda.synchronize()), repeats, warmup
        )
        row["cuda_eager_step_ms"] = (
            median_ms(eager_stream(gpu_model, gpu_steps, synchronize=True), repeats, warmup) / steps
        )
    for binding in (True, False):
        streamer = OnnxStreamer(exported["step"], Provider.CUDA, io_binding=binding)
        row[f"cuda_ort_step_ms{'' if binding else '_nobind'}"] = (
            median_ms(ort_stream(streamer, frames[0].numpy()), repeats, warmup) / steps
        )
    model.cpu()


def bench_model(name: str, steps: int, repeats: int, warmup: int, threads: int, folder: Path) -> dict:
    arch, layers, cell, sih = MODELS[name]
    torch.manual_seed(0)
    base = build_architecture(arch)
    model = convert(base, arch, architecture_input(arch), layers, CellType(cell), sih=sih).eval()
    row: dict = {"model": name, "steps": steps}
    exported = export_all(model, name, steps, threads, folder, row)
    spec = OnnxExportSpec.create(model.spec, steps=steps)
    frames = torch.randn(spec.input_shapes(1)["frames"])
    chunk_latency(model, spec, exported, frames, repeats, warmup, threads, row)
    step_latency(model, exported, frames, repeats, warmup, threads, row)
    gpu_latency(model, exported, frames, repeats, warmup, row)
    return row


def render(rows: list[dict], meta: dict) -> str:
    lines = [
        f"onnxruntime {meta['onnxruntime']} vs torch {meta['torch']} eager, {meta['threads']} threads, {meta['cpu']}; medians of {meta['repeats']} runs",
        "",
        "| model | T | eager chunk ms | ORT chunk ms | ratio | eager step ms | ORT step ms (IO binding) | ORT step ms (plain) | ratio | export s (T / 1 / fp16) | MB fp32 / fp16 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['steps']} | {r['eager_chunk_ms']:.2f} | {r['ort_chunk_ms']:.2f} | {r['chunk_ratio']:.2f}× | "
            f"{r['eager_step_ms']:.3f} | {r['ort_step_ms']:.3f} | {r['ort_step_ms_nobind']:.3f} | {r['step_ratio']:.2f}× | "
            f"{r['export_s_chunk']:.1f} / {r['export_s_step']:.1f} / {r['export_s_chunk_fp16']:.1f} | {r['size_mb_chunk']:.2f} / {r['size_mb_chunk_fp16']:.2f} |"
        )
    gpu = [r for r in rows if "cuda_ort_step_ms" in r]
    if gpu:
        lines += [
            "",
            "| model | CUDA eager step ms | CUDA ORT step ms (IO binding) | CUDA ORT step ms (plain) |",
            "|---|---|---|---|",
        ]
        for r in gpu:
            lines.append(
                f"| {r['model']} | {r['cuda_eager_step_ms']:.3f} | {r['cuda_ort_step_ms']:.3f} | {r['cuda_ort_step_ms_nobind']:.3f} |"
            )
    else:
        lines += ["", "No usable GPU: CUDA provider not measured."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--steps", type=int, default=16, help="T of the chunk model")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args()

    import onnxruntime as ort

    torch.set_num_threads(args.threads)
    meta = {
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "threads": args.threads,
        "cpu": platform.processor() or platform.machine(),
        "repeats": args.repeats,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models:
            rows.append(bench_model(name, args.steps, args.repeats, args.warmup, args.threads, Path(folder)))
            print(f"done {name}", file=sys.stderr, flush=True)
    print(render(rows, meta))
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
