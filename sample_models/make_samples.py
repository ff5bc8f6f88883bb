"""Train the sample nets on real handwritten digits and build the motion-direction clips.

Everything here comes from scikit-learn's bundled handwritten digits
(``sklearn.datasets.load_digits``: 1797 real 8×8 scans shipped inside the package,
nothing is downloaded). Run from the repository root::

    .venv/bin/python sample_models/make_samples.py

It writes, next to this file:

* ``digit_vgg.pt``, ``digit_resnet.pt``, ``digit_c3d.pt`` — plain state_dicts of
  :mod:`prernn_cli.architectures.samples` nets trained to classify the digit;
* ``clips/{train,val}/{left,right}/<clip>/frame_0000.png …`` — 16-frame clips of one
  digit moving horizontally; the label is the direction of motion, so it needs
  temporal context. Every ``left`` clip is the time-reversed twin of a ``right`` clip;
* ``clips_mp4/…/<clip>.mp4`` — the same clips, losslessly encoded (libx264rgb, crf 0);
* ``results.json`` and ``README.md`` — held-out accuracies and the SPEC §6 check that
  an order-blind baseline sits at chance on the clips while an order-aware one does not.

The run is seeded and uses deterministic algorithms on 2 CPU threads, so it gives
the same numbers each time on a given machine (float results can differ across CPUs).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import Tensor, nn

from prernn_cli.architectures.samples import SAMPLE_MEAN, SAMPLE_STD, DigitC3D, DigitResNet, DigitVGG
from prernn_cli.files import atomic_path

SEED = 0
HERE = Path(__file__).resolve().parent
CANVAS = 32  # frames are CANVAS × CANVAS RGB
GLYPH = 16  # digits are upscaled from 8×8 to GLYPH × GLYPH
SNIPPET = 4  # frames per DigitC3D snippet
CLIP_FRAMES = 16  # frames per motion clip
TRAIN_PAIRS = 80  # right clips (and as many reversed left twins) in the training split
VAL_PAIRS = 20
CLASSES = ("left", "right")
MP4_FPS = 16
THREADS = 2
BATCH = 32


# ----------------------------------------------------------------------------- digits


@dataclass(frozen=True)
class DigitSplit:
    """Glyphs (uint8 ``[N, GLYPH, GLYPH]``) and labels of one split of the digits."""

    glyphs: np.ndarray
    labels: np.ndarray


def load_digit_splits(seed: int = SEED) -> tuple[DigitSplit, DigitSplit]:
    """The bundled digits as 16×16 uint8 glyphs, split 80/20 (stratified, seeded) into train and held-out."""
    digits = load_digits()
    grey = np.rint(digits.images / 16.0 * 255.0).astype(np.uint8)
    glyphs = np.stack([np.asarray(Image.fromarray(g).resize((GLYPH, GLYPH), Image.Resampling.BILINEAR)) for g in grey])
    labels = digits.target.astype(np.int64)
    train_idx, held_idx = train_test_split(np.arange(len(labels)), test_size=0.2, stratify=labels, random_state=seed)
    return DigitSplit(glyphs[train_idx], labels[train_idx]), DigitSplit(glyphs[held_idx], labels[held_idx])


def paste(glyph: np.ndarray, x: int, y: int) -> np.ndarray:
    """A black ``CANVAS × CANVAS × 3`` uint8 frame with ``glyph`` (grey, replicated to RGB) at column x, row y."""
    frame = np.zeros((CANVAS, CANVAS, 3), dtype=np.uint8)
    frame[y : y + GLYPH, x : x + GLYPH, :] = glyph[:, :, None]
    return frame


def to_tensor(frames: np.ndarray) -> Tensor:
    """uint8 frames ``[..., H, W, 3]`` → normalised float ``[..., 3, H, W]`` as the sample nets expect."""
    x = torch.from_numpy(frames).float().div(255.0).movedim(-1, -3)
    mean = torch.tensor(SAMPLE_MEAN).view(3, 1, 1)
    std = torch.tensor(SAMPLE_STD).view(3, 1, 1)
    return (x - mean) / std


def render_images(split: DigitSplit, rng: np.random.Generator) -> np.ndarray:
    """Each glyph pasted at a random position: uint8 ``[N, CANVAS, CANVAS, 3]``."""
    span = CANVAS - GLYPH + 1
    xs, ys = rng.integers(0, span, size=len(split.glyphs)), rng.integers(0, span, size=len(split.glyphs))
    return np.stack([paste(g, int(x), int(y)) for g, x, y in zip(split.glyphs, xs, ys)])


def _start_for_step(step: int, steps: int, rng: np.random.Generator) -> int:
    low, high = max(0, -step * steps), min(CANVAS - GLYPH, CANVAS - GLYPH - step * steps)
    return int(rng.integers(low, high + 1))


def render_snippets(split: DigitSplit, rng: np.random.Generator, max_step: int = 3) -> np.ndarray:
    """Each glyph moving by a random step (≤ max_step px per axis) per frame: uint8 ``[N, SNIPPET, H, W, 3]``."""
    snippets = []
    for glyph in split.glyphs:
        dx, dy = (int(v) for v in rng.integers(-max_step, max_step + 1, size=2))
        x0, y0 = _start_for_step(dx, SNIPPET - 1, rng), _start_for_step(dy, SNIPPET - 1, rng)
        snippets.append(np.stack([paste(glyph, x0 + t * dx, y0 + t * dy) for t in range(SNIPPET)]))
    return np.stack(snippets)


def snippets_to_tensor(snippets: np.ndarray) -> Tensor:
    """uint8 ``[N, L, H, W, 3]`` → normalised ``[N, 3, L, H, W]`` (DigitC3D's layout)."""
    return to_tensor(snippets).transpose(1, 2)


# ----------------------------------------------------------------------------- training


@dataclass(frozen=True)
class NetRecipe:
    """How to train one sample net: its class, file, input renderer, epochs and learning rate."""

    name: str
    factory: Callable[[], nn.Module]
    filename: str
    render: Callable[[DigitSplit, np.random.Generator], Tensor]
    epochs: int
    lr: float


def _images(split: DigitSplit, rng: np.random.Generator) -> Tensor:
    return to_tensor(render_images(split, rng))


def _snippets(split: DigitSplit, rng: np.random.Generator) -> Tensor:
    return snippets_to_tensor(render_snippets(split, rng))


RECIPES: tuple[NetRecipe, ...] = (
    NetRecipe("DigitVGG", DigitVGG, "digit_vgg.pt", _images, epochs=24, lr=1e-3),
    NetRecipe("DigitResNet", DigitResNet, "digit_resnet.pt", _images, epochs=4, lr=2e-3),
    NetRecipe("DigitC3D", DigitC3D, "digit_c3d.pt", _snippets, epochs=10, lr=1e-3),
)


@torch.no_grad()
def accuracy(model: nn.Module, inputs: Tensor, labels: np.ndarray, batch_size: int = 256) -> float:
    """Top-1 accuracy of ``model`` (put in eval mode) on ``inputs``."""
    model.eval()
    predictions = torch.cat([model(inputs[i : i + batch_size]).argmax(1) for i in range(0, len(inputs), batch_size)])
    return float((predictions.numpy() == labels).mean())


def train_net(recipe: NetRecipe, train: DigitSplit, held_out: DigitSplit, seed: int = SEED) -> tuple[nn.Module, float]:
    """Train one net with Adam (fresh random placements every epoch); return it and its held-out accuracy."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = recipe.factory()
    optimizer = torch.optim.Adam(model.parameters(), lr=recipe.lr)
    batches_per_epoch = -(-len(train.labels) // BATCH)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=recipe.lr, total_steps=recipe.epochs * batches_per_epoch
    )
    labels = torch.from_numpy(train.labels)
    for _ in range(recipe.epochs):
        model.train()
        inputs = recipe.render(train, rng)
        order = torch.from_numpy(rng.permutation(len(labels)))
        for start in range(0, len(order), BATCH):
            batch = order[start : start + BATCH]
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(inputs[batch]), labels[batch])
            loss.backward()
            optimizer.step()
            scheduler.step()
    held_inputs = recipe.render(held_out, np.random.default_rng(seed + 1))
    return model, accuracy(model, held_inputs, held_out.labels)


def save_state_dict(model: nn.Module, path: Path) -> None:
    """``torch.save(model.state_dict())`` written atomically."""
    with atomic_path(path) as tmp:
        torch.save(model.state_dict(), tmp)


# ----------------------------------------------------------------------------- clips


@dataclass(frozen=True)
class Clip:
    """One 16-frame clip: uint8 frames ``[T, H, W, 3]``, its class and its id."""

    clip_id: str
    label: str
    frames: np.ndarray


def right_clip(glyph: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``glyph`` moving left → right at a random row, speed (0.5–1 px/frame) and start, always fully in frame."""
    speed = rng.uniform(0.5, 1.0)
    travel = speed * (CLIP_FRAMES - 1)
    x0 = rng.uniform(0.0, CANVAS - GLYPH - travel)
    y = int(rng.integers(0, CANVAS - GLYPH + 1))
    return np.stack([paste(glyph, int(np.rint(x0 + speed * t)), y) for t in range(CLIP_FRAMES)])


def make_clips(split: DigitSplit, pairs: int, rng: np.random.Generator) -> list[Clip]:
    """``pairs`` right clips of distinct digits (10 classes balanced) and their time-reversed left twins."""
    chosen = []
    for index in range(pairs):
        candidates = np.flatnonzero(split.labels == index % 10)
        chosen.append(int(rng.choice(np.setdiff1d(candidates, chosen))))
    clips = []
    for pair, digit in enumerate(chosen):
        frames = right_clip(split.glyphs[digit], rng)
        clips.append(Clip(f"pair{pair:03d}_right", "right", frames))
        clips.append(Clip(f"pair{pair:03d}_left", "left", frames[::-1].copy()))
    return clips


def encode_mp4(frames: np.ndarray, path: Path | io.BytesIO, lossless: bool = True, crf: int = 0) -> None:
    """Encode uint8 RGB frames as H.264 in mp4: libx264rgb (RGB, exact at crf 0), or libx264 yuv420p when lossy."""
    with av.open(path, "w", format="mp4") as container:
        stream = container.add_stream("libx264rgb" if lossless else "libx264", rate=MP4_FPS)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "rgb24" if lossless else "yuv420p"
        stream.options = {"crf": str(crf)}
        stream.codec_context.thread_count = 1  # byte-reproducible output
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def decode_mp4(path: Path | io.BytesIO) -> np.ndarray:
    """All frames of a video as uint8 RGB ``[T, H, W, 3]``."""
    with av.open(path) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def read_png_clip(folder: Path) -> np.ndarray:
    """The frames of a PNG frame folder, in name order, as uint8 RGB ``[T, H, W, 3]``."""
    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in sorted(folder.glob("frame_*.png"))])


