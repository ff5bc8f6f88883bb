"""A disk cache of a frozen trunk's outputs: the trunk runs once per clip and view, not every epoch.

With the trunk frozen (weights fixed, BatchNorm in eval mode), what it gives for a
clip's frames never changes. :func:`fill` computes it once — the first converted
layer's input, plus the residual shortcut for a conv layer with one, flattened and
concatenated into ``D`` values per step — and stores it as a ``.npy`` entry
``[S, D]`` (float16 by default, float32 for exactness). Training then reads the
sampled steps' rows, memory-mapped, and runs only the recurrent layers and above
(:class:`TrunkFeatureModel`, :meth:`~prernn_cli.model.RecurrentModel.forward_from_trunk`).

Rows
    A 2D model stores every frame of the clip (``S = N``); a 3D model every snippet
    start any sampling can pick (``S = N − L + 1``: the trunk runs on that many
    snippets once, where an epoch runs it on T). Row ``s`` is the step that starts at
    frame ``s``, so uniform, random and dense sampling all read the same entry.

Views
    A stored step has one fixed crop. With no views (the default) a clip has one entry,
    centre-cropped: spatial augmentation is off (random temporal sampling still draws
    new steps every epoch). With ``K`` views, view ``k`` of a clip is cropped (and, with
    flips on, flipped) by a generator seeded with ``(seed, clip, k)``, so it is the same
    in every run; each epoch picks one of the ``K`` views per clip from the epoch's
    generator. Validation reads the centre view.

Keys
    An entry is named by a hash of the clip (its path, and the size and modification
    time of its files, as in :mod:`~prernn_cli.data.frame_cache`), the trunk (its
    generated code, every weight and buffer, the model's input spec, and whether it ran
    under bf16 autocast), the view and the storage dtype: another model, another input
    size or a changed clip never reads an entry that is not its own. An entry that is
    unreadable or has the wrong shape or dtype is computed again. Entries are written
    to a temporary file and renamed, so a killed run leaves no partial entry.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from prernn_cli.choices import FeatureDtype
from prernn_cli.data.clips import Clip
from prernn_cli.data.dataset import ClipDataset
from prernn_cli.data.decoding import ClipReadError
from prernn_cli.data.frame_cache import FrameCache, clip_files, save_entry
from prernn_cli.data.modalities import read_clip_frames
from prernn_cli.data.preprocessing import resize_frames, to_tensor
from prernn_cli.data.sampling import Sampling, frames_needed
from prernn_cli.devices import autocast_context
from prernn_cli.errors import PrernnError, UserInputError
from prernn_cli.spec import InputSpec

CACHE_FORMAT = 1  # bump when the stored layout changes


# ---------------------------------------------------------------- what an entry holds


@dataclass(frozen=True)
class TrunkLayout:
    """The shapes of the trunk's outputs for one step; an entry row holds them flattened, one after the other."""

    shapes: tuple[tuple[int, ...], ...]

    @property
    def size(self) -> int:
        """``D``, the values of one step."""
        return sum(math.prod(shape) for shape in self.shapes)

    @classmethod
    def probe(cls, trunk: nn.Module, spec: InputSpec, device: torch.device) -> TrunkLayout:
        """The layout of ``trunk``'s outputs, from one step of zeros."""
        with torch.no_grad():
            outputs = trunk(torch.zeros((1, *spec.step_shape()), device=device))
        return cls(tuple(tuple(output.shape[1:]) for output in outputs))

    def flatten(self, outputs: Sequence[Tensor]) -> Tensor:
        """The trunk's outputs for ``n`` steps as one ``[n, D]`` float32 tensor."""
        return torch.cat([output.reshape(output.shape[0], -1).float() for output in outputs], dim=1)

    def split(self, features: Tensor) -> tuple[Tensor, ...]:
        """Stored rows ``[B, T, D]`` back into the trunk's outputs ``[B, T, *shape]``, float32."""
        sizes = [math.prod(shape) for shape in self.shapes]
        batch, steps = features.shape[:2]
        parts = features.float().split(sizes, dim=-1)
        return tuple(part.reshape(batch, steps, *shape) for part, shape in zip(parts, self.shapes))


@dataclass(frozen=True)
class View:
    """Augmented view ``index`` of every clip of a run seeded with ``seed``."""

    seed: int
    index: int
    translate: bool
    flip: bool

    def transform(self, clip_key: str) -> tuple[bool, random.Random | None]:
        """Whether this view of the clip is flipped, and the generator its translation crop is drawn from."""
        rng = random.Random(f"{self.seed}:{clip_key}:{self.index}")
        flipped = self.flip and rng.random() < 0.5
        return flipped, (rng if self.translate else None)


