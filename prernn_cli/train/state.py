"""The training state, ``last.state.pt``: what exact resume needs, and a checkpoint's commit.

The state holds the model and optimiser ``state_dict``, the scheduler, RNG states, the
epoch/step counters, the config, the model's spec, the history and the best epoch so far.
Plain tensors and containers only, read back with ``torch.load(weights_only=True)``; it
holds the model weights too so that weights and optimiser state can never come from
different steps.

Renaming the state file into place commits a checkpoint: it is written before the files
derived from it (``last.safetensors``, ``best.safetensors``, the records), and ``--resume``
rewrites those from it, so a run killed between any two writes resumes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from prernn_cli.archives import refuse_hostile_archive
from prernn_cli.errors import UserInputError
from prernn_cli.files import atomic_file, finite_json
from prernn_cli.metrics import Accumulator
from prernn_cli.spec import ModelSpec
from prernn_cli.train.config import TrainConfig

STATE_FORMAT = 1


@dataclass
class Position:
    """Where a run stands: the epoch and batch to run next (0-based) and the optimiser steps done."""

    epoch: int = 0
    batch_in_epoch: int = 0
    global_step: int = 0


def rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def load_training_state(path: Path) -> dict:
    """Read a ``*.state.pt`` file (``weights_only=True``: no code runs)."""
    path = Path(path)
    if path.is_dir():
        path = path / "last.state.pt"
    elif path.name.endswith(".safetensors"):
        path = path.with_name(path.name[: -len(".safetensors")] + ".state.pt")
    if not path.exists():
        raise UserInputError(
            f"no training state at {path}; --resume takes a run folder (with last.state.pt) or its last.safetensors"
        )
    refuse_hostile_archive(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch.load on corrupt bytes raises anything (IndexError, struct.error, ...)
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise UserInputError(
            f"training state {path} cannot be read ({first[:120]}); resume from an intact run folder"
        ) from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise UserInputError(
            f"{path} is not a prernn training state; --resume takes a run folder written by prernn train"
        )
    state["_path"] = str(path)
    return state


def _comparable_spec(spec: ModelSpec) -> dict:
    """The spec without what training records (classes, task, settings): what must match for a resume."""
    data = spec.to_dict()
    for key in ("class_names", "task", "training"):
        data.pop(key, None)
    return data


def restore_weights(model: nn.Module, state: dict, resume: Path) -> None:
    """Load the state's weights into ``model`` after checking they belong to the same model."""
    saved = ModelSpec.from_json(state["spec"])
    same_but_size = _comparable_spec(saved.with_updates(input=model.spec.input)) == _comparable_spec(model.spec)
    if saved.input != model.spec.input and same_but_size:  # the same model at another input size: name the run's
        size = "x".join(str(side) for side in saved.input.size)
        snippet = f" --snippet-length {saved.input.frames_per_step}" if saved.input.frame_kind.value == "3d" else ""
        raise UserInputError(f"--resume {resume} ran at another input size; resume with --input-size {size}{snippet}")
    if _comparable_spec(saved) != _comparable_spec(model.spec):
        raise UserInputError(
            f"--resume {resume} is a checkpoint of another model ({saved.base_architecture} {saved.design.value} "
            f"{saved.cell.value} {[layer.name for layer in saved.layers]}); resume with the model that run started from"
        )
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in state["model"].items()}
    if ours != theirs:
        raise UserInputError(
            f"--resume {resume} holds weights of a different shape; resume with the model that run started from"
        )
    model.load_state_dict(state["model"])


def save_state(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    *,
    config: TrainConfig,
    device: torch.device,
    position: Position,
    history: list[dict],
    best: dict | None,
    train_acc: Accumulator,
    path: Path,
) -> None:
    """Write the training state that continues from ``position`` (atomically: this commits a checkpoint).

    ``train_acc`` holds the results of the epoch's batches done so far: kept when
    ``position`` is mid-epoch so that a resumed epoch reports all of its batches.
    """
    payload = {
        "format": STATE_FORMAT,
        "spec": model.spec.to_json(),
        "config": finite_json(config.to_dict()),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng_state(device),
        "epoch": position.epoch,
        "batch_in_epoch": position.batch_in_epoch,
        "global_step": position.global_step,
        "history": [finite_json(row) for row in history],
        "best": finite_json(best) if best else "",
        "train_partial": train_acc.to_json() if position.batch_in_epoch else "",
    }
    with atomic_file(path) as handle:
        torch.save(payload, handle)
