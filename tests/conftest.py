"""Shared fixtures: every test starts from the same seed; small converted models and clip trees on disk.

The plain builders behind them are in helpers.py.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import converted, make_clip_tree
from prernn_cli.checkpoint import save_converted


@pytest.fixture(autouse=True)
def _seed_everything():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True, scope="session")
def _architecture_cache(tmp_path_factory):
    """Keep the architecture-signature cache (identification from weights) out of the user's home."""
    patch = pytest.MonkeyPatch()
    patch.setenv("PRERNN_CACHE_DIR", str(tmp_path_factory.mktemp("prernn_cache")))
    yield
    patch.undo()


@pytest.fixture(scope="session")
def converted_file(tmp_path_factory) -> Callable[..., Path]:
    """``converted_file(**options)``: :func:`helpers.converted` saved once per distinct options; its path.

    Shared by every test that asks for the same options: read it, never write to it.
    """
    folder = tmp_path_factory.mktemp("converted")
    saved: dict[tuple, Path] = {}

    def path_for(**options) -> Path:
        key = tuple(sorted(options.items()))
        if key not in saved:
            path = folder / f"model{len(saved)}.safetensors"
            save_converted(converted(**options), path)
            saved[key] = path
        return saved[key]

    return path_for


@pytest.fixture(scope="session")
def model_file(converted_file) -> Path:
    """DigitVGG's fc6 as a PreGRU-SIH with a 2-class head, saved: the model the training CLI tests run."""
    return converted_file()


@pytest.fixture
def small_clip_tree(tmp_path) -> Path:
    """``tmp_path/clips/{left,right}/clip{0,1}``: four PNG clips of 6 frames, squares moving left or right."""
    root = tmp_path / "clips"
    make_clip_tree(root, per_class=2, num_frames=6)
    return root
