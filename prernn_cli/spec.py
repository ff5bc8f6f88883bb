"""What a converted model is, as data: the JSON spec stored in our safetensors files.

A :class:`ModelSpec` is enough to rebuild a converted model from its base
architecture without unpickling anything (SPEC §5). It is also what the ONNX
exporter writes into ``metadata_props``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from enum import Enum

FORMAT_VERSION = 1
SPEC_METADATA_KEY = "prernn_spec"
DEFAULT_SNIPPET_LENGTH = 16  # C3D's snippet length, for a 3D input spec that names none
MAX_SIZE = 2**31 - 1  # no layer, image or class count comes near: a larger one is a corrupt or hostile spec
DEFAULT_FLOW_BOUND = 20.0  # flow images map 0..255 to [-20, 20] pixels, as the TV-L1 dumps of two-stream repos


class CellType(str, Enum):
    """The recurrent cell a layer becomes."""

    VRNN = "vrnn"
    LSTM = "lstm"
    GRU = "gru"

    @property
    def num_gates(self) -> int:
        """G in SPEC §4: VRNN 1, GRU 3, LSTM 4."""
        return {CellType.VRNN: 1, CellType.GRU: 3, CellType.LSTM: 4}[self]

    @property
    def has_cell_state(self) -> bool:
        return self is CellType.LSTM


class Design(str, Enum):
    """The three designs the paper compares."""

    TRADITIONAL = "traditional"
    PRERNN = "prernn"
    SIH = "sih"


class Task(str, Enum):
    """What a model learns (the paper's three objectives)."""

    CLASSIFY = "classify"  # one class per clip, NLL over the sequence
    REGRESS = "regress"  # K values per frame, l2
    CTC = "ctc"  # a label sequence per clip, CTC with a blank class


class LayerKind(str, Enum):
    """The kind of pretrained layer a recurrent layer was made from."""

    FC = "fc"
    CONV = "conv"
    NEW = "new"  # a traditional layer: random input-to-hidden weights


class FrameKind(str, Enum):
    """One time step is an image (2D backbone) or a snippet of frames (3D backbone)."""

    IMAGE = "2d"
    SNIPPET = "3d"


class HeadKind(str, Enum):
    ORIGINAL = "original"  # the base network's own output layer
    CLASSIFY = "classify"  # a new linear head with K classes
    REGRESS = "regress"  # a new linear head with K outputs


class InitScheme(str, Enum):
    """How the new hidden-to-hidden weights W_h· start."""

    UNIFORM = "uniform"  # torch.nn.RNN's U(-1/sqrt(H), 1/sqrt(H))
    ORTHOGONAL = "orthogonal"  # one orthogonal H x H block per gate
    XAVIER = "xavier"  # Glorot uniform per gate block
    ZEROS = "zeros"  # the converted net starts as the feed-forward net (VRNN)


class Modality(str, Enum):
    """What one frame of a stream holds (see ``prernn_cli.data.modalities``)."""

    RGB = "rgb"  # colour (or grey) frames
    DEPTH = "depth"  # one depth channel: 8- or 16-bit grey frames, scaled to [0, 1] by their bit depth
    FLOW = "flow"  # optical flow: two channels (x, y) per frame, 2D nets stack L frames into 2L channels


@dataclass(frozen=True)
class InputSpec:
    """What one time step of input looks like, and how to preprocess it."""

    frame_kind: FrameKind = FrameKind.IMAGE
    channels: int = 3
    size: tuple[int, int] = (224, 224)  # (height, width) after resize/crop
    snippet_length: int | None = None  # L frames per step for 3D backbones
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    modality: Modality = Modality.RGB
    flow_stack: int | None = None  # flow on a 2D net: L flow frames stacked into 2L channels per step
    flow_bound: float = DEFAULT_FLOW_BOUND  # flow: pixel displacement of the flow images' 0 and 255

    @property
    def frames_per_step(self) -> int:
        """Frames one time step consumes: 1 for an image, L for a snippet (16 when a 3D spec gives none) or a flow stack."""
        if self.frame_kind is FrameKind.SNIPPET:
            return self.snippet_length or DEFAULT_SNIPPET_LENGTH
        return self.flow_stack or 1

    @property
    def frame_channels(self) -> int:
        """Channels of one decoded frame: 1 for depth, 2 (x, y) for flow, else :attr:`channels`."""
        return {Modality.DEPTH: 1, Modality.FLOW: 2}.get(self.modality, self.channels)

    @property
    def stacks_frames(self) -> bool:
        """Whether a step stacks its frames along channels (flow on a 2D net: x1, y1, x2, y2, ...)."""
        return self.modality is Modality.FLOW and self.frame_kind is FrameKind.IMAGE

    def step_shape(self) -> tuple[int, ...]:
        """Shape of one step for one clip: (C, H, W) or (C, L, H, W)."""
        if self.frame_kind is FrameKind.SNIPPET:
            return (self.channels, self.frames_per_step, *self.size)
        return (self.channels, *self.size)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["frame_kind"] = self.frame_kind.value
        data["size"] = list(self.size)
        data["mean"] = list(self.mean)
        data["std"] = list(self.std)
        data["modality"] = self.modality.value
        return data

    @classmethod
    def from_dict(cls, data: dict) -> InputSpec:
        """Read a stored input spec, checking every value's type and range (ValueError or TypeError if not)."""
        channels = _count(data["channels"], "channels")
        size = tuple(_count(side, "size") for side in _sequence(data["size"], "size", 2))
        snippet = data.get("snippet_length")
        mean = tuple(_finite(value, "mean") for value in _sequence(data["mean"], "mean", channels))
        std = tuple(_finite(value, "std") for value in _sequence(data["std"], "std", channels))
        if 0.0 in std:
            raise ValueError("input std holds a 0")
        spec = cls(
            frame_kind=FrameKind(data["frame_kind"]),
            channels=channels,
            size=size,
            snippet_length=None if snippet is None else _count(snippet, "snippet_length"),
            mean=mean,
            std=std,
            modality=Modality(data.get("modality", Modality.RGB.value)),  # files written before modalities: RGB
            flow_stack=_optional_count(data, "flow_stack"),
            flow_bound=_finite(data.get("flow_bound", DEFAULT_FLOW_BOUND), "flow_bound"),
        )
        _check_modality(spec)
        return spec


@dataclass(frozen=True)
class RecurrentLayerSpec:
    """One recurrent layer of a converted model."""

    name: str  # dotted module name in the base network (for NEW: the layer it sits on)
    kind: LayerKind
    hidden_size: int
    input_size: int  # in_features, or C_in for conv
    activation: str = "relu"  # VRNN's H; "identity" when the layer had none

    def to_dict(self) -> dict:
        data = asdict(self)
        data["kind"] = self.kind.value
        return data

    @classmethod
    def from_dict(cls, data: dict) -> RecurrentLayerSpec:
        """Read a stored layer, checking its sizes and names (ValueError or TypeError if wrong)."""
        layer = cls(**{**data, "kind": LayerKind(data["kind"])})
        _count(layer.hidden_size, "hidden_size")
        _count(layer.input_size, "input_size")
        if not isinstance(layer.name, str) or not isinstance(layer.activation, str):
            raise TypeError("a layer's name and activation must be strings")
        return layer


@dataclass(frozen=True)
class TrainingRecord:
    """How a model was trained and evaluated (written by ``prernn train``).

    ``evaluate``, ``analyze``, ``export`` and ``stream`` default to these settings, so a
    trained model is measured the way training measured it; a flag still overrides.
    Enum-valued settings are kept as their string values (``Sampling``, ``ClipPool``,
    ``ErrorNorm`` live with the code that uses them).
    """

    task: Task
    steps: int  # T steps per clip
    sampling: str = "random"  # training sampling; validation used uniform (dense when dense)
    clip_pool: str = "mean"
    error_norm: str = "none"
    norm_points: tuple[int, int] | None = None
    auc_threshold: float = 0.08
    val_fraction: float = 0.2
    group_by: str | None = None  # the --group-by regex of the val holdout (None: clip by clip)

    @property
    def eval_sampling(self) -> str:
        """How validation sampled its steps: dense windows when training did, else uniform."""
        return "dense" if self.sampling == "dense" else "uniform"

    def to_dict(self) -> dict:
        data = asdict(self)
        data["task"] = self.task.value
        data["norm_points"] = list(self.norm_points) if self.norm_points else None
        return data

    @classmethod
    def from_dict(cls, data: dict) -> TrainingRecord:
        points = data.get("norm_points")
        return cls(
            task=Task(data["task"]),
            steps=_count(data["steps"], "steps"),
            sampling=str(data.get("sampling", "random")),
            clip_pool=str(data.get("clip_pool", "mean")),
            error_norm=str(data.get("error_norm", "none")),
            norm_points=(int(points[0]), int(points[1])) if points else None,
            auc_threshold=_finite(data.get("auc_threshold", 0.08), "auc_threshold"),
            val_fraction=_finite(data.get("val_fraction", 0.2), "val_fraction"),
            group_by=str(data["group_by"]) if data.get("group_by") else None,
        )


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a converted model from its base architecture."""

    base_architecture: str
    layers: tuple[RecurrentLayerSpec, ...]
    cell: CellType
    design: Design = Design.PRERNN
    head: HeadKind = HeadKind.ORIGINAL
    outputs: int | None = None  # K for a new head
    base_num_classes: int | None = None  # output size of the base network's own head
    input: InputSpec = field(default_factory=InputSpec)
    init_hh: InitScheme = InitScheme.UNIFORM
    class_names: tuple[str, ...] | None = None
    task: str | None = None  # classify / regress / ctc once trained
    training: TrainingRecord | None = None  # how it was trained and evaluated (prernn train)
    format_version: int = FORMAT_VERSION

    @property
    def sih(self) -> bool:
        """PreRNN-SIH: every gate shares the one pretrained input-to-hidden state."""
        return self.design is Design.SIH

    @property
    def traditional(self) -> bool:
        """The traditional baseline: a new recurrent layer on the untouched backbone."""
        return self.design is Design.TRADITIONAL

    def __post_init__(self) -> None:
        if self.design is Design.SIH and self.cell is CellType.VRNN:
            raise ValueError("a VRNN has one gate, so it has no SIH design")

    def with_updates(self, **changes) -> ModelSpec:
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return {
            "format_version": self.format_version,
            "base_architecture": self.base_architecture,
            "layers": [layer.to_dict() for layer in self.layers],
            "cell": self.cell.value,
            "design": self.design.value,
            "sih": self.sih,  # kept beside the design for readers of SPEC §5
            "head": self.head.value,
            "outputs": self.outputs,
            "base_num_classes": self.base_num_classes,
            "input": self.input.to_dict(),
            "init_hh": self.init_hh.value,
            "class_names": list(self.class_names) if self.class_names else None,
            "task": self.task,
            "training": self.training.to_dict() if self.training else None,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> ModelSpec:
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(f"unsupported prernn format version {version!r} (this tool reads {FORMAT_VERSION})")
        if HeadKind(data["head"]) is not HeadKind.ORIGINAL and data.get("outputs") is None:
            raise ValueError(f"a new {data['head']} head needs its number of outputs")
        return cls(
            base_architecture=data["base_architecture"],
            layers=tuple(RecurrentLayerSpec.from_dict(layer) for layer in data["layers"]),
            cell=CellType(data["cell"]),
            design=_design_from_dict(data),
            head=HeadKind(data["head"]),
            outputs=_optional_count(data, "outputs"),
            base_num_classes=_optional_count(data, "base_num_classes"),
            input=InputSpec.from_dict(data["input"]),
            init_hh=InitScheme(data.get("init_hh", "uniform")),
            class_names=_names(data["class_names"]) if data.get("class_names") else None,
            task=None if data.get("task") is None else Task(data["task"]).value,
            training=TrainingRecord.from_dict(data["training"]) if data.get("training") else None,
            format_version=version,
        )

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        return cls.from_dict(json.loads(text))


def _count(value: object, what: str) -> int:
    """A stored size or count: a whole number from 1 to :data:`MAX_SIZE` (a bool or a float is not one)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} is {value!r}, not a whole number")
    if not 1 <= value <= MAX_SIZE:
        raise ValueError(f"{what} is {value}, outside 1..{MAX_SIZE}")
    return value


