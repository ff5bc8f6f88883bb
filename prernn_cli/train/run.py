"""A training run's state: what stays fixed (:class:`RunContext`), what changes (:class:`Run`),
its setup and run folder, resume, checkpoints, and teardown."""

from __future__ import annotations

import gc
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from prernn_cli.checkpoint import save_converted
from prernn_cli.data import DataSplits
from prernn_cli.errors import DataError, UserInputError
from prernn_cli.files import same_place
from prernn_cli.metrics import Accumulator, check_model_outputs
from prernn_cli.spec import Task
from prernn_cli.train.config import TrainConfig, build_optimizer
from prernn_cli.train.distributed import distributed_env, end_process_group, start_device
from prernn_cli.train.events import ProgressCallback, ProgressEvent
from prernn_cli.train.loaders import RunData, check_cache_options
from prernn_cli.train.records import RunFiles, plot_curves, write_jsonl
from prernn_cli.train.state import Position, load_training_state, save_state, set_rng_state

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
    ddp_model: nn.Module | None  # what reads a batch (the model, or it from cached trunk outputs), or its DDP wrapper
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
    check_cache_options(config)


def _resume_folder(resume: Path) -> Path:
    """The run folder ``--resume`` names: the folder itself, or the one holding its ``last.safetensors``."""
    return resume.parent if resume.name.endswith((".safetensors", ".pt")) else resume


def check_run_folder(files: RunFiles, resume: Path | None, overwrite: bool) -> None:
    """Refuse a run folder that is a file, or that holds an earlier run not being resumed (unless ``overwrite``)."""
    folder = files.last.parent
    if folder.exists() and not folder.is_dir():
        raise UserInputError(f"-o {folder} is a file; give a folder for the run's checkpoints and records")
    earlier = files.holding_a_run()
    if not earlier or overwrite or (resume is not None and same_place(_resume_folder(Path(resume)), folder)):
        return
    raise UserInputError(
        f"run folder {folder} already holds a run ({earlier[0].name}); continue it with --resume {folder}, "
        f"replace it with --overwrite, or choose another -o"
    )


def start_run(
    model: nn.Module,
    splits: DataSplits,
    output_dir: Path,
    config: TrainConfig,
    progress: ProgressCallback | None,
    resume: Path | None = None,
    overwrite: bool = False,
) -> RunContext:
    """Check the inputs and the run folder, pick the device (joining the process group under torchrun)."""
    world, rank, local_rank = distributed_env()
    check_inputs(model, splits, config)
    files = RunFiles.in_folder(output_dir)
    check_run_folder(files, resume, overwrite)
    device = start_device(config.device, world, local_rank)
    context = RunContext(config, splits, world, rank, device, files, progress)
    # record what the model learns to predict, and how it is trained and measured
    class_names = tuple(splits.class_names) if splits.task is not Task.REGRESS else model.spec.class_names
    model.spec = model.spec.with_updates(class_names=class_names, task=splits.task.value, training=config.record())
    return context


def prepare_run_folder(context: RunContext, resume: Path | None, overwrite: bool) -> None:
    """In the (created) run folder: drop a killed run's temporary files, and an earlier run's files on --overwrite."""
    if not context.is_main:
        return
    context.files.remove_leftovers()
    if overwrite and not (resume is not None and same_place(_resume_folder(Path(resume)), context.files.last.parent)):
        context.files.remove()


def read_resume_state(resume: Path | None, files: RunFiles) -> dict | None:
    """The training state ``--resume`` names; None to start from the beginning.

    A run killed before its first checkpoint left nothing to resume: resuming it into
    its own folder starts it again (with a warning), so a job that always passes
    ``--resume`` can be restarted after any kill.
    """
    if resume is None:
        return None
    folder = files.last.parent
    if same_place(_resume_folder(Path(resume)), folder) and not files.holding_a_run():
        logger.warning("%s holds no checkpoint yet (stopped before the first one): starting from the beginning", resume)
        return None
    return load_training_state(resume)


def prepare_optimizer(model: nn.Module, context: RunContext) -> torch.optim.Optimizer:
    """Seed this rank, freeze the trunk when asked, move the model to the device and build its optimiser."""
    config = context.config
    torch.manual_seed(config.seed + context.rank)
    if config.freeze_trunk:
        for param in model.trunk.parameters():
            param.requires_grad_(False)
    if config.task is Task.REGRESS:
        without_dropout(model)
    model.to(context.device)
    return build_optimizer(model, config)


def without_dropout(model: nn.Module) -> None:
    """Turn the network's dropout off for regression.

    Dropout noise ahead of a linear regression output pulls the predictions toward the
    targets' mean: with DigitVGG's two p=0.5 dropouts after fc6, per-frame position
    targets stayed at a constant prediction's error; without them the error fell 4x.
    """
    layers = [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0]
    for layer in layers:
        layer.p = 0.0
    if layers:
        logger.info(
            "dropout is off for --task regress (%d layer(s)): it pulls predictions toward the mean", len(layers)
        )


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


def save_run(run: Run, context: RunContext, records: bool = True) -> None:
    """Checkpoint the run at its position (rank 0 only): commit the training state, then write what derives from it."""
    if not context.is_main:
        return
    save_state(
        run.model,
        run.optimizer,
        run.scheduler,
        config=context.config,
        device=context.device,
        position=run.position,
        history=run.history,
        best=run.best,
        train_acc=run.train_acc,
        path=context.files.state,
    )
    write_derived(run, context, records)
    run.last_saved_step = run.position.global_step


def write_derived(run: Run, context: RunContext, records: bool = True) -> None:
    """The files that follow from the committed state: ``last``, ``best`` when this epoch is the best, the records.

    All of them can be rewritten from the state alone; a resumed run does, so a kill
    between the commit and any of these writes loses nothing.
    """
    files, position = context.files, run.position
    save_converted(run.model, files.last)
    if run.best and position.batch_in_epoch == 0 and run.best["epoch"] == position.epoch:
        save_converted(run.model, files.best)  # the epoch just ended is the best: the weights are the state's
    if records and run.history:
        write_jsonl(run.history, files.metrics)
        plot_curves(run.history, context.splits.task, files.curves)


def tear_down(run: Run, data: RunData, context: RunContext, finished: bool) -> None:
    """Release the loader's workers and (under DDP) leave the process group.

    The order avoids a rare abort at exit with gloo: the model wrapper, the optimiser
    and the loader go first, then the process group.
    """
    run.ddp_model = run.optimizer = data.loader = None
    gc.collect()
    if context.distributed:
        end_process_group(finished)
