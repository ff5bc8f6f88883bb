"""Where a model runs: the device a user asks for, and mixed precision there."""

from __future__ import annotations

from contextlib import nullcontext

import torch

from prernn_cli.errors import UserInputError


def resolve_device(device: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cuda`` without a GPU is a user error."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserInputError("--device cuda but no CUDA GPU is available; use --device cpu or auto")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise UserInputError(f"unknown device {device!r}; use auto, cpu or cuda")
    return torch.device(device)


def autocast_context(device: torch.device, amp: bool):
    """bf16 autocast on CUDA only; full precision on CPU."""
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()