def _check_modality(spec: InputSpec) -> None:
    """A stored input's channels must be those of its modality (ValueError if not)."""
    if spec.flow_bound <= 0:
        raise ValueError(f"flow_bound is {spec.flow_bound}, not positive")
    if spec.flow_stack is not None and not spec.stacks_frames:
        raise ValueError("flow_stack is set, but only flow on a 2D network stacks frames")
    want = spec.frame_channels * (spec.flow_stack or 1) if spec.stacks_frames else spec.frame_channels
    if spec.modality is not Modality.RGB and spec.channels != want:
        raise ValueError(f"a {spec.modality.value} input has {want} channels, not {spec.channels}")


def _optional_count(data: dict, key: str) -> int | None:
    """``data[key]``: absent or null, else a :func:`_count`."""
    return None if data.get(key) is None else _count(data[key], key)


def _finite(value: object, what: str) -> float:
    """A stored real number: an int or a finite float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or abs(value) == float("inf"):
        raise TypeError(f"{what} holds {value!r}, not a finite number")
    return float(value)


def _sequence(value: object, what: str, length: int) -> list:
    """A stored list of ``length`` items."""
    if not isinstance(value, list) or len(value) != length:
        raise ValueError(f"{what} is {value!r}, not a list of {length}")
    return value


def _names(value: object) -> tuple[str, ...]:
    """Stored class names: a list of distinct strings."""
    if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
        raise TypeError("class_names is not a list of strings")
    if len(set(value)) != len(value):
        raise ValueError("class_names names a class twice")
    return tuple(value)


def _design_from_dict(data: dict) -> Design:
    """The design a stored spec names; files written before ``design`` existed hold two booleans."""
    if "design" in data:
        return Design(data["design"])
    if data.get("traditional"):
        return Design.TRADITIONAL
    return Design.SIH if data.get("sih") else Design.PRERNN
