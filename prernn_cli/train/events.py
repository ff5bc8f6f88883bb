"""What a training run reports: progress events while it runs, a :class:`TrainResult` at the end."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path


class EventKind(str, Enum):
    START = "start"
    EPOCH_START = "epoch_start"
    STEP = "step"
    EPOCH_END = "epoch_end"
    DONE = "done"


@dataclass
class ProgressEvent:
    kind: EventKind
    epoch: int  # 0-based
    epochs: int
    step_in_epoch: int = 0
    steps_in_epoch: int = 0
    global_step: int = 0
    loss: float | None = None
    clips_per_s: float | None = None
    row: dict | None = None  # EPOCH_END: the metrics row
    info: dict | None = None  # START: what is being trained
    clips_seen: int | None = None  # STEP, EPOCH_END: training clips the optimiser has seen so far


ProgressCallback = Callable[[ProgressEvent], None]


@dataclass
class TrainResult:
    output_dir: Path
    history: list[dict]
    best: dict | None
    skipped: list[tuple[str, str]]
    files: dict[str, str]
    stopped_early: bool = False
    stop_reason: str = ""  # completed N epochs, --max-steps reached, or the early stop's reason

    def to_dict(self) -> dict:
        return {
            "output_dir": str(self.output_dir),
            "history": self.history,
            "best": self.best,
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
            "files": self.files,
            "stopped_early": self.stopped_early,
            "stop_reason": self.stop_reason,
        }