def _replace_tree(built: Path, target: Path) -> None:
    """Move a finished folder over ``target`` (the old one is removed only after the swap)."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(built, target)
    if old is not None:
        shutil.rmtree(old)


def write_clips(splits: dict[str, list[Clip]], out_dir: Path) -> None:
    """Write ``clips/`` (PNG frame folders) and ``clips_mp4/`` (lossless mp4) under ``out_dir``, each atomically."""
    png_tmp = Path(tempfile.mkdtemp(prefix=".clips.", dir=out_dir))
    mp4_tmp = Path(tempfile.mkdtemp(prefix=".clips_mp4.", dir=out_dir))
    png_tmp.chmod(0o755)  # mkdtemp makes them private
    mp4_tmp.chmod(0o755)
    try:
        for split, clips in splits.items():
            for clip in clips:
                folder = png_tmp / split / clip.label / clip.clip_id
                folder.mkdir(parents=True)
                for t, frame in enumerate(clip.frames):
                    Image.fromarray(frame).save(folder / f"frame_{t:04d}.png", optimize=True)
                video = mp4_tmp / split / clip.label / f"{clip.clip_id}.mp4"
                video.parent.mkdir(parents=True, exist_ok=True)
                encode_mp4(clip.frames, video)
        _replace_tree(png_tmp, out_dir / "clips")
        _replace_tree(mp4_tmp, out_dir / "clips_mp4")
    finally:
        shutil.rmtree(png_tmp, ignore_errors=True)
        shutil.rmtree(mp4_tmp, ignore_errors=True)


def read_clip_tree(root: Path, reader: Callable[[Path], np.ndarray], pattern: str) -> dict[str, list[Clip]]:
    """Read back ``root/{train,val}/{left,right}/<pattern>`` as clips, sorted by id."""
    splits: dict[str, list[Clip]] = {}
    for split in ("train", "val"):
        splits[split] = [
            Clip(path.name.removesuffix(".mp4"), label, reader(path))
            for label in CLASSES
            for path in sorted((root / split / label).glob(pattern))
        ]
    return splits


# ----------------------------------------------------------------------------- SPEC §6 baselines


def raw_pixels(frames: np.ndarray) -> np.ndarray:
    """Per-frame features: the normalised pixels, flattened (``[T, 3·H·W]``)."""
    return to_tensor(frames).flatten(1).numpy()


def fc7_features(model: DigitVGG) -> Callable[[np.ndarray], np.ndarray]:
    """Per-frame features: the trained DigitVGG's fc7 activations (after ReLU, ``[T, 256]``)."""

    @torch.no_grad()
    def extract(frames: np.ndarray) -> np.ndarray:
        model.eval()
        x = torch.flatten(model.features(to_tensor(frames)), 1)
        return model.classifier[:5](x).numpy()

    return extract


