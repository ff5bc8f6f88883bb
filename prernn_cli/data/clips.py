"""What an example is: a clip and its target, the train/val splits, and the deterministic holdout."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from prernn_cli.errors import DataError
from prernn_cli.spec import Task


@dataclass(frozen=True)
class Clip:
    """One example: a clip and its target. ``start`` is set for dense windows."""

    path: Path
    label: int | None = None  # classify
    targets: Path | None = None  # regress: N x K file
    sequence: tuple[int, ...] | None = None  # ctc: class indices (blank = 0 excluded)
    start: int | None = None  # first frame of a dense window
    num_frames: int | None = None  # known when probed


@dataclass
class DataSplits:
    """Clips of the train and val splits, and what their labels mean."""

    task: Task
    class_names: tuple[str, ...]  # classify: classes; ctc: <blank> first; regress: ()
    train: list[Clip]
    val: list[Clip]
    num_outputs: int  # K the model's head must have
    source: str  # "folders", "split folders", "manifest"

    def split(self, name: str) -> list[Clip]:
        if name not in ("train", "val"):
            raise DataError(f"unknown split {name!r}; use train or val")
        return self.train if name == "train" else self.val


def holdout(items: Sequence, fraction: float, salt: str) -> tuple[list, list]:
    """Deterministic split of one group into ``(train, val)``: a shuffle seeded by ``salt``, not the training seed."""
    items = list(items)
    if len(items) < 2 or fraction <= 0:
        return items, []
    order = list(range(len(items)))
    random.Random(f"prernn-split:{salt}").shuffle(order)
    n_val = min(len(items) - 1, max(1, round(fraction * len(items))))
    val_idx = set(order[:n_val])
    return [x for i, x in enumerate(items) if i not in val_idx], [x for i, x in enumerate(items) if i in val_idx]
