"""The training loop: setup, resume, one epoch of optimiser steps, the end of an epoch.

What stays fixed during a run lives in a :class:`RunContext`, the data in a
:class:`~prernn_cli.train.loaders.RunData`, and what changes from step to step (model,
optimiser, counters, history, best) in a :class:`Run`, passed to each step of
:func:`train` in turn.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader

from prernn_cli.data import DataSplits, collate
from prernn_cli.data.sampling import frames_needed
from prernn_cli.devices import autocast_context
from prernn_cli.errors import DataError, TrainingError
from prernn_cli.files import output_folder
from prernn_cli.metrics import MAIN_METRIC, Accumulator, report_skips, run_model, task_loss
from prernn_cli.train.config import TrainConfig, schedule_factor
from prernn_cli.train.distributed import ShardSampler
from prernn_cli.train.events import EventKind, ProgressCallback, ProgressEvent, TrainResult
from prernn_cli.train.loaders import RunData, run_data, with_whole_clip_steps
from prernn_cli.train.run import (
    Run,
    RunContext,
    prepare_optimizer,
    prepare_run_folder,
    read_resume_state,
    resume_run,
    save_run,
    start_run,
    tear_down,
    write_derived,
)
from prernn_cli.train.state import restore_weights
from prernn_cli.train.stopping import (
    STOPPED_KEY,
    clips_seen_so_far,
    early_stop_reason,
    stop_reason,
    stopped_reason,
)

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------- one epoch of optimiser steps


def _start_epoch(run: Run, context: RunContext, data: RunData) -> None:
    config, position = context.config, run.position
    data.sampler.epoch, data.sampler.skip = position.epoch, position.batch_in_epoch * config.batch_size
    run.ddp_model.train()
    if config.freeze_trunk:
        run.model.trunk.eval()  # frozen BatchNorm keeps its statistics
    run.train_acc = Accumulator(context.splits.task, config.metric_options())
    if run.resumed_partial and position.batch_in_epoch:
        run.train_acc.load_json(run.resumed_partial)  # the resumed epoch reports all of its batches
    run.resumed_partial = ""
    context.emit(
        ProgressEvent(
            EventKind.EPOCH_START,
            position.epoch,
            config.epochs,
            position.batch_in_epoch,
            data.steps_per_epoch,
            position.global_step,
        )
    )


def _check_finite(run: Run, context: RunContext, loss: float, norm: float) -> None:
    """Stop with a one-line error when the loss or the gradient norm is not finite."""
    if math.isfinite(loss) and math.isfinite(norm):
        return
    what = f"loss became {loss}" if not math.isfinite(loss) else f"gradient norm became {norm}"
    if run.last_saved_step is not None:
        kept = f"the last good checkpoint is {context.files.last} (step {run.last_saved_step})"
    else:
        kept = "no checkpoint was written yet"
    position = run.position
    raise TrainingError(
        f"{what} at epoch {position.epoch + 1}, step {position.global_step + 1}; training stopped and {kept}; lower --lr or set --clip-grad"
    )


def _step(run: Run, context: RunContext, batch: dict, empty: bool, step_shape: tuple) -> tuple[torch.Tensor, float]:
    """One optimiser step on ``batch``; an empty batch (every clip skipped) takes a zero-weight step."""
    config = context.config
    if empty:  # stay in lock-step with the other ranks: a zero-weight dummy step
        frames = torch.zeros((1, config.steps, *step_shape), device=context.device)
    else:
        frames = batch["frames"].to(context.device, non_blocking=True)
    with autocast_context(context.device, config.amp):
        outputs, _ = run.ddp_model(frames)
    outputs = outputs.float()
    loss = outputs.sum() * 0.0 if empty else task_loss(context.splits.task, outputs, batch)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for group in run.optimizer.param_groups for p in group["params"]]
    if config.clip_grad:
        norm = torch.nn.utils.clip_grad_norm_(params, config.clip_grad)
    else:
        norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
    loss_value = float(loss.detach())
    _check_finite(run, context, loss_value, float(norm))
    run.optimizer.step()
    run.scheduler.step()
    return outputs, loss_value


def _train_epoch(run: Run, context: RunContext, data: RunData) -> float:
    """The epoch's remaining batches (or up to ``max_steps``); returns the seconds they took."""
    config, position = context.config, run.position
    _start_epoch(run, context, data)
    started, clips_seen = time.perf_counter(), 0
    for batch in data.loader:
        report_skips(batch, data.skipped if context.is_main else None, config.strict)
        empty = batch["size"] == 0
        if empty and not context.distributed:
            position.batch_in_epoch += 1
            continue
        outputs, loss = _step(run, context, batch, empty, data.step_shape)
        position.global_step += 1
        position.batch_in_epoch += 1
        if not empty:
            run.train_acc.add(outputs, batch, loss)
            clips_seen += batch["size"]
        elapsed = time.perf_counter() - started
        speed = clips_seen * context.world / elapsed if elapsed > 0 else None
        context.emit(
            ProgressEvent(
                EventKind.STEP,
                position.epoch,
                config.epochs,
                position.batch_in_epoch,
                data.steps_per_epoch,
                position.global_step,
                loss,
                speed,
                clips_seen=clips_seen_so_far(run.history, run.train_acc.clips * context.world),
            )
        )
        if (
            config.checkpoint_every
            and position.global_step % config.checkpoint_every == 0
            and position.batch_in_epoch < data.steps_per_epoch
        ):
            require_usable_clips(run, context, data)
            save_run(run, context, records=False)
        if config.max_steps and position.global_step >= config.max_steps:
            break
    return time.perf_counter() - started


