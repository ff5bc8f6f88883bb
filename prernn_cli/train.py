"""The training loop: objectives, optimiser and schedule, checkpoints, exact resume, AMP, DDP.

``train(model, splits, output_dir, config)`` fine-tunes a :class:`~prernn_cli.model.RecurrentModel`
on :class:`~prernn_cli.data.DataSplits` and writes, in ``output_dir``:

* ``last.safetensors`` / ``best.safetensors`` — the model in our format (:func:`save_converted`),
  with the classes and the task recorded in its spec;
* ``last.state.pt`` — the training state: model and optimiser ``state_dict``, the
  scheduler, RNG states, epoch/step counters, the config, the model's spec. Plain
  tensors and containers only, read back with ``torch.load(weights_only=True)``;
  it holds the model weights too so that weights and optimiser state can never come
  from different steps;
* ``metrics.jsonl`` (one row per epoch) and ``curves.png``.

Every file is written atomically (temporary file + rename). ``resume=`` continues a
run exactly: the epoch's sample order comes from ``(seed, epoch)`` and every
example's random choices from ``(seed, epoch, index)``, the batches already done in
the interrupted epoch are skipped without being loaded, and the optimiser, scheduler
and RNG states are restored — on CPU the resumed run ends with the same weights as an
uninterrupted one.

Under ``torchrun`` (``WORLD_SIZE`` > 1) the same call runs DDP: NCCL on CUDA, gloo on
CPU, a :class:`~torch.utils.data.DistributedSampler` for training, and only rank 0
logs, writes files and reports progress. Progress goes to an optional callback
(:class:`ProgressEvent`); this module never prints.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import signal
import time
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from prernn_cli.data import Augment, ClipDataset, DataSplits, Sampling, collate, dense_windows, flip_pairs_from_names
from prernn_cli.errors import DataError, TrainingError, UserInputError
from prernn_cli.devices import autocast_context, resolve_device
from prernn_cli.metrics import MAIN_METRIC, Accumulator, ClipPool, ErrorNorm, MetricOptions, check_model_outputs, report_skips, run_model, task_loss
from prernn_cli.files import atomic_path
from prernn_cli.frame_cache import FrameCache
from prernn_cli.checkpoint import save_converted
from prernn_cli.spec import ModelSpec, Task

logger = logging.getLogger(__name__)

STATE_FORMAT = 1
#: Test hook: SIGKILL this process right after the given optimiser step (simulates a crash).
KILL_AFTER_STEP_ENV = "PRERNN_TEST_KILL_AFTER_STEP"


class OptimizerKind(str, Enum):
    SGD = "sgd"  # with momentum, as in the paper
    ADAMW = "adamw"


class ScheduleKind(str, Enum):
    COSINE = "cosine"
    STEP = "step"
    CONSTANT = "constant"


@dataclass
class TrainConfig:
    """Everything that shapes a run (recorded in the state file; see ``prernn train --help``)."""

    task: Task = Task.CLASSIFY
    epochs: int = 10
    batch_size: int = 8
    steps: int = 8  # T steps per clip
    sampling: Sampling = Sampling.RANDOM  # for training; validation is uniform (or dense when dense)
    augment: bool = True
    flip: bool = False
    flip_pairs: dict = field(default_factory=dict)
    optimizer: OptimizerKind = OptimizerKind.SGD
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: ScheduleKind = ScheduleKind.COSINE
    warmup_steps: int = 0
    step_epochs: int = 10  # STEP schedule: multiply by gamma every step_epochs epochs
    gamma: float = 0.1
    clip_grad: float | None = 5.0
    pretrained_lr_mult: float = 1.0  # LR of pretrained weights = lr * this; new weights use lr
    freeze_trunk: bool = False
    seed: int = 0
    device: str = "auto"
    amp: bool = True  # bf16 autocast, CUDA only
    workers: int = 2
    frame_cache: str | None = None  # folder of decoded, resized clips (FrameCache); None: decode every epoch
    strict: bool = False
    checkpoint_every: int = 0  # also save `last` every N optimiser steps (0: once per epoch)
    max_steps: int | None = None  # stop after this many optimiser steps (saves `last`)
    clip_pool: ClipPool = ClipPool.MEAN
    error_norm: ErrorNorm = ErrorNorm.NONE
    norm_points: tuple[int, int] | None = None
    auc_threshold: float = 0.08

    def to_dict(self) -> dict:
        data = asdict(self)
        return {k: (v.value if isinstance(v, Enum) else v) for k, v in data.items()}

    def metric_options(self) -> MetricOptions:
        return MetricOptions(self.clip_pool, self.error_norm, self.norm_points, self.auc_threshold)


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


ProgressCallback = Callable[[ProgressEvent], None]


@dataclass
class TrainResult:
    output_dir: Path
    history: list[dict]
    best: dict | None
    skipped: list[tuple[str, str]]
    files: dict[str, str]
    stopped_early: bool = False

    def to_dict(self) -> dict:
        return {
            "output_dir": str(self.output_dir),
            "history": self.history,
            "best": self.best,
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
            "files": self.files,
            "stopped_early": self.stopped_early,
        }


# ---------------------------------------------------------------- helpers


def _distributed() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return world, rank, local


class ResumingSampler(Sampler):
    """Yields ``(epoch, index)`` keys from a :class:`DistributedSampler`, skipping the first ``skip``.

    Passing the epoch in the key (rather than via ``dataset.set_epoch``) keeps
    examples exact with persistent workers.
    """

    def __init__(self, sampler: DistributedSampler, epoch: int, skip: int = 0) -> None:
        self.sampler = sampler
        self.epoch = epoch
        self.skip = skip

    def __iter__(self) -> Iterator[tuple[int, int]]:
        self.sampler.set_epoch(self.epoch)
        for position, index in enumerate(self.sampler):
            if position >= self.skip:
                yield (self.epoch, index)

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.skip)


class EpochDataset(torch.utils.data.Dataset):
    """A :class:`ClipDataset` indexed by ``(epoch, index)`` keys."""

    def __init__(self, dataset: ClipDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, index = key if isinstance(key, tuple) else (0, key)
        self.dataset.epoch = epoch
        return self.dataset[index]


class _ShardSampler(Sampler):
    """Unpadded shard for evaluation: rank r takes indices r, r + world, ..."""

    def __init__(self, n: int, rank: int, world: int) -> None:
        self.indices = list(range(rank, n, world))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def _param_groups(model: nn.Module, config: TrainConfig) -> list[dict]:
    new = model.new_parameter_names()
    pretrained, fresh = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (fresh if name in new else pretrained).append(param)
    groups = []
    if pretrained:
        groups.append({"params": pretrained, "lr": config.lr * config.pretrained_lr_mult, "name": "pretrained"})
    if fresh:
        groups.append({"params": fresh, "lr": config.lr, "name": "new"})
    if not groups:
        raise UserInputError("no trainable parameters (everything is frozen); drop --freeze-trunk or convert a layer")
    return groups


def _schedule(config: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    total = max(1, config.epochs * steps_per_epoch)
    warmup = config.warmup_steps

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if config.schedule is ScheduleKind.COSINE:
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        if config.schedule is ScheduleKind.STEP:
            return config.gamma ** ((step // max(1, steps_per_epoch)) // max(1, config.step_epochs))
        return 1.0

    return factor


def _comparable_spec(spec) -> dict:
    data = spec.to_dict()
    for key in ("class_names", "task"):
        data.pop(key, None)
    return data


def _rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
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
        raise UserInputError(f"no training state at {path}; --resume takes a run folder (with last.state.pt) or its last.safetensors")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file is the same user problem
        raise UserInputError(f"training state {path} cannot be read ({str(error).splitlines()[0][:120]}); resume from an intact run folder") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise UserInputError(f"{path} is not a prernn training state; --resume takes a run folder written by prernn train")
    state["_path"] = str(path)
    return state


def _plot_curves(history: list[dict], task: Task, path: Path) -> None:
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


def _write_jsonl(history: list[dict], path: Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(row) + "\n" for row in history))


# ---------------------------------------------------------------- the loop


def train(
    model: nn.Module,
    splits: DataSplits,
    output_dir: Path,
    config: TrainConfig,
    resume: Path | None = None,
    progress: ProgressCallback | None = None,
) -> TrainResult:
    """Fine-tune ``model`` on ``splits``; see the module docstring for what is written."""
    world, rank, local_rank = _distributed()
    distributed = world > 1
    if config.task is not splits.task:
        raise UserInputError(f"--task {config.task.value} but the data is for {splits.task.value}; pass --task {splits.task.value}")
    if config.epochs < 1 or config.batch_size < 1:
        raise UserInputError("--epochs and --batch-size must be at least 1")
    if not splits.train:
        raise DataError("no training clips; add clips to the train split")
    check_model_outputs(model, splits.task, splits.num_outputs)
    if config.task is Task.CTC and config.steps < 2:
        raise UserInputError("--task ctc needs --steps of at least 2")

    device = resolve_device(config.device)
    if distributed:
        if device.type == "cuda":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    is_main = rank == 0
    output_dir = Path(output_dir)
    if is_main:
        output_dir.mkdir(parents=True, exist_ok=True)

    # record what the model has learnt to predict
    if splits.task is not Task.REGRESS:
        model.spec = model.spec.with_updates(class_names=tuple(splits.class_names), task=splits.task.value)
    else:
        model.spec = model.spec.with_updates(task=splits.task.value)

    state = load_training_state(resume) if resume is not None else None
    if state is not None:
        saved = ModelSpec.from_json(state["spec"])
        if _comparable_spec(saved) != _comparable_spec(model.spec):
            raise UserInputError(
                f"--resume {resume} is a checkpoint of another model ({saved.base_architecture} {saved.design.value} "
                f"{saved.cell.value} {[l.name for l in saved.layers]}); resume with the model that run started from"
            )
        ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        theirs = {k: tuple(v.shape) for k, v in state["model"].items()}
        if ours != theirs:
            raise UserInputError(f"--resume {resume} holds weights of a different shape; resume with the model that run started from")
        model.load_state_dict(state["model"])

    torch.manual_seed(config.seed + rank)
    if config.freeze_trunk:
        for param in model.trunk.parameters():
            param.requires_grad_(False)
    model.to(device)
    groups = _param_groups(model, config)
    if config.optimizer is OptimizerKind.SGD:
        optimizer = torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    else:
        optimizer = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)

    # ---- data
    augment = None
    if config.augment or config.flip:
        pairs = flip_pairs_from_names(config.flip_pairs, splits.class_names) if config.flip_pairs else ()
        augment = Augment(translate=config.augment, flip=config.flip or bool(pairs), flip_pairs=pairs)
    skipped: list[tuple[str, str]] = []
    train_clips, val_clips = splits.train, splits.val
    snippet = model.spec.input.frames_per_step
    if config.sampling is Sampling.DENSE:
        train_clips, bad = dense_windows(train_clips, config.steps, snippet)
        val_clips, bad_val = dense_windows(val_clips, config.steps, snippet)
        skipped += [(str(p), r) for p, r in bad + bad_val]
        if config.strict and skipped:
            raise DataError(f"clip {skipped[0][0]}: {skipped[0][1]}; fix or remove it (or drop --strict)")
        if not train_clips:
            raise DataError("no training clip is long enough for one dense window; lower --steps")
    frame_cache = FrameCache.open(Path(config.frame_cache), model.spec.input) if config.frame_cache else None
    train_set = ClipDataset(train_clips, model.spec.input, splits.task, config.steps, config.sampling, augment, seed=config.seed, frame_cache=frame_cache)
    val_sampling = Sampling.DENSE if config.sampling is Sampling.DENSE else Sampling.UNIFORM
    val_set = ClipDataset(val_clips, model.spec.input, splits.task, config.steps, val_sampling, None, seed=config.seed, frame_cache=frame_cache)
    dist_sampler = DistributedSampler(range(len(train_set)), num_replicas=world, rank=rank, shuffle=True, seed=config.seed, drop_last=False)
    steps_per_epoch = math.ceil(len(dist_sampler) / config.batch_size)
    loader_kwargs = dict(
        batch_size=config.batch_size,
        num_workers=config.workers,
        collate_fn=collate,
        pin_memory=device.type == "cuda",
        persistent_workers=config.workers > 0,
        generator=torch.Generator().manual_seed(config.seed),  # keeps the global RNG untouched
    )
    if config.workers > 0:
        loader_kwargs["prefetch_factor"] = 4
    epoch_train = EpochDataset(train_set)
    train_sampler = ResumingSampler(dist_sampler, 0)
    train_loader = DataLoader(epoch_train, sampler=train_sampler, **loader_kwargs)

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(config, steps_per_epoch))
    epoch, batch_in_epoch, global_step = 0, 0, 0
    history: list[dict] = []
    best: dict | None = None
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"], device)
        epoch, batch_in_epoch, global_step = int(state["epoch"]), int(state["batch_in_epoch"]), int(state["global_step"])
        history = [json.loads(row) for row in state["history"]]
        best = json.loads(state["best"]) if state.get("best") else None
        logger.info("resuming from %s at epoch %d, batch %d (step %d)", state["_path"], epoch + 1, batch_in_epoch, global_step)

    ddp_model = model
    if distributed:
        ddp_model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    files = {
        "last": str(output_dir / "last.safetensors"),
        "best": str(output_dir / "best.safetensors"),
        "state": str(output_dir / "last.state.pt"),
        "metrics": str(output_dir / "metrics.jsonl"),
        "curves": str(output_dir / "curves.png"),
    }
    last_saved_step: int | None = state and global_step

    def save_last(next_epoch: int, next_batch: int) -> None:
        nonlocal last_saved_step
        if not is_main:
            return
        save_converted(model, Path(files["last"]))
        payload = {
            "format": STATE_FORMAT,
            "spec": model.spec.to_json(),
            "config": json.dumps(config.to_dict()),
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": _rng_state(device),
            "epoch": next_epoch,
            "batch_in_epoch": next_batch,
            "global_step": global_step,
            "history": [json.dumps(row) for row in history],
            "best": json.dumps(best) if best else "",
            "train_partial": train_acc.to_json() if next_batch else "",
        }
        with atomic_path(Path(files["state"])) as tmp:
            torch.save(payload, tmp)
        last_saved_step = global_step

    def emit(event: ProgressEvent) -> None:
        if progress is not None and is_main:
            progress(event)

    kill_after = int(os.environ.get(KILL_AFTER_STEP_ENV, "0") or 0)
    options = config.metric_options()
    emit(ProgressEvent(EventKind.START, epoch, config.epochs, info={
        "device": str(device), "world_size": world, "train_clips": len(train_set), "val_clips": len(val_set),
        "steps_per_epoch": steps_per_epoch, "resumed_at_step": global_step if state else None,
    }))
    step_shape = model.spec.input.step_shape()
    stopped_early = False
    finished = False
    train_acc = Accumulator(splits.task, options)
    try:
        while epoch < config.epochs:
            train_sampler.epoch, train_sampler.skip = epoch, batch_in_epoch * config.batch_size
            ddp_model.train()
            if config.freeze_trunk:
                model.trunk.eval()  # frozen BatchNorm keeps its statistics
            train_acc = Accumulator(splits.task, options)
            if state is not None and state.get("train_partial") and epoch == int(state["epoch"]) and batch_in_epoch:
                train_acc.load_json(state["train_partial"])  # the resumed epoch reports all of its batches
            emit(ProgressEvent(EventKind.EPOCH_START, epoch, config.epochs, batch_in_epoch, steps_per_epoch, global_step))
            started, clips_seen = time.perf_counter(), 0
            for batch in train_loader:
                report_skips(batch, skipped if is_main else None, config.strict)
                empty = batch["size"] == 0
                if empty and not distributed:
                    batch_in_epoch += 1
                    continue
                if empty:  # stay in lock-step with the other ranks: a zero-weight dummy step
                    frames = torch.zeros((1, config.steps, *step_shape), device=device)
                else:
                    frames = batch["frames"].to(device, non_blocking=True)
                with autocast_context(device, config.amp):
                    outputs, _ = ddp_model(frames)
                outputs = outputs.float()
                if empty:
                    loss = outputs.sum() * 0.0
                else:
                    loss = task_loss(splits.task, outputs, batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                params = [p for group in optimizer.param_groups for p in group["params"]]
                if config.clip_grad:
                    norm = torch.nn.utils.clip_grad_norm_(params, config.clip_grad)
                else:
                    norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
                loss_value = float(loss.detach())
                if not (math.isfinite(loss_value) and math.isfinite(float(norm))):
                    what = f"loss became {loss_value}" if not math.isfinite(loss_value) else f"gradient norm became {float(norm)}"
                    kept = f"the last good checkpoint is {files['last']} (step {last_saved_step})" if last_saved_step is not None else "no checkpoint was written yet"
                    raise TrainingError(f"{what} at epoch {epoch + 1}, step {global_step + 1}; training stopped and {kept}; lower --lr or set --clip-grad")
                optimizer.step()
                scheduler.step()
                global_step += 1
                batch_in_epoch += 1
                if not empty:
                    train_acc.add(outputs, batch, loss_value)
                    clips_seen += batch["size"]
                elapsed = time.perf_counter() - started
                emit(ProgressEvent(EventKind.STEP, epoch, config.epochs, batch_in_epoch, steps_per_epoch, global_step, loss_value, clips_seen * world / elapsed if elapsed > 0 else None))
                if config.checkpoint_every and global_step % config.checkpoint_every == 0 and batch_in_epoch < steps_per_epoch:
                    save_last(epoch, batch_in_epoch)
                if kill_after and global_step == kill_after and not distributed:
                    os.kill(os.getpid(), signal.SIGKILL)
                if config.max_steps and global_step >= config.max_steps:
                    break
            seconds = time.perf_counter() - started
            reached_max = bool(config.max_steps and global_step >= config.max_steps)
            if reached_max and batch_in_epoch < steps_per_epoch:
                save_last(epoch, batch_in_epoch)
                stopped_early = True
                break

            # ---- end of epoch: metrics over all ranks
            val_acc = None
            if len(val_set):
                val_loader = DataLoader(val_set, batch_size=config.batch_size, sampler=_ShardSampler(len(val_set), rank, world), num_workers=config.workers, collate_fn=collate)
                val_acc = run_model(model, val_loader, splits.task, device, options, config.amp, skipped if is_main else None, config.strict)
            if distributed:
                gathered: list = [None] * world
                dist.all_gather_object(gathered, (train_acc, val_acc))
                train_acc = train_acc.merge([g[0] for g in gathered])
                val_acc = val_acc.merge([g[1] for g in gathered]) if val_acc is not None else None
            row = {"epoch": epoch + 1, "step": global_step, "lr": scheduler.get_last_lr()[-1], "seconds": round(seconds, 3),
                   "clips_per_s": round(train_acc.clips / seconds, 2) if seconds > 0 else None}
            for key, value in train_acc.metrics().items():
                row[f"train_{key}"] = value
            if val_acc is not None:
                for key, value in val_acc.metrics().items():
                    row[f"val_{key}"] = value
            row["skipped"] = len(skipped)
            history.append(row)
            metric = MAIN_METRIC[splits.task]
            score = row.get(f"val_{metric}", row.get(f"train_{metric}"))
            prefix = "val" if val_acc is not None else "train"
            loss_now = row.get(f"{prefix}_loss")
            tie_better = best is not None and score == best["score"] and loss_now is not None and best.get("loss") is not None and loss_now < best["loss"]
            if score is not None and (best is None or score > best["score"] or tie_better):
                best = {"epoch": epoch + 1, "metric": f"{prefix}_{metric}", "score": score, "loss": loss_now}
                if is_main:
                    save_converted(model, Path(files["best"]))
            epoch += 1
            batch_in_epoch = 0
            save_last(epoch, 0)
            if is_main:
                _write_jsonl(history, Path(files["metrics"]))
                _plot_curves(history, splits.task, Path(files["curves"]))
            emit(ProgressEvent(EventKind.EPOCH_END, epoch - 1, config.epochs, steps_per_epoch, steps_per_epoch, global_step, row=row))
            if reached_max:
                stopped_early = epoch < config.epochs
                break
        finished = True
    finally:
        # worker processes and (under DDP) the process group are torn down in an order
        # that avoids a rare abort at exit with gloo: model wrapper, optimiser and loaders first
        del ddp_model, optimizer, train_loader
        gc.collect()
        if distributed:
            if finished:
                dist.barrier()
            dist.destroy_process_group()
    if is_main and skipped:
        logger.warning("%d clip(s) skipped (unreadable or too short)", len(skipped))
    emit(ProgressEvent(EventKind.DONE, epoch, config.epochs, global_step=global_step))
    return TrainResult(output_dir, history, best, skipped, files, stopped_early)


__all__ = [
    "TrainConfig", "OptimizerKind", "ScheduleKind", "EventKind", "ProgressEvent", "TrainResult",
    "train", "load_training_state",
]
