"""When a run stops before its last epoch, and how far it has come: early stopping and the clips seen.

Early stopping (``--early-stop N``) watches the epoch the run keeps as ``best`` (its
main metric on the val split, or on train when no val clip could be scored; a tie
with a lower loss counts as better): when the last N epochs brought no new best, the
run stops after the epoch it is at. The reason is written into that epoch's row of
``metrics.jsonl`` (``stopped``) and the result's ``stop_reason``; a resumed run that
had stopped this way stays stopped.
"""

from __future__ import annotations

STOPPED_KEY = "stopped"


def early_stop_reason(history: list[dict], best: dict | None, patience: int, epochs: int) -> str:
    """Why the run stops after the last epoch of ``history`` ("" to go on): no new best for ``patience`` epochs."""
    if patience < 1 or best is None or not history:
        return ""
    epoch = history[-1]["epoch"]
    since = epoch - best["epoch"]
    if since < patience or epoch >= epochs:
        return ""
    return (
        f"early stop after epoch {epoch}: {best['metric']} has not improved for {since} epochs "
        f"(best {best['score']:.4g} at epoch {best['epoch']})"
    )


def stopped_reason(history: list[dict]) -> str:
    """The early-stop reason recorded in the last epoch's row ("" when the run did not stop early)."""
    return str(history[-1].get(STOPPED_KEY) or "") if history else ""


def clips_seen_so_far(history: list[dict], current_epoch_clips: int) -> int:
    """Training clips the optimiser has seen so far: the finished epochs' and the current epoch's."""
    return sum(int(row.get("train_clips") or 0) for row in history) + current_epoch_clips


def stop_reason(history: list[dict], epochs: int, max_steps: int | None, stopped_by_max_steps: bool) -> str:
    """Why the run ended: its epochs done, ``--max-steps`` reached, or an early stop."""
    early = stopped_reason(history)
    if early:
        return early
    if stopped_by_max_steps:
        return f"--max-steps {max_steps} reached"
    return f"completed {epochs} epochs"
