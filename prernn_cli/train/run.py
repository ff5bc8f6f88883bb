"""A training run's state: what stays fixed (:class:`RunContext`), what changes (:class:`Run`),
its setup, resume, saving of ``last``, and teardown."""

from __future__ import annotations

import gc
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from prernn_cli.data import DataSplits
from prernn_cli.errors import DataError, UserInputError
from prernn_cli.metrics import Accumulator, check_model_outputs
from prernn_cli.spec import Task
from prernn_cli.train.config import TrainConfig, build_optimizer
from prernn_cli.train.distributed import distributed_env, end_process_group, start_device
from prernn_cli.train.events import ProgressCallback, ProgressEvent
from prernn_cli.train.loaders import RunData
from prernn_cli.train.records import RunFiles
from prernn_cli.train.state import Position, save_last, set_rng_state

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunContext:
    """What stays fixed during a run: its inputs, this process's place in the world, where files go."""

    config: TrainConfig
    splits: DataSplits
    world: int
    rank: int
    device: torch.device
    files: RunFiles
    progress: ProgressCallback | None

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def emit(self, event: ProgressEvent) -> None:
        """Report progress (rank 0 only)."""
        if self.progress is not None and self.is_main:
            self.progress(event)


@dataclass
class Run:
    """What changes as a run goes: the model and its optimiser, the counters, the history, the best epoch."""

    model: nn.Module
    ddp_model: nn.Module | None  # the model itself, or its DDP wrapper under torchrun
    optimizer: torch.optim.Optimizer | None
    scheduler: LambdaLR
    train_acc: Accumulator  # the current epoch's training results
    position: Position = field(default_factory=Position)
    history: list[dict] = field(default_factory=list)
    best: dict | None = None
    last_saved_step: int | None = None
    resumed_partial: str = ""  # results of the interrupted epoch's batches before the resume
    stopped_early: bool = False


# ---------------------------------------------------------------- setup


def check_inputs(model: nn.Module, splits: DataSplits, config: TrainConfig) -> None:
    if config.task is not splits.task:
        raise UserInputError(
            f"--task {config.task.value} but the data is for {splits.task.value}; pass --task {splits.task.value}"
        )
    if config.epochs < 1 or config.batch_size < 1:
        raise UserInputError("--epochs and --batch-size must be at least 1")
    if not splits.train:
        raise DataError("no training clips; add clips to the train split")
    check_model_outputs(model, splits.task, splits.num_outputs)
    if config.task is Task.CTC and config.steps < 2:
        raise UserInputError("--task ctc needs --steps of at least 2")


def start_run(
    model: nn.Module, splits: DataSplits, output_dir: Path, config: TrainConfig, progress: ProgressCallback | None
) -> RunContext:
    """Check the inputs, pick the device (joining the process group under torchrun), make the run folder."""
    world, rank, local_rank = distributed_env()
    check_inputs(model, splits, config)
    device = start_device(config.device, world, local_rank)
    context = RunContext(config, splits, world, rank, device, RunFiles.in_folder(output_dir), progress)
    if context.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
    # record what the model learns to predict
    if splits.task is not Task.REGRESS:
        model.spec = model.spec.with_updates(class_names=tuple(splits.class_names), task=splits.task.value)
    else:
        model.spec = model.spec.with_updates(task=splits.task.value)
    return context


def prepare_optimizer(model: nn.Module, context: RunContext) -> torch.optim.Optimizer:
    """Seed this rank, freeze the trunk when asked, move the model to the device and build its optimiser."""
    config = context.config
    torch.manual_seed(config.seed + context.rank)
    if config.freeze_trunk:
        for param in model.trunk.parameters():
            param.requires_grad_(False)
    model.to(context.device)
    return build_optimizer(model, config)


# ---------------------------------------------------------------- resume and checkpoints


def resume_run(run: Run, state: dict, device: torch.device) -> None:
    """Continue where the state left off: optimiser, schedule, RNG, counters, history, best."""
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"], device)
    run.position = Position(int(state["epoch"]), int(state["batch_in_epoch"]), int(state["global_step"]))
    run.history = [json.loads(row) for row in state["history"]]
    run.best = json.loads(state["best"]) if state.get("best") else None
    run.last_saved_step = run.position.global_step
    run.resumed_partial = state.get("train_partial") or ""
    position = run.position
    logger.info(
        "resuming from %s at epoch %d, batch %d (step %d)",
        state["_path"],
        position.epoch + 1,
        position.batch_in_epoch,
        position.global_step,
    )


def save_run(run: Run, context: RunContext) -> None:
    """Save ``last`` and the training state at the run's position (rank 0 only)."""
    if not context.is_main:
        return
    save_last(
        run.model,
        run.optimizer,
        run.scheduler,
        config=context.config,
        device=context.device,
        position=run.position,
        history=run.history,
        best=run.best,
        train_acc=run.train_acc,
        last_path=context.files.last,
        state_path=context.files.state,
    )
    run.last_saved_step = run.position.global_step


def tear_down(run: Run, data: RunData, context: RunContext, finished: bool) -> None:
    """Release the loader's workers and (under DDP) leave the process group.

    The order avoids a rare abort at exit with gloo: the model wrapper, the optimiser
    and the loader go first, then the process group.
    """
    run.ddp_model = run.optimizer = data.loader = None
    gc.collect()
    if context.distributed:
        end_process_group(finished)
