"""The run folder: where each file goes, and the per-epoch records (``metrics.jsonl``, ``curves.png``)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, fields
from pathlib import Path

from prernn_cli.files import atomic_path, finite_json
from prernn_cli.metrics import MAIN_METRIC
from prernn_cli.spec import Task


@dataclass(frozen=True)
class RunFiles:
    """The files a run writes in its folder."""

    last: Path
    best: Path
    state: Path
    metrics: Path
    curves: Path

    @classmethod
    def in_folder(cls, folder: Path) -> RunFiles:
        return cls(
            last=folder / "last.safetensors",
            best=folder / "best.safetensors",
            state=folder / "last.state.pt",
            metrics=folder / "metrics.jsonl",
            curves=folder / "curves.png",
        )

    def to_dict(self) -> dict[str, str]:
        return {name: str(path) for name, path in self.paths().items()}

    def paths(self) -> dict[str, Path]:
        return {field.name: getattr(self, field.name) for field in fields(self)}

    def holding_a_run(self) -> list[Path]:
        """The files of an earlier run in the folder (its checkpoints and records), if any."""
        return [path for path in (self.state, self.last, self.metrics) if path.exists()]

    def remove(self) -> None:
        """Remove the run's files (for --overwrite: the new run must not mix with the old one)."""
        for path in self.paths().values():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def remove_leftovers(self) -> None:
        """Remove temporary files a killed run left behind (``.last.state.pt.*.tmp``, ...)."""
        for path in self.paths().values():
            for leftover in path.parent.glob(f".{path.name}.*.tmp"):
                with contextlib.suppress(FileNotFoundError):
                    leftover.unlink()


#: The names of the files a run writes in its folder
RUN_FILE_NAMES = tuple(path.name for path in RunFiles.in_folder(Path(".")).paths().values())


def write_jsonl(history: list[dict], path: Path) -> None:
    """One JSON row per epoch."""
    with atomic_path(path) as tmp:
        tmp.write_text("".join(finite_json(row) + "\n" for row in history))


def plot_curves(history: list[dict], task: Task, path: Path) -> None:
    """Loss and the task's main metric per epoch, train and val side by side (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = MAIN_METRIC[task]
    epochs = [row["epoch"] for row in history]
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(9, 3.5))
    for split in ("train", "val"):
        values = [row.get(f"{split}_loss") for row in history]
        if any(v is not None for v in values):
            ax_loss.plot(epochs, values, marker="o", label=split)
        values = [row.get(f"{split}_{metric}") for row in history]
        if any(v is not None for v in values):
            ax_metric.plot(epochs, values, marker="o", label=split)
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_metric.set_xlabel("epoch")
    ax_metric.set_ylabel(metric)
    ax_loss.legend()
    ax_metric.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
