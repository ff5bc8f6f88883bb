"""Streaming an exported model over a video with onnxruntime, carrying the recurrent state.

The online use case (the paper's hand-gesture streams): frames arrive one step at a
time, and the state of every recurrent layer is carried from one call to the next
(``h_n.i`` → ``h_0.i``). A step model (``--steps 1``) consumes one frame (one
snippet for a 3D backbone) per call; a chunk model consumes T steps per call, and
the last, short chunk is padded (its padded outputs are dropped — the model is
causal, so the real steps' outputs do not depend on them).

Provider choice (:func:`choose_provider`): ``auto`` takes CUDA only when a GPU is
really usable (``torch.cuda.is_available()`` *and* onnxruntime has the CUDA
provider — onnxruntime-gpu lists it even on machines without a GPU), otherwise
CPU, and says which and why. State goes through onnxruntime IO binding: on a GPU
it stays on the device between steps, only the frames go in and the predictions
come out.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Iterator

import numpy as np

from prernn_cli.data import read_clip_steps
from prernn_cli.errors import PrernnError, UserInputError
from prernn_cli.export import OnnxExportSpec, read_export_spec
from prernn_cli.spec import FrameKind, HeadKind

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

_ORT_NAMES = {
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "cpu": "CPUExecutionProvider",
}


class Provider(str, Enum):
    """Which onnxruntime execution provider runs the model."""

    AUTO = "auto"
    CUDA = "cuda"
    TENSORRT = "tensorrt"
    CPU = "cpu"


@dataclass(frozen=True)
class ProviderChoice:
    """The provider chosen for a request, and why."""

    requested: Provider
    provider: Provider  # never AUTO
    providers: tuple[str, ...]  # onnxruntime's names, in priority order
    device: str  # where state lives between steps: "cuda" or "cpu"
    reason: str

    def to_dict(self) -> dict:
        return {"requested": self.requested.value, "provider": self.provider.value, "providers": list(self.providers), "device": self.device, "reason": self.reason}


def _gpu_status() -> tuple[bool, str]:
    """Whether a GPU is really usable, and the reason when it is not."""
    import onnxruntime as ort
    import torch

    available = ort.get_available_providers()
    if not torch.cuda.is_available():
        return False, "no usable GPU (torch.cuda.is_available() is False)"
    if _ORT_NAMES["cuda"] not in available:
        return False, f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (install onnxruntime-gpu)"
    return True, f"GPU {torch.cuda.get_device_name(0)} is usable and onnxruntime has CUDAExecutionProvider"


def choose_provider(requested: Provider | str = Provider.AUTO) -> ProviderChoice:
    """Pick the execution provider for ``requested``; an explicit GPU request without a GPU is an error.

    Raises:
        UserInputError: ``cuda``/``tensorrt`` asked for where no GPU (or provider) is usable.
    """
    import onnxruntime as ort

    requested = Provider(requested)
    cpu = ProviderChoice(requested, Provider.CPU, (_ORT_NAMES["cpu"],), "cpu", "")
    if requested is Provider.CPU:
        return ProviderChoice(requested, Provider.CPU, cpu.providers, "cpu", "CPU, as requested")
    usable, why = _gpu_status()
    if requested is Provider.AUTO:
        if usable:
            return ProviderChoice(requested, Provider.CUDA, (_ORT_NAMES["cuda"], _ORT_NAMES["cpu"]), "cuda", f"CUDA: {why}")
        return ProviderChoice(requested, Provider.CPU, cpu.providers, "cpu", f"CPU: {why}")
    if not usable:
        raise UserInputError(f"--provider {requested.value} needs a usable GPU, but {why}; use --provider cpu (or auto)")
    if requested is Provider.TENSORRT:
        if _ORT_NAMES["tensorrt"] not in ort.get_available_providers():
            raise UserInputError("--provider tensorrt: this onnxruntime has no TensorrtExecutionProvider; use --provider cuda")
        names = (_ORT_NAMES["tensorrt"], _ORT_NAMES["cuda"], _ORT_NAMES["cpu"])
        return ProviderChoice(requested, Provider.TENSORRT, names, "cuda", f"TensorRT, as requested: {why}")
    return ProviderChoice(requested, Provider.CUDA, (_ORT_NAMES["cuda"], _ORT_NAMES["cpu"]), "cuda", f"CUDA, as requested: {why}")


# ---------------------------------------------------------------- the streamer


class OnnxStreamer:
    """An exported model with its state: call :meth:`run` on consecutive steps of one stream.

    Args:
        onnx_path: a file written by ``prernn export``.
        provider: see :func:`choose_provider`.
        io_binding: bind inputs/outputs (state kept on the provider's device); on by default.
        threads: onnxruntime intra-op threads (None: onnxruntime's default).
    """

    def __init__(self, onnx_path: Path, provider: Provider | str = Provider.AUTO, *, io_binding: bool = True, threads: int | None = None) -> None:
        import onnxruntime as ort

        self.path = Path(onnx_path)
        self.spec: OnnxExportSpec = read_export_spec(self.path)
        self.choice = choose_provider(provider)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=list(self.choice.providers))
        except Exception as error:  # noqa: BLE001 - onnxruntime's errors are untyped
            raise PrernnError(f"onnxruntime cannot load {self.path} with {self.choice.providers[0]}: {str(error).splitlines()[0][:300]}") from None
        active = self.session.get_providers()[0]
        if active != self.choice.providers[0]:
            # onnxruntime falls back silently when a GPU provider's libraries do not load
            if self.choice.requested is not Provider.AUTO:
                raise PrernnError(f"onnxruntime could not start {self.choice.providers[0]} (it fell back to {active}); check the CUDA/cuDNN/TensorRT libraries or use --provider cpu")
            self.choice = ProviderChoice(self.choice.requested, Provider.CPU, (active,), "cpu", f"CPU: {self.choice.providers[0]} failed to start in onnxruntime")
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
            raise ValueError(f"expected 1..{self.spec.steps} steps of shape {list(self.step_shape)}, got {list(steps.shape)}")
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
    snippet = steps.shape[2] if spec.model_spec.input.frame_kind is FrameKind.SNIPPET else 1
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