def view_transform(view: View | None, clip_key: str) -> tuple[bool, random.Random | None]:
    """A view's flip and crop generator; ``None`` is the centre view (no flip, centre crop)."""
    return (False, None) if view is None else view.transform(clip_key)


def precision(device: torch.device, amp: bool) -> str:
    """How the trunk computes on ``device``: bf16 autocast on CUDA with ``amp``, else float32."""
    return "bf16-autocast" if amp and device.type == "cuda" else "float32"


def trunk_identity(trunk: nn.Module, spec: InputSpec, compute: str) -> str:
    """A hash of what the trunk's outputs depend on: its code, its weights and buffers, the input spec, ``compute``."""
    digest = hashlib.sha256(repr((CACHE_FORMAT, spec.to_dict(), compute)).encode())
    code = getattr(trunk, "code", None)  # an fx.GraphModule's generated forward: the trunk's structure
    digest.update(str(code if code is not None else trunk).encode())
    for name, tensor in trunk.state_dict().items():
        value = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{value.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(value.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:32]


# ---------------------------------------------------------------- the cache


class TrunkCache:
    """Entries ``[S, D]`` of one trunk (``identity``, ``layout``), stored as ``dtype`` under ``root``."""

    def __init__(self, root: Path, identity: str, layout: TrunkLayout, dtype: FeatureDtype, snippet: int) -> None:
        self.root = Path(root)
        self.identity = identity
        self.layout = layout
        self.dtype = FeatureDtype(dtype)
        self.snippet = snippet
        self.root.mkdir(parents=True, exist_ok=True)
        self._keys: dict[Path, str] = {}  # per process: a clip is looked at (stat of every frame) once per run

    @classmethod
    def open(cls, root: Path, identity: str, layout: TrunkLayout, dtype: FeatureDtype, snippet: int) -> TrunkCache:
        """The cache in ``root``; a one-line :class:`UserInputError` when ``root`` cannot be made."""
        try:
            return cls(root, identity, layout, dtype, snippet)
        except OSError as error:
            raise UserInputError(
                f"--trunk-cache {root}: cannot create the folder ({error.strerror}); give a writable folder"
            ) from None

    def clip_key(self, clip: Path) -> str:
        """A hash of the clip's resolved path and its files' sizes and modification times."""
        clip = Path(clip)
        if clip not in self._keys:
            resolved = clip.resolve()
            files = clip_files(resolved)
            self._keys[clip] = hashlib.sha256(repr((str(resolved), files)).encode()).hexdigest()[:32]
        return self._keys[clip]

    def path_for(self, clip: Path, view: View | None) -> Path:
        """Where the entry of ``clip`` seen as ``view`` lives (whether or not it exists yet)."""
        shown = "centre" if view is None else (view.seed, view.index, view.translate, view.flip)
        name = repr((CACHE_FORMAT, self.clip_key(clip), self.identity, self.dtype.value, shown))
        return self.root / f"{hashlib.sha256(name.encode()).hexdigest()[:40]}.npy"

    def frames_of(self, entry: np.ndarray) -> int:
        """The clip's frame count, from its entry's rows (a row per snippet start)."""
        return entry.shape[0] + self.snippet - 1

    def read(self, clip: Path, view: View | None) -> np.ndarray | None:
        """The entry, memory-mapped; None when it is missing, unreadable, or not ``[S ≥ 1, D]`` of the dtype."""
        try:
            entry = np.load(self.path_for(clip, view), mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError):
            return None
        fits = (
            entry.dtype == np.dtype(self.dtype.value)
            and entry.ndim == 2
            and entry.shape[0] >= 1
            and entry.shape[1] == self.layout.size
        )
        return entry if fits else None

    def store(self, clip: Path, view: View | None, features: np.ndarray) -> None:
        """Write an entry (temporary file, then rename); a one-line error when the folder takes no more."""
        entry = self.path_for(clip, view)
        try:
            save_entry(entry, features)
        except OSError as error:
            raise PrernnError(
                f"trunk cache: cannot store the outputs of {clip} in {self.root} ({error.strerror}); "
                "free space there or give another --trunk-cache folder"
            ) from None


# ---------------------------------------------------------------- computing entries


@dataclass
class TrunkPass:
    """How the trunk runs: where, whether under autocast, and how many steps at a time (of one clip or several)."""

    trunk: nn.Module
    spec: InputSpec
    device: torch.device
    amp: bool
    chunk: int  # steps per trunk call: a training batch's B·T keeps memory as training's

    def steps(self, frames: np.ndarray, view: View | None, clip_key: str) -> Iterator[tuple[int, Tensor]]:
        """The steps of resized frames ``[N, H', W', C]`` uint8 seen as ``view``, ``chunk`` at a time: (first row, steps)."""
        snippet = self.spec.frames_per_step
        for low in range(0, frames.shape[0] - snippet + 1, self.chunk):
            high = min(frames.shape[0] - snippet + 1, low + self.chunk)
            flip, rng = view_transform(view, clip_key)  # drawn again per chunk: one crop for the whole clip
            tensor = to_tensor(frames[low : high + snippet - 1], self.spec, flip=flip, rng=rng)
            if snippet == 1:
                yield low, tensor.contiguous()
            elif self.spec.stacks_frames:  # flow on a 2D net: L frames of (x, y) stacked into 2L channels
                yield low, tensor.unfold(0, snippet, 1).permute(0, 4, 1, 2, 3).flatten(1, 2).contiguous()
            else:
                yield low, tensor.unfold(0, snippet, 1).permute(0, 1, 4, 2, 3).contiguous()

    def run(self, steps: Tensor, cache: TrunkCache) -> np.ndarray:
        """The trunk's outputs on ``steps``, flattened ``[n, D]`` in the cache's dtype."""
        self.trunk.eval()  # a frozen trunk's BatchNorm keeps its statistics, as in training
        with torch.no_grad(), autocast_context(self.device, self.amp):
            flat = cache.layout.flatten(self.trunk(steps.to(self.device)))
        stored = flat.to(torch.float16 if cache.dtype is FeatureDtype.FLOAT16 else torch.float32)
        if not bool(torch.isfinite(stored).all()):
            fix = (
                "store them as float32: --trunk-cache-dtype float32"
                if bool(torch.isfinite(flat).all())
                else "the model's weights give NaN or inf; check the model"
            )
            raise PrernnError(f"the trunk's outputs on a clip are not finite as {cache.dtype.value}; {fix}")
        return stored.cpu().numpy()


@dataclass
class _Entry:
    """An entry being computed: its rows so far."""

    clip: Path
    view: View | None
    rows: np.ndarray
    filled: int = 0


class _Batches:
    """Steps of several entries run through the trunk together (short clips fill a call); an entry is stored once whole."""

    def __init__(self, runner: TrunkPass, cache: TrunkCache) -> None:
        self.runner, self.cache = runner, cache
        self.pieces: list[tuple[_Entry, int, Tensor]] = []
        self.size = 0
        self.stored = 0

    def add(self, entry: _Entry, low: int, steps: Tensor) -> None:
        self.pieces.append((entry, low, steps))
        self.size += steps.shape[0]
        if self.size >= self.runner.chunk:
            self.flush()

    def flush(self) -> None:
        if not self.pieces:
            return
        outputs = self.runner.run(torch.cat([steps for _, _, steps in self.pieces]), self.cache)
        offset = 0
        for entry, low, steps in self.pieces:
            count = steps.shape[0]
            entry.rows[low : low + count] = outputs[offset : offset + count]
            offset += count
            entry.filled += count
            if entry.filled == entry.rows.shape[0]:
                self.cache.store(entry.clip, entry.view, entry.rows)
                self.stored += 1
        self.pieces, self.size = [], 0


def _as_is(item):
    return item


class _ResizedClips(Dataset):
    """Whole clips, decoded and resized (through the frame cache when given), in DataLoader workers."""

    def __init__(self, paths: list[Path], spec: InputSpec, frame_cache: FrameCache | None) -> None:
        self.paths, self.spec, self.frame_cache = paths, spec, frame_cache

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Path, np.ndarray | None, str | None]:
        path = self.paths[index]
        try:
            if self.frame_cache is not None:
                return path, np.array(self.frame_cache.frames(path, self._decode)), None
            return path, self._decode(path), None
        except ClipReadError as error:
            return path, None, str(error)

    def _decode(self, path: Path) -> np.ndarray:
        return resize_frames(read_clip_frames(path, self.spec)[0], self.spec)


