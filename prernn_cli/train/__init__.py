"""Training: objectives, optimiser and schedule, checkpoints, exact resume, AMP, DDP.

``train(model, splits, output_dir, config)`` fine-tunes a :class:`~prernn_cli.model.RecurrentModel`
on :class:`~prernn_cli.data.DataSplits` and writes, in ``output_dir``:

* ``last.safetensors`` / ``best.safetensors`` — the model in our format (:func:`save_converted`),
  with the classes and the task recorded in its spec;
* ``last.state.pt`` — the training state (:mod:`prernn_cli.train.state`): model and optimiser
  ``state_dict``, the scheduler, RNG states, epoch/step counters, the config, the model's spec;
* ``metrics.jsonl`` (one row per epoch) and ``curves.png`` (:mod:`prernn_cli.train.records`).

Every file is written atomically (temporary file + rename). A checkpoint is committed
by its training state, written first; the other files follow from it and ``resume=``
rewrites them, so a run killed between any two writes resumes. ``output_dir`` holding
an earlier run is refused unless it is the run resumed or ``overwrite=True``.

``resume=`` continues a run exactly: the epoch's sample order comes from ``(seed, epoch)`` and every
example's random choices from ``(seed, epoch, index)``, the batches already done in
the interrupted epoch are skipped without being loaded, and the optimiser, scheduler
and RNG states are restored — on CPU the resumed run ends with the same weights as an
uninterrupted one.

Under ``torchrun`` (``WORLD_SIZE`` > 1) the same call runs DDP: NCCL on CUDA, gloo on
CPU, a :class:`~torch.utils.data.DistributedSampler` for training, and only rank 0
logs, writes files and reports progress. Progress goes to an optional callback
(:class:`ProgressEvent`); this package never prints.
"""

from prernn_cli.train.config import OptimizerKind, ScheduleKind, TrainConfig
from prernn_cli.train.events import EventKind, ProgressCallback, ProgressEvent, TrainResult
from prernn_cli.train.loop import train
from prernn_cli.train.records import RUN_FILE_NAMES
from prernn_cli.train.state import load_training_state

__all__ = [
    "TrainConfig",
    "OptimizerKind",
    "ScheduleKind",
    "EventKind",
    "ProgressEvent",
    "ProgressCallback",
    "TrainResult",
    "train",
    "load_training_state",
    "RUN_FILE_NAMES",
]