# ---------------------------------------------------------------- end of an epoch


def _epoch_results(run: Run, context: RunContext, data: RunData) -> tuple[Accumulator, Accumulator | None]:
    """Training results and validation (when there are val clips), merged over all ranks."""
    config = context.config
    val_acc = None
    if len(data.val_set):
        sampler = ShardSampler(len(data.val_set), context.rank, context.world)
        loader = DataLoader(
            data.val_set, batch_size=config.batch_size, sampler=sampler, num_workers=config.workers, collate_fn=collate
        )
        skipped = data.skipped if context.is_main else None
        val_acc = run_model(
            data.reader,
            loader,
            context.splits.task,
            context.device,
            config.metric_options(),
            config.amp,
            skipped,
            config.strict,
        )
    train_acc = run.train_acc
    if context.distributed:
        gathered: list = [None] * context.world
        dist.all_gather_object(gathered, (train_acc, val_acc))
        train_acc = train_acc.merge([g[0] for g in gathered])
        val_acc = val_acc.merge([g[1] for g in gathered]) if val_acc is not None else None
    return train_acc, val_acc


def _metrics_row(run: Run, data: RunData, seconds: float, train_acc: Accumulator, val_acc: Accumulator | None) -> dict:
    row = {
        "epoch": run.position.epoch + 1,
        "step": run.position.global_step,
        "lr": run.scheduler.get_last_lr()[-1],
        "seconds": round(seconds, 3),
        "clips_per_s": round(train_acc.clips / seconds, 2) if seconds > 0 else None,
        "clips_seen": clips_seen_so_far(run.history, train_acc.clips),
    }
    for key, value in train_acc.metrics().items():
        row[f"train_{key}"] = value
    if val_acc is not None:
        for key, value in val_acc.metrics().items():
            row[f"val_{key}"] = value
    row["skipped"] = len(data.skipped)
    return row


def _update_best(run: Run, context: RunContext, row: dict) -> None:
    """Keep the epoch as ``best`` when its main metric (val, else train) beats the best so far; a tie goes to the lower loss.

    Val counts when it has a score: a val split whose clips were all skipped has none.
    """
    metric = MAIN_METRIC[context.splits.task]
    prefix = "val" if row.get(f"val_{metric}") is not None else "train"
    score, loss = row.get(f"{prefix}_{metric}"), row.get(f"{prefix}_loss")
    best = run.best
    tie_better = (
        best is not None
        and score == best["score"]
        and loss is not None
        and best.get("loss") is not None
        and loss < best["loss"]
    )
    if score is not None and (best is None or score > best["score"] or tie_better):
        # best.safetensors follows once the epoch is committed (save_run)
        run.best = {"epoch": run.position.epoch + 1, "metric": f"{prefix}_{metric}", "score": score, "loss": loss}


def _end_epoch(run: Run, context: RunContext, data: RunData, seconds: float) -> None:
    """Validate, record the epoch's metrics row, note the best epoch, checkpoint (``last``, ``best``, the records)."""
    train_acc, val_acc = _epoch_results(run, context, data)
    row = _metrics_row(run, data, seconds, train_acc, val_acc)
    run.history.append(row)
    _update_best(run, context, row)
    config = context.config
    reason = early_stop_reason(run.history, run.best, config.early_stop, config.epochs)
    if reason:
        row[STOPPED_KEY] = reason  # in metrics.jsonl, and in the state so a resumed run stays stopped
    run.position.epoch += 1
    run.position.batch_in_epoch = 0
    save_run(run, context)
    position, epochs = run.position, context.config.epochs
    context.emit(
        ProgressEvent(
            EventKind.EPOCH_END,
            position.epoch - 1,
            epochs,
            data.steps_per_epoch,
            data.steps_per_epoch,
            position.global_step,
            row=row,
            clips_seen=row["clips_seen"],
        )
    )


# ---------------------------------------------------------------- training on nothing


def require_usable_clips(run: Run, context: RunContext, data: RunData) -> None:
    """Stop (exit 2) before the first checkpoint when not one training clip could be used.

    A clip is known to be unusable (too short for ``--steps``, unreadable) only once it is
    loaded, so this runs during the first epoch: before its first checkpoint, and after its
    pass over the training clips.
    """
    if run.history:
        return
    clips = run.train_acc.clips
    if context.distributed:
        total = torch.tensor([clips], dtype=torch.long, device=context.device)
        dist.all_reduce(total)
        clips = int(total.item())
    if clips == 0:
        raise _nothing_to_train_on(data, context)


