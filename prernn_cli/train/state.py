"""The training state, ``last.state.pt``: what exact resume needs, written with ``last.safetensors``.

The state holds the model and optimiser ``state_dict``, the scheduler, RNG states, the
epoch/step counters, the config, the model's spec, the history and the best epoch so far.
Plain tensors and containers only, read back with ``torch.load(weights_only=True)``; it
holds the model weights too so that weights and optimiser state can never come from
different steps.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from prernn_cli.checkpoint import save_converted
from prernn_cli.errors import UserInputError
from prernn_cli.files import atomic_path
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
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file is the same user problem
        raise UserInputError(
            f"training state {path} cannot be read ({str(error).splitlines()[0][:120]}); resume from an intact run folder"
        ) from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise UserInputError(
            f"{path} is not a prernn training state; --resume takes a run folder written by prernn train"
        )
    state["_path"] = str(path)
    return state


def _comparable_spec(spec: ModelSpec) -> dict:
    """The spec without what training records (classes, task): what must match for a resume."""
    data = spec.to_dict()
    for key in ("class_names", "task"):
        data.pop(key, None)
    return data


def restore_weights(model: nn.Module, state: dict, resume: Path) -> None:
    """Load the state's weights into ``model`` after checking they belong to the same model."""
    saved = ModelSpec.from_json(state["spec"])
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


def save_last(
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
    last_path: Path,
    state_path: Path,
) -> None:
    """Write ``last.safetensors`` and the training state that continues from ``position``.

    ``train_acc`` holds the results of the epoch's batches done so far: kept when
    ``position`` is mid-epoch so that a resumed epoch reports all of its batches.
    """
    save_converted(model, last_path)
    payload = {
        "format": STATE_FORMAT,
        "spec": model.spec.to_json(),
        "config": json.dumps(config.to_dict()),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng_state(device),
        "epoch": position.epoch,
        "batch_in_epoch": position.batch_in_epoch,
        "global_step": position.global_step,
        "history": [json.dumps(row) for row in history],
        "best": json.dumps(best) if best else "",
        "train_partial": train_acc.to_json() if position.batch_in_epoch else "",
    }
    with atomic_path(state_path) as tmp:
        torch.save(payload, tmp)
