"""Decompression-bomb benchmark: what a hostile ``.pt`` costs ``prernn inspect`` before it is refused.

Builds, in a temporary folder, the archive an outside tester used: a ``torch.save`` zip whose
``data.pkl`` is padded with 2 GiB of zeros and deflated, about 2 MB on disk (before the archive
checks, inspecting it took 23 s and 4.9 GB). Then runs ``python -m prernn_cli inspect bomb.pt``
in a child process, ``--runs`` times, and the same command on an ordinary small checkpoint
(``sample_models/digit_vgg.pt``, or a fresh DigitVGG state_dict) as the baseline.

Per run: wall time, and the child's peak resident memory, read from ``os.wait4`` (the rusage of
that one child: ``getrusage(RUSAGE_CHILDREN)`` keeps the maximum over every child so far, so the
baseline's would hide the bomb's). Medians are printed with the ratios bomb / baseline. This
script imports neither torch nor prernn_cli: a child's peak RSS counts the pages it shares with
its parent between fork and exec, so a parent holding torch would add its own ~650 MB to each
measurement. The archives are written by short ``python -c`` children instead.

Run from the repository root::

    .venv/bin/python benchmarks/bench_hostile_archive.py
    .venv/bin/python benchmarks/bench_hostile_archive.py --runs 5 --pad-gib 2 --json out.json

Target: the bomb refused (exit 2) in under 1 s with a peak RSS of at most 200 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

TARGET_SECONDS = 1.0
TARGET_RSS_MB = 200.0
_CHUNK = bytes(1 << 20)


def _torch_save(code: str, path: Path) -> None:
    """Run ``code`` (with ``torch`` imported and ``path`` defined) in a child: this process stays small."""
    subprocess.run([sys.executable, "-c", f"import torch\npath = {str(path)!r}\n{code}"], check=True, cwd=REPO)


def build_bomb(path: Path, pad_bytes: int) -> None:
    """A real ``torch.save`` archive, its ``data.pkl`` followed by ``pad_bytes`` zeros and deflated."""
    plain = path.with_name("plain.pt")
    _torch_save("torch.save({'weight': torch.zeros(4, 4)}, path)", plain)
    with zipfile.ZipFile(plain) as source, zipfile.ZipFile(path, "w") as out:
        for info in source.infolist():
            data = source.read(info)
            if not info.filename.endswith("/data.pkl"):
                out.writestr(info, data)
                continue
            entry = zipfile.ZipInfo(info.filename)
            entry.compress_type = zipfile.ZIP_DEFLATED
            with out.open(entry, "w", force_zip64=True) as member:
                member.write(data)
                for _ in range(pad_bytes // len(_CHUNK)):
                    member.write(_CHUNK)


def baseline_checkpoint(folder: Path) -> Path:
    sample = REPO / "sample_models" / "digit_vgg.pt"
    if sample.exists():
        return sample
    path = folder / "digit_vgg.pt"
    _torch_save(
        "from prernn_cli.architectures.samples import DigitVGG\ntorch.save(DigitVGG().state_dict(), path)", path
    )
    return path


def run_inspect(checkpoint: Path, cwd: Path) -> tuple[float, float, int, str]:
    """Wall seconds, peak RSS (MB), exit code and last stderr line of one ``prernn inspect`` child."""
    start = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, "-m", "prernn_cli", "inspect", str(checkpoint)],
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    stderr = child.stderr.read().decode(errors="replace") if child.stderr else ""
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)  # reaped here: keep Popen from waiting again
    if child.stderr:
        child.stderr.close()
    # ru_maxrss is in kilobytes on Linux, bytes on macOS
    peak_mb = usage.ru_maxrss / (1 << 20) if sys.platform == "darwin" else usage.ru_maxrss / 1024
    lines = [line for line in stderr.splitlines() if line.strip()]
    return seconds, peak_mb, child.returncode, lines[-1] if lines else ""


def measure(checkpoint: Path, runs: int, cwd: Path) -> dict:
    results = [run_inspect(checkpoint, cwd) for _ in range(runs)]
    return {
        "seconds": [r[0] for r in results],
        "peak_rss_mb": [r[1] for r in results],
        "exit_codes": sorted({r[2] for r in results}),
        "stderr": results[-1][3],
        "median_seconds": statistics.median(r[0] for r in results),
        "median_peak_rss_mb": statistics.median(r[1] for r in results),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="children per file (median reported)")
    parser.add_argument("--pad-gib", type=float, default=2.0, help="zeros appended to data.pkl, in GiB")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        bomb = folder / "bomb.pt"
        start = time.perf_counter()
        build_bomb(bomb, int(args.pad_gib * (1 << 30)))
        print(f"built {bomb.name}: {bomb.stat().st_size / 1e6:.2f} MB on disk, data.pkl declares "
              f"{args.pad_gib:g} GiB ({time.perf_counter() - start:.1f} s)")  # fmt: skip
        baseline = baseline_checkpoint(folder)
        results = {
            "bomb": {"file_mb": bomb.stat().st_size / 1e6, **measure(bomb, args.runs, folder)},
            "baseline": {"file": str(baseline), **measure(baseline, args.runs, folder)},
        }
    bomb_result, base = results["bomb"], results["baseline"]
    results["ratios"] = {
        "seconds": bomb_result["median_seconds"] / base["median_seconds"],
        "peak_rss": bomb_result["median_peak_rss_mb"] / base["median_peak_rss_mb"],
    }
    results["passed"] = (
        bomb_result["exit_codes"] == [2]
        and bomb_result["median_seconds"] < TARGET_SECONDS
        and bomb_result["median_peak_rss_mb"] <= TARGET_RSS_MB
    )
    results["machine"] = {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count()}
    print(f"{'':<10} {'median wall':>12} {'median peak RSS':>16} {'exit':>6}   ({args.runs} runs each)")
    for name in ("bomb", "baseline"):
        r = results[name]
        exits = ",".join(map(str, r["exit_codes"]))
        print(f"{name:<10} {r['median_seconds']:>10.2f} s {r['median_peak_rss_mb']:>13.0f} MB {exits:>6}")
    print(
        f"ratio bomb / baseline: wall {results['ratios']['seconds']:.2f}x, peak RSS {results['ratios']['peak_rss']:.2f}x"
    )
    print(f"bomb refused with: {bomb_result['stderr']}")
    print(
        f"target: exit 2 in < {TARGET_SECONDS:g} s with peak RSS <= {TARGET_RSS_MB:g} MB: "
        + ("PASS" if results["passed"] else "FAIL")
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0 if results["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