def order_blind(features: np.ndarray) -> np.ndarray:
    """Mean over the clip's frames: the same vector for a clip and its time-reversed twin."""
    return features.mean(axis=0)


def order_aware(features: np.ndarray) -> np.ndarray:
    """Last frame minus first frame: flips sign when the clip is reversed."""
    return features[-1] - features[0]


def linear_probe(
    splits: dict[str, list[Clip]],
    per_frame: Callable[[np.ndarray], np.ndarray],
    pool: Callable[[np.ndarray], np.ndarray],
) -> dict[str, float]:
    """Train a standardised logistic regression on train clips; its accuracy on train and val clips."""
    data = {}
    for split, clips in splits.items():
        data[split] = (
            np.stack([pool(per_frame(clip.frames)) for clip in clips]),
            np.array([CLASSES.index(clip.label) for clip in clips]),
        )
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    probe.fit(*data["train"])
    return {split: round(float(probe.score(*data[split])), 4) for split in ("train", "val")}


def baselines(splits: dict[str, list[Clip]], vgg: DigitVGG) -> dict[str, dict[str, float]]:
    """Order-blind (mean) and order-aware (last − first) probes on raw pixels and DigitVGG fc7 features."""
    results = {}
    for feature_name, per_frame in (("raw_pixels", raw_pixels), ("vgg_fc7", fc7_features(vgg))):
        for pool_name, pool in (("order_blind_mean", order_blind), ("order_aware_last_minus_first", order_aware)):
            results[f"{pool_name}/{feature_name}"] = linear_probe(splits, per_frame, pool)
    return results