def _nothing_to_train_on(data: RunData, context: RunContext) -> DataError:
    """Why every training clip was skipped, counted by reason, and what to change."""
    config, train = context.config, context.splits.train
    train_paths = {str(clip.path) for clip in train}
    reasons = [(path, reason) for path, reason in data.skipped if path in train_paths]
    short = [pair for pair in reasons if pair[1].startswith("too short")]
    other = [pair for pair in reasons if not pair[1].startswith("too short")]
    parts = []
    if short:
        need = frames_needed(config.steps, data.train_set.snippet)
        parts.append(f"{len(short)} too short (need {need} frames for --steps {config.steps})")
    if other:
        parts.append(f"{len(other)} unusable (first: {other[0][0]}: {other[0][1]})")
    fix = "lower --steps or give longer clips" if short else "fix or replace the clips"
    why = ", ".join(parts) if parts else "see the warnings above"
    return DataError(f"all {len(train)} training clips were skipped: {why}; {fix}; nothing was written")


# ---------------------------------------------------------------- the run


def _run_epochs(run: Run, context: RunContext, data: RunData) -> None:
    """Train epoch after epoch until ``epochs`` (or ``max_steps``, saving ``last`` where it stopped)."""
    config = context.config
    while run.position.epoch < config.epochs and not stopped_reason(run.history):
        seconds = _train_epoch(run, context, data)
        require_usable_clips(run, context, data)
        reached_max = bool(config.max_steps and run.position.global_step >= config.max_steps)
        if reached_max and run.position.batch_in_epoch < data.steps_per_epoch:
            save_run(run, context, records=False)
            run.stopped_early = True
            return
        _end_epoch(run, context, data, seconds)
        if reached_max:
            run.stopped_early = run.position.epoch < config.epochs
            return


def train(
    model: nn.Module,
    splits: DataSplits,
    output_dir: Path,
    config: TrainConfig,
    resume: Path | None = None,
    progress: ProgressCallback | None = None,
    overwrite: bool = False,
) -> TrainResult:
    """Fine-tune ``model`` on ``splits``; see :mod:`prernn_cli.train` for what is written.

    ``output_dir`` must not hold an earlier run unless it is the one ``resume`` continues,
    or ``overwrite`` replaces it. A run folder this call creates is removed again when the
    run fails before writing anything into it.
    """
    output_dir = Path(output_dir)
    config = with_whole_clip_steps(config, splits, model.spec.input)
    context = start_run(model, splits, output_dir, config, progress, resume, overwrite)
    folder = output_folder(output_dir, "run folder") if context.is_main else contextlib.nullcontext()
    with folder:
        prepare_run_folder(context, resume, overwrite)
        state = read_resume_state(resume, context.files)
        if state is not None:
            restore_weights(model, state, resume)
        return _train_in_folder(model, context, state)


def _train_in_folder(model: nn.Module, context: RunContext, state: dict | None) -> TrainResult:
    """The run itself, in its run folder, from the beginning or from ``state``."""
    config, splits = context.config, context.splits
    optimizer = prepare_optimizer(model, context)
    data = run_data(model, splits, config, context.world, context.rank, context.device)
    scheduler = LambdaLR(optimizer, schedule_factor(config, data.steps_per_epoch))
    run = Run(model, data.reader, optimizer, scheduler, Accumulator(splits.task, config.metric_options()))
    if state is not None:
        resume_run(run, state, context.device)
        if context.is_main:
            write_derived(run, context)  # the state is the commit: finish what a kill may have cut short
    if context.distributed:
        device = context.device
        run.ddp_model = nn.parallel.DistributedDataParallel(
            data.reader, device_ids=[device.index] if device.type == "cuda" else None
        )
    context.emit(
        ProgressEvent(EventKind.START, run.position.epoch, config.epochs, info=_start_info(run, context, data, state))
    )
    finished = False
    try:
        _run_epochs(run, context, data)
        finished = True
    finally:
        tear_down(run, data, context, finished)
    if context.is_main and data.skipped:
        logger.warning("%d clip(s) skipped (unreadable or too short)", len(data.skipped))
    context.emit(ProgressEvent(EventKind.DONE, run.position.epoch, config.epochs, global_step=run.position.global_step))
    files = context.files
    reason = stop_reason(run.history, config.epochs, config.max_steps, run.stopped_early)
    return TrainResult(
        files.last.parent, run.history, run.best, data.skipped, files.to_dict(), run.stopped_early, reason
    )


def _start_info(run: Run, context: RunContext, data: RunData, state: dict | None) -> dict:
    return {
        "device": str(context.device),
        "world_size": context.world,
        "train_clips": len(data.train_set),
        "val_clips": len(data.val_set),
        "steps_per_epoch": data.steps_per_epoch,
        "resumed_at_step": run.position.global_step if state is not None else None,
        "trunk_cache": data.note,
    }
