"""Which OpenCV optical flow ``--modality flow`` computes from RGB clips: DIS (fast, medium) vs Farneback.

A smooth random texture and the same texture moved by a known sub-pixel shift; for each
method the median time per frame pair (interleaved repeats, one OpenCV thread) and the mean
endpoint error (EPE, pixels) away from the borders. Flow is stored as 8-bit images over
[-20, 20] pixels, a step of 0.157 px (rounding error up to 0.078 px): an EPE below that is
lost to storage.

    .venv/bin/python benchmarks/bench_optical_flow.py
"""

from __future__ import annotations

import statistics
import time

import cv2
import numpy as np
from PIL import Image

SIZES = (32, 112, 224)  # the sample models' size, C3D's, ImageNet's
SHIFTS = ((1.5, -0.75), (6.0, -3.0))


def textured(size: int, shift: tuple[float, float], seed: int = 0) -> np.ndarray:
    """A smooth random texture (grey uint8), its content moved by ``shift`` pixels (bilinear)."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((size // 4 + 8, size // 4 + 8)).astype(np.float32) * 255
    big = np.asarray(Image.fromarray(coarse).resize((4 * coarse.shape[1], 4 * coarse.shape[0]), Image.BICUBIC))
    matrix = np.float32([[1, 0, shift[0]], [0, 1, shift[1]]])
    moved = cv2.warpAffine(big, matrix, (big.shape[1], big.shape[0]), flags=cv2.INTER_LINEAR)
    return np.clip(np.rint(moved[12 : 12 + size, 12 : 12 + size]), 0, 255).astype(np.uint8)


def methods() -> dict:
    fast = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_FAST)
    medium = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    return {
        "DIS fast": lambda a, b: fast.calc(a, b, None),
        "DIS medium": lambda a, b: medium.calc(a, b, None),
        "Farneback": lambda a, b: cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0),
    }


def main() -> None:
    cv2.setNumThreads(1)  # as in a DataLoader worker
    print("| shift (px) | size | method | ms per frame | EPE (px) |\n|---|---:|---|---:|---:|")
    for shift in SHIFTS:
        for size in SIZES:
            a, b = textured(size, (0.0, 0.0)), textured(size, shift)
            margin = max(8, size // 8)
            runs = methods()
            times: dict[str, list[float]] = {name: [] for name in runs}
            for _ in range(30):
                for name, run in runs.items():
                    started = time.perf_counter()
                    run(a, b)
                    times[name].append((time.perf_counter() - started) * 1000)
            for name, run in runs.items():
                inner = run(a, b)[margin:-margin, margin:-margin]
                epe = np.hypot(inner[..., 0] - shift[0], inner[..., 1] - shift[1]).mean()
                print(
                    f"| {shift[0]:g}, {shift[1]:g} | {size} | {name} | {statistics.median(times[name]):.2f} | {epe:.3f} |"
                )


if __name__ == "__main__":
    main()