@dataclass
class FillResult:
    """What :func:`fill` found: every clip's frame count, the clips it could not use and why, the entries."""

    frame_counts: dict[str, int] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    computed: int = 0
    read: int = 0


def fill(
    cache: TrunkCache,
    runner: TrunkPass,
    wanted: dict[Path, list[View | None]],
    steps: int,
    workers: int = 0,
    frame_cache: FrameCache | None = None,
) -> FillResult:
    """Compute the missing entries of ``wanted`` (each clip's views); clips shorter than ``steps`` steps get none."""
    result, todo = FillResult(), {}
    for path, views in wanted.items():
        missing = []
        for view in views:
            entry = cache.read(path, view)
            if entry is None:
                missing.append(view)
            else:
                result.frame_counts[str(path)] = cache.frames_of(entry)
                result.read += 1
        if missing:
            todo[path] = missing
    if not todo:
        return result
    snippet = runner.spec.frames_per_step
    clips = _ResizedClips(list(todo), runner.spec, frame_cache)
    # a generator of its own: the loader's seed is not drawn from the global RNG, which dropout in training uses
    loader = DataLoader(clips, batch_size=None, num_workers=workers, collate_fn=_as_is, generator=torch.Generator())
    batches = _Batches(runner, cache)
    for path, frames, error in loader:
        if error is None and frames.shape[0] < frames_needed(steps, snippet):
            error = (
                f"too short: {frames.shape[0]} frames, needs at least {frames_needed(steps, snippet)} "
                f"for {steps} steps of {snippet}"
            )
        if error is not None:
            result.failures[str(path)] = error
            continue
        result.frame_counts[str(path)] = frames.shape[0]
        for view in todo[path]:
            entry = _Entry(path, view, np.empty((frames.shape[0] - snippet + 1, cache.layout.size), cache.dtype.value))
            for low, chunk in runner.steps(frames, view, cache.clip_key(path)):
                batches.add(entry, low, chunk)
    batches.flush()
    result.computed = batches.stored
    return result


