"""Streaming an exported model over a video with onnxruntime, carrying the recurrent state.

The online use case (the paper's hand-gesture streams): frames arrive one step at a
time, and the state of every recurrent layer is carried from one call to the next
(``h_n.i`` → ``h_0.i``). A step model (``--steps 1``) consumes one frame (one
snippet for a 3D backbone) per call; a chunk model consumes T steps per call, and
the last, short chunk is padded (its padded outputs are dropped — the model is
causal, so the real steps' outputs do not depend on them).

The execution provider is chosen by :func:`~prernn_cli.export.runtime.choose_provider`
(re-exported here with :class:`Provider` and :class:`ProviderChoice`). State goes
through onnxruntime IO binding: on a GPU it stays on the device between steps,
only the frames go in and the predictions come out.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from prernn_cli.data import read_clip_steps
from prernn_cli.export.runtime import Provider, ProviderChoice, choose_provider, open_provider_session
from prernn_cli.export.spec import OnnxExportSpec, read_export_spec
from prernn_cli.spec import HeadKind

logger = logging.getLogger(__name__)

__all__ = [
    "Provider",
    "ProviderChoice",
    "choose_provider",
    "OnnxStreamer",
    "StepPrediction",
    "StreamResult",
    "stream_clip",
]


# ---------------------------------------------------------------- the streamer


class OnnxStreamer:
    """An exported model with its state: call :meth:`run` on consecutive steps of one stream.

    Args:
        onnx_path: a file written by ``prernn export``.
        provider: see :func:`choose_provider`.
        io_binding: bind inputs/outputs (state kept on the provider's device); on by default.
        threads: onnxruntime intra-op threads (None: onnxruntime's default).
    """

    def __init__(
        self,
        onnx_path: Path,
        provider: Provider | str = Provider.AUTO,
        *,
        io_binding: bool = True,
        threads: int | None = None,
    ) -> None:
        self.path = Path(onnx_path)
        self.spec: OnnxExportSpec = read_export_spec(self.path)
        self.session, self.choice = open_provider_session(self.path, choose_provider(provider), threads=threads)
        logger.info("provider: %s (%s)", self.choice.provider.value, self.choice.reason)
        self.io_binding = io_binding
        self.batch = self.spec.batch or 1
        self.dtype = self.spec.precision.numpy_dtype
        self.step_shape = self.spec.model_spec.input.step_shape()
        self._sizes = dict(zip(self.spec.state_inputs, self.spec.hidden_sizes()))
        self.reset()

    @property
    def steps_per_call(self) -> int:
        return self.spec.steps

    def reset(self) -> None:
        """Start a new stream: zero state."""
        self._exhausted = False
        zeros = {name: np.zeros((self.batch, size), dtype=self.dtype) for name, size in self._sizes.items()}
        self._state = {name: self._to_device(value) for name, value in zeros.items()} if self.io_binding else zeros

    def _to_device(self, array: np.ndarray):
        import onnxruntime as ort

        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), self.choice.device, 0)

    def run_chunk(self, steps: np.ndarray) -> np.ndarray:
        """Outputs ``[n, K]`` for ``n`` ≤ T consecutive steps ``[n, *step]``, state carried.

        A chunk shorter than the model's T is padded and ends the stream (call
        :meth:`reset` before the next one).
        """
        if self._exhausted:
            raise RuntimeError("the stream ended with a short chunk; call reset() before streaming again")
        steps = np.asarray(steps)
        count = steps.shape[0]
        if not 1 <= count <= self.spec.steps or tuple(steps.shape[1:]) != self.step_shape:
            raise ValueError(
                f"expected 1..{self.spec.steps} steps of shape {list(self.step_shape)}, got {list(steps.shape)}"
            )
        if count < self.spec.steps:
            steps = np.concatenate([steps, np.repeat(steps[-1:], self.spec.steps - count, axis=0)])
            self._exhausted = True
        frames = np.ascontiguousarray(np.broadcast_to(steps.astype(self.dtype)[None], (self.batch, *steps.shape)))
        outputs = self._run_bound(frames) if self.io_binding else self._run_plain(frames)
        return outputs[0, :count].astype(np.float32)

    def _run_plain(self, frames: np.ndarray) -> np.ndarray:
        feeds = {"frames": frames, **self._state}
        values = self.session.run(self.spec.output_names, feeds)
        self._state = dict(zip(self.spec.state_inputs, values[1:]))
        return values[0]

    def _run_bound(self, frames: np.ndarray) -> np.ndarray:
        binding = self.session.io_binding()
        binding.bind_ortvalue_input("frames", self._to_device(frames))
        for name, value in self._state.items():
            binding.bind_ortvalue_input(name, value)
        binding.bind_output("outputs", "cpu")  # predictions come back to the host
        for name in self.spec.state_outputs:
            binding.bind_output(name, self.choice.device, 0)  # state stays on the device
        self.session.run_with_iobinding(binding)
        values = binding.get_outputs()
        self._state = dict(zip(self.spec.state_inputs, values[1:]))
        return values[0].numpy()

    def run(self, steps: np.ndarray) -> Iterator[np.ndarray]:
        """Outputs ``[n, K]`` per chunk of T steps, over all ``steps`` ``[N, *step]`` of one stream."""
        for begin in range(0, steps.shape[0], self.spec.steps):
            yield self.run_chunk(steps[begin : begin + self.spec.steps])


# ---------------------------------------------------------------- predictions


@dataclass(frozen=True)
class StepPrediction:
    """What the model says after one step."""

    step: int
    frames: tuple[int, int]  # first and last frame index the step covers
    index: int | None  # top class (classification)
    label: str | None
    score: float | None  # softmax probability of the top class
    values: tuple[float, ...] | None = None  # raw outputs (regression)

    def to_dict(self) -> dict:
        record = {"step": self.step, "frames": list(self.frames)}
        if self.values is not None:
            record["values"] = list(self.values)
        else:
            record.update({"class": self.label, "index": self.index, "score": self.score})
        return record


@dataclass(frozen=True)
class StreamResult:
    """What :func:`stream_clip` predicted, on which provider, and how fast."""

    path: str
    clip: str
    provider: ProviderChoice
    io_binding: bool
    steps_per_call: int
    num_frames: int
    dropped_frames: int
    seconds: float
    predictions: tuple[StepPrediction, ...] = field(default=())

    @property
    def ms_per_step(self) -> float:
        return 1000.0 * self.seconds / max(1, len(self.predictions))

    def to_dict(self) -> dict:
        return {
            "model": self.path,
            "clip": self.clip,
            "provider": self.provider.to_dict(),
            "io_binding": self.io_binding,
            "steps_per_call": self.steps_per_call,
            "num_frames": self.num_frames,
            "dropped_frames": self.dropped_frames,
            "ms_per_step": round(self.ms_per_step, 3),
            "predictions": [p.to_dict() for p in self.predictions],
        }


def _is_regression(spec: OnnxExportSpec) -> bool:
    model_spec = spec.model_spec
    return model_spec.task == "regress" or (model_spec.task is None and model_spec.head is HeadKind.REGRESS)


def _predict(spec: OnnxExportSpec, step: int, snippet: int, output: np.ndarray) -> StepPrediction:
    frames = (step * snippet, step * snippet + snippet - 1)
    if _is_regression(spec):
        return StepPrediction(step, frames, None, None, None, tuple(float(v) for v in output))
    logits = output.astype(np.float64)
    probabilities = np.exp(logits - logits.max())
    probabilities /= probabilities.sum()
    index = int(np.argmax(logits))
    names = spec.model_spec.class_names
    label = names[index] if names and index < len(names) else str(index)
    return StepPrediction(step, frames, index, label, float(probabilities[index]))


def stream_clip(
    onnx_path: Path,
    clip: Path,
    provider: Provider | str = Provider.AUTO,
    *,
    resize: bool = False,
    io_binding: bool = True,
    threads: int | None = None,
) -> StreamResult:
    """Run ``clip`` through the exported model step by step (chunk by chunk), state carried.

    Raises:
        DataError: the clip cannot be read or does not fit the model (says what it expects).
        UserInputError: not a prernn ONNX file, or an unusable provider.
    """
    spec = read_export_spec(Path(onnx_path))
    steps, count = read_clip_steps(Path(clip), spec.model_spec.input, resize=resize)
    streamer = OnnxStreamer(Path(onnx_path), provider, io_binding=io_binding, threads=threads)
    snippet = spec.model_spec.input.frames_per_step  # frames one step consumes: a 3D snippet or a flow stack
    predictions: list[StepPrediction] = []
    started = time.perf_counter()
    for chunk in streamer.run(steps):
        for output in chunk:
            predictions.append(_predict(spec, len(predictions), snippet, output))
    seconds = time.perf_counter() - started
    return StreamResult(
        path=str(onnx_path),
        clip=str(clip),
        provider=streamer.choice,
        io_binding=io_binding,
        steps_per_call=spec.steps,
        num_frames=count,
        dropped_frames=count - steps.shape[0] * snippet,
        seconds=seconds,
        predictions=tuple(predictions),
    )
