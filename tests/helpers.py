"""Builders shared by several test files: synthetic clips on disk, small converted models, the shipped samples.

Fixtures built from these live in conftest.py; the plain functions are imported (``from helpers import ...``)
where a test needs its own variant.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image

from prernn_cli.architectures import architecture_input, build_architecture, paper_aliases
from prernn_cli.conversion import convert
from prernn_cli.model import RecurrentModel
from prernn_cli.spec import CellType, HeadKind

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "sample_models"
#: `prernn train` options that keep a CLI run to seconds on a CPU
FAST = ["--workers", "0", "--steps", "4", "--batch-size", "2", "--device", "cpu"]


def moving_square(num_frames: int, direction: int, size: int = 32, seed: int = 0) -> list[np.ndarray]:
    """A bright square moving left (-1) or right (+1); frame i has its x at a known place."""
    rng = np.random.default_rng(seed)
    y = int(rng.integers(4, size - 12))
    frames = []
    for i in range(num_frames):
        frame = np.zeros((size, size, 3), dtype=np.uint8)
        x = 2 + i if direction > 0 else size - 10 - i
        frame[y : y + 8, x : x + 8] = 255
        frames.append(frame)
    return frames


def write_frame_folder(folder: Path, frames: Sequence[np.ndarray]) -> None:
    folder.mkdir(parents=True)
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"frame_{i:04d}.png")


def write_video(path: Path, frames: Sequence[np.ndarray], codec: str = "ffv1") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=8)
        stream.width, stream.height = frames[0].shape[1], frames[0].shape[0]
        stream.pix_fmt = "yuv444p" if codec == "ffv1" else "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def make_clip_tree(root: Path, per_class: int = 3, num_frames: int = 8, video: bool = False) -> None:
    """``root/{left,right}/clip{k}``: squares moving left or right, as PNG folders or ffv1 videos."""
    for name, direction in (("left", -1), ("right", 1)):
        for k in range(per_class):
            frames = moving_square(num_frames, direction, seed=k)
            if video:
                write_video(root / name / f"clip{k}.mkv", frames)
            else:
                write_frame_folder(root / name / f"clip{k}", frames)


def convert_architecture(
    arch: str, layers: Sequence[str], cell: CellType | str, seed: int = 0, paper_names: bool = False, **options
) -> RecurrentModel:
    """``arch`` with random weights drawn after ``torch.manual_seed(seed)``, its ``layers`` converted.

    ``paper_names``: ``layers`` may name the paper's layers (fc6, fc7, res5c). ``options`` go to
    :func:`~prernn_cli.conversion.convert` (its defaults otherwise).
    """
    torch.manual_seed(seed)
    base = build_architecture(arch)
    if paper_names:
        options["aliases"] = paper_aliases(arch, base)
    return convert(base, arch, architecture_input(arch), list(layers), CellType(cell), **options)


def converted(
    arch: str = "digit_vgg",
    layer: str = "classifier.0",
    cell: CellType = CellType.GRU,
    sih: bool = True,
    outputs: int | None = 2,
    traditional: bool = False,
    seed: int = 0,
) -> RecurrentModel:
    """A small model to train: one layer of ``arch`` converted and a new ``outputs``-way head (None: the original)."""
    head = HeadKind.CLASSIFY if outputs else HeadKind.ORIGINAL
    return convert_architecture(
        arch, [layer], cell, seed=seed, sih=sih, head=head, outputs=outputs, traditional=traditional
    )