# ---------------------------------------------------------------- reading entries


@dataclass
class TrunkFeatureDataset(ClipDataset):
    """:class:`ClipDataset` read from a :class:`TrunkCache`: ``frames`` are the sampled steps' rows ``[T, D]``.

    The random draws, in this order: the steps (random sampling), the view (``views`` > 0).
    ``frame_counts`` and ``failures`` come from :func:`fill`.
    """

    trunk_cache: TrunkCache | None = None
    views: int = 0  # augmented views per clip; 0: the centre view only
    frame_counts: dict[str, int] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.trunk_cache is None:
            raise ValueError("a TrunkFeatureDataset reads a TrunkCache: give trunk_cache")

    def view(self, index: int) -> View:
        return View(self.seed, index, self.augment.translate, self.augment.flip)

    def clip_views(self) -> list[View | None]:
        """The entries each clip needs: its ``views`` augmented views, or the centre view."""
        if self.views and self.augment is not None:
            return [self.view(k) for k in range(self.views)]
        return [None]

    def _load(self, index: int, clip: Clip) -> dict:
        path = str(clip.path)
        if path not in self.frame_counts:
            raise ClipReadError(self.failures.get(path, "its trunk outputs were not computed"))
        num_frames = self.frame_counts[path]
        rng = self._rng(index) if self.augment is not None else None
        starts = self._starts(clip, num_frames, rng if self.sampling is Sampling.RANDOM else None)
        view = self.view(rng.randrange(self.views)) if rng is not None and self.views else None
        entry = self.trunk_cache.read(clip.path, view)
        if entry is None:
            where = self.trunk_cache.path_for(clip.path, view)
            raise ClipReadError(f"its trunk-cache entry {where} went missing or changed during the run; run again")
        flip, _ = view_transform(view, self.trunk_cache.clip_key(clip.path))
        item: dict = {"frames": torch.from_numpy(np.ascontiguousarray(entry[starts])), "index": index}
        item.update(self._target(clip, flip, starts, num_frames))
        return item


class TrunkFeatureModel(nn.Module):
    """A model read from stored trunk features: ``forward(features [B, T, D])`` is its ``forward_from_trunk``."""

    def __init__(self, model: nn.Module, layout: TrunkLayout) -> None:
        super().__init__()
        self.model = model
        self.layout = layout

    def forward(self, features: Tensor, state=None, gate_observer=None):
        return self.model.forward_from_trunk(self.layout.split(features), state, gate_observer)