def lossy_reencoded(splits: dict[str, list[Clip]], crf: int = 35) -> dict[str, list[Clip]]:
    """The clips after a lossy H.264 round trip (yuv420p), each clip encoded on its own as a user would."""
    out = {}
    for split, clips in splits.items():
        reencoded = []
        for clip in clips:
            buffer = io.BytesIO()
            encode_mp4(clip.frames, buffer, lossless=False, crf=crf)
            buffer.seek(0)
            reencoded.append(Clip(clip.clip_id, clip.label, decode_mp4(buffer)))
        out[split] = reencoded
    return out


def max_difference(a: dict[str, list[Clip]], b: dict[str, list[Clip]]) -> int:
    """Largest absolute pixel difference between two clip sets with the same clips."""
    worst = 0
    for split in a:
        for x, y in zip(a[split], b[split], strict=True):
            if x.clip_id != y.clip_id or x.frames.shape != y.frames.shape:
                raise ValueError(f"clip {x.clip_id} and {y.clip_id} do not match")
            worst = max(worst, int(np.abs(x.frames.astype(np.int16) - y.frames.astype(np.int16)).max()))
    return worst


# ----------------------------------------------------------------------------- report


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def write_readme(results: dict, path: Path, runtime_minutes: int) -> None:
    """``sample_models/README.md`` from the numbers in ``results`` (the ones the script printed)."""
    nets = results["held_out_accuracy"]
    rows = "\n".join(
        f"| `{info['file']}` | `{name}` | {info['input']} | {info['train_digits']} | {info['held_out_digits']} "
        f"| {_pct(info['accuracy'])} |"
        for name, info in nets.items()
    )
    probe_rows = []
    for source, probes in results["baselines"].items():
        for probe, scores in probes.items():
            pool, feature = probe.split("/")
            probe_rows.append(f"| {source} | {pool} | {feature} | {_pct(scores['train'])} | {_pct(scores['val'])} |")
    clips = results["clips"]
    text = f"""# Sample models and clips

Real, small, CPU-friendly stand-ins for the paper's backbones, trained on real
handwritten digits: scikit-learn's bundled `load_digits` (1797 8×8 scans that ship
inside the package — nothing is downloaded). Each digit is upscaled to 16×16 and
pasted on a black 32×32 RGB canvas (grey replicated to 3 channels). The nets expect
pixels in [0, 1] normalised with mean = std = (0.5, 0.5, 0.5).

Regenerate everything (deterministic, CPU, about {runtime_minutes} minutes on 2 cores):

    .venv/bin/python sample_models/make_samples.py

## Files

| path | what it is |
|---|---|
| `make_samples.py` | the script that makes everything below |
| `digit_vgg.pt` | state_dict of `prernn_cli.architectures.samples.DigitVGG` (input `[N,3,32,32]`); fc6 = `classifier.0`, fc7 = `classifier.3` as in `vgg16` |
| `digit_resnet.pt` | state_dict of `DigitResNet` (input `[N,3,32,32]`); last block `layer3.1`: conv2 → bn2 → + shortcut → relu → avgpool ("res5c") |
| `digit_c3d.pt` | state_dict of `DigitC3D` (input `[N,3,4,32,32]`, a 4-frame snippet C×L×H×W); `fc6`, `fc7`, `fc8` as in the C3D port |
| `clips/{{train,val}}/{{left,right}}/<clip>/frame_0000.png …` | motion clips as PNG frame folders: {clips["frames"]} frames of 32×32 RGB |
| `clips_mp4/{{train,val}}/{{left,right}}/<clip>.mp4` | the same clips as lossless H.264 (`libx264rgb`, `crf 0`, `rgb24`, {MP4_FPS} fps) |
| `results.json` | every number below, as the script printed it |

Load a checkpoint: `model = DigitVGG(); model.load_state_dict(torch.load("sample_models/digit_vgg.pt", weights_only=True))`.

## Held-out accuracy (10 digit classes)

Split: 80/20, stratified by digit, `random_state={SEED}`. 2D nets see each digit at a
random position; DigitC3D sees 4-frame snippets of a digit moving by a random step of
up to 3 px per axis per frame.

| file | class | input | train digits | held-out digits | held-out accuracy |
|---|---|---|---|---|---|
{rows}

## Clips: direction of motion (`left` / `right`)

{clips["train"]} training clips ({clips["train"] // 2} per class) from training digits, {clips["val"]} validation
clips ({clips["val"] // 2} per class) from held-out digits. In each `right` clip one digit moves left to right at a
random row, speed (0.5–1 px/frame) and start, always fully in frame; clip `pairNNN_left` is exactly
`pairNNN_right` played backwards. The label is only in the order of the frames, so a recurrent
model has to use temporal context.

The mp4 files decode to the PNG frames with a maximum difference of **{clips["mp4_max_abs_difference"]}**
grey levels (lossless). Note that `libx264rgb` writes an RGB H.264 stream (High 4:4:4 Predictive
profile): FFmpeg/PyAV, VLC and mpv play it, many browsers do not.

## SPEC §6: order-blind baselines sit at chance

A linear probe (standardised logistic regression) is trained on the training clips and scored
on the validation clips. *order_blind_mean*: the mean of per-frame features over the clip;
*order_aware_last_minus_first*: features of the last frame minus those of the first. Features are
the normalised raw pixels or DigitVGG's fc7 activations. Because every clip has its reversed twin,
the two twins have the same order-blind vector, so no order-blind model can beat 50%, even on the
training clips.

| frames from | pooling | features | train acc | val acc |
|---|---|---|---|---|
{chr(10).join(probe_rows)}

The last block of rows shows the pitfall SPEC §6 warns about: when each clip is re-encoded on its own
with an ordinary lossy inter-frame codec (libx264, yuv420p, crf {results["lossy_crf"]}; not committed), the codec's
artifacts differ between a clip and its reversed twin (the first frame is the intra-coded one), and
the "order-blind" mean is no longer blind to order.
"""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(data: dict, path: Path) -> None:
    """Pretty JSON, written atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")


def _dataset_counts(splits: Iterable[DigitSplit]) -> Sequence[int]:
    return [len(s.labels) for s in splits]


def main(out_dir: Path = HERE) -> dict:
    """Make every sample file under ``out_dir``; print and return the numbers."""
    started = time.perf_counter()
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(THREADS)

    train, held_out = load_digit_splits()
    n_train, n_held = _dataset_counts((train, held_out))
    print(f"digits: {n_train} train, {n_held} held out")

    nets: dict[str, dict] = {}
    trained: dict[str, nn.Module] = {}
    for recipe in RECIPES:
        t0 = time.perf_counter()
        model, acc = train_net(recipe, train, held_out)
        save_state_dict(model, out_dir / recipe.filename)
        trained[recipe.name] = model
        shape = "[N,3,4,32,32]" if recipe.name == "DigitC3D" else "[N,3,32,32]"
        nets[recipe.name] = {
            "file": recipe.filename,
            "input": shape,
            "epochs": recipe.epochs,
            "train_digits": n_train,
            "held_out_digits": n_held,
            "accuracy": round(acc, 4),
        }
        print(
            f"{recipe.name}: held-out accuracy {_pct(acc)} ({recipe.epochs} epochs, {time.perf_counter() - t0:.0f} s)"
        )

    rng = np.random.default_rng(SEED + 2)
    clips = {"train": make_clips(train, TRAIN_PAIRS, rng), "val": make_clips(held_out, VAL_PAIRS, rng)}
    write_clips(clips, out_dir)
    png = read_clip_tree(out_dir / "clips", read_png_clip, "pair*")
    mp4 = read_clip_tree(out_dir / "clips_mp4", decode_mp4, "*.mp4")
    in_tree_order = {split: sorted(c, key=lambda clip: (clip.label, clip.clip_id)) for split, c in clips.items()}
    png_exact = max_difference(in_tree_order, png)
    mp4_diff = max_difference(png, mp4)
    print(
        f"clips: {len(png['train'])} train, {len(png['val'])} val; PNG round trip max diff {png_exact}, "
        f"mp4 vs PNG max diff {mp4_diff}"
    )

    vgg = trained["DigitVGG"]
    lossy_crf = 35
    probe_results = {
        "png": baselines(png, vgg),
        "mp4_lossless": baselines(mp4, vgg),
        f"mp4_lossy_crf{lossy_crf}": baselines(lossy_reencoded(png, lossy_crf), vgg),
    }
    for source, probes in probe_results.items():
        for probe, scores in probes.items():
            print(f"{source:>16} {probe:<40} train {_pct(scores['train']):>6}  val {_pct(scores['val']):>6}")

    runtime = time.perf_counter() - started
    results = {
        "seed": SEED,
        "held_out_accuracy": nets,
        "clips": {
            "train": len(png["train"]),
            "val": len(png["val"]),
            "frames": CLIP_FRAMES,
            "size": [CANVAS, CANVAS, 3],
            "mp4_max_abs_difference": mp4_diff,
        },
        "baselines": probe_results,
        "lossy_crf": lossy_crf,
    }
    write_json(results, out_dir / "results.json")
    write_readme(results, out_dir / "README.md", max(1, round(runtime / 60)))
    print(f"done in {runtime:.0f} s")
    return results


if __name__ == "__main__":
    main()
