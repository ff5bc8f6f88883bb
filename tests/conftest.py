"""Shared fixtures: every test starts from the same seed."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch


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
