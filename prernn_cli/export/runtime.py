"""onnxruntime: opening a session, and choosing the execution provider it runs on.

Every session prernn opens (validation, streaming, the opset probe) goes through
:func:`open_session`, so log level, threads and providers are set in one place.

Provider choice (:func:`choose_provider`): ``auto`` takes CUDA only when a GPU is
really usable (``torch.cuda.is_available()`` *and* onnxruntime has the CUDA
provider — onnxruntime-gpu lists it even on machines without a GPU), otherwise
CPU, and says which and why. :func:`open_provider_session` then checks that
onnxruntime really started the provider asked for.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prernn_cli.choices import Provider
from prernn_cli.errors import PrernnError, UserInputError

__all__ = [
    "LOG_ERRORS",
    "LOG_FATAL",
    "Provider",
    "ProviderChoice",
    "choose_provider",
    "error_line",
    "open_provider_session",
    "open_session",
    "runtime_accepts_opset",
]

#: onnxruntime log severities: 3 logs errors only, 4 only fatal errors.
LOG_ERRORS = 3
LOG_FATAL = 4

# onnxruntime's telemetry writes a device id and an event database (~/.cache/Microsoft/DeveloperTools/.onnxruntime,
# $TMPDIR/.ses) when it is imported, unless this is set first; every import of onnxruntime in prernn follows this one.
# A user's own setting wins.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

_ORT_NAMES = {
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "cpu": "CPUExecutionProvider",
}


def open_session(
    model: Path | str | bytes,
    providers: Sequence[str] = (_ORT_NAMES["cpu"],),
    *,
    threads: int | None = None,
    log_level: int = LOG_ERRORS,
) -> Any:
    """An ``onnxruntime.InferenceSession`` on ``model`` (a path, or a serialized model).

    Args:
        providers: onnxruntime's provider names, in priority order (default: CPU only).
        threads: intra-op threads (None: onnxruntime's default).
        log_level: onnxruntime's log severity (:data:`LOG_ERRORS` keeps warnings out).

    onnxruntime's own (untyped) errors propagate; callers turn them into one-line
    messages with :func:`error_line`.
    """
    import onnxruntime as ort

    ort.disable_telemetry_events()  # no events from this session, also where onnxruntime was imported before us
    options = ort.SessionOptions()
    options.log_severity_level = log_level
    if threads:
        options.intra_op_num_threads = threads
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=list(providers))


def error_line(error: BaseException) -> str:
    """The first line of an onnxruntime error (at most 300 characters), for a one-line message."""
    lines = str(error).strip().splitlines()
    return lines[0][:300] if lines else type(error).__name__


def runtime_accepts_opset(opset: int) -> bool:
    """Whether onnxruntime loads a one-node model declaring ``opset`` for the default domain."""
    from onnx import TensorProto, helper

    value = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "probe",
        [value],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    opset_id = helper.make_opsetid("", opset)
    model = helper.make_model(graph, opset_imports=[opset_id], ir_version=helper.find_min_ir_version_for([opset_id]))
    try:
        open_session(model.SerializeToString(), log_level=LOG_FATAL)
    except Exception:  # noqa: BLE001 - onnxruntime raises its own untyped errors
        return False
    return True


# ---------------------------------------------------------------- execution providers


@dataclass(frozen=True)
class ProviderChoice:
    """The provider chosen for a request, and why."""

    requested: Provider
    provider: Provider  # never AUTO
    providers: tuple[str, ...]  # onnxruntime's names, in priority order
    device: str  # where state lives between steps: "cuda" or "cpu"
    reason: str

    def to_dict(self) -> dict:
        return {
            "requested": self.requested.value,
            "provider": self.provider.value,
            "providers": list(self.providers),
            "device": self.device,
            "reason": self.reason,
        }


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
    cpu = (_ORT_NAMES["cpu"],)
    cuda = (_ORT_NAMES["cuda"], _ORT_NAMES["cpu"])
    if requested is Provider.CPU:
        return ProviderChoice(requested, Provider.CPU, cpu, "cpu", "CPU, as requested")
    usable, why = _gpu_status()
    if requested is Provider.AUTO:
        if usable:
            return ProviderChoice(requested, Provider.CUDA, cuda, "cuda", f"CUDA: {why}")
        return ProviderChoice(requested, Provider.CPU, cpu, "cpu", f"CPU: {why}")
    if not usable:
        raise UserInputError(
            f"--provider {requested.value} needs a usable GPU, but {why}; use --provider cpu (or auto)"
        )
    if requested is Provider.TENSORRT:
        if _ORT_NAMES["tensorrt"] not in ort.get_available_providers():
            raise UserInputError(
                "--provider tensorrt: this onnxruntime has no TensorrtExecutionProvider; use --provider cuda"
            )
        names = (_ORT_NAMES["tensorrt"], *cuda)
        return ProviderChoice(requested, Provider.TENSORRT, names, "cuda", f"TensorRT, as requested: {why}")
    return ProviderChoice(requested, Provider.CUDA, cuda, "cuda", f"CUDA, as requested: {why}")


def open_provider_session(
    onnx_path: Path, choice: ProviderChoice, *, threads: int | None = None
) -> tuple[Any, ProviderChoice]:
    """A session on ``choice``'s providers, and the choice as onnxruntime really made it.

    onnxruntime falls back to CPU silently when a GPU provider's libraries do not
    load: for ``auto`` the CPU becomes the choice (and its reason says why), for an
    explicit request it is an error.

    Raises:
        PrernnError: onnxruntime cannot load the file, or cannot start the provider requested.
    """
    try:
        session = open_session(onnx_path, choice.providers, threads=threads)
    except Exception as error:  # noqa: BLE001 - onnxruntime's errors are untyped
        raise PrernnError(
            f"onnxruntime cannot load {onnx_path} with {choice.providers[0]}: {error_line(error)}"
        ) from None
    active = session.get_providers()[0]
    if active == choice.providers[0]:
        return session, choice
    if choice.requested is not Provider.AUTO:
        raise PrernnError(
            f"onnxruntime could not start {choice.providers[0]} (it fell back to {active}); check the CUDA/cuDNN/TensorRT libraries or use --provider cpu"
        )
    return session, ProviderChoice(
        choice.requested, Provider.CPU, (active,), "cpu", f"CPU: {choice.providers[0]} failed to start in onnxruntime"
    )
