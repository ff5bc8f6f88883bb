"""The settings a user picks from a fixed list, as enums.

They live here, apart from the code that uses them, so that the command line can offer
them (``--help`` included) without importing torch or onnxruntime.
"""

from __future__ import annotations

from enum import Enum


class Sampling(str, Enum):
    """How the T steps of a clip are chosen."""

    UNIFORM = "uniform"
    RANDOM = "random"
    DENSE = "dense"


class ClipPool(str, Enum):
    """How per-step class scores become one clip prediction."""

    MEAN = "mean"  # mean of per-step log-probabilities
    LAST = "last"  # the last step's log-probabilities


class ErrorNorm(str, Enum):
    """Normaliser of the per-frame regression error."""

    NONE = "none"
    BBOX = "bbox"  # diagonal of the target points' bounding box
    POINTS = "points"  # distance between two target points (e.g. outer eye corners)


class OptimizerKind(str, Enum):
    SGD = "sgd"  # with momentum, as in the paper
    ADAMW = "adamw"


class ScheduleKind(str, Enum):
    COSINE = "cosine"
    STEP = "step"
    CONSTANT = "constant"


class FeatureDtype(str, Enum):
    """How the trunk-output cache stores features: half the disk in float16, exact in float32."""

    FLOAT16 = "float16"
    FLOAT32 = "float32"


class Provider(str, Enum):
    """Which onnxruntime execution provider runs the model."""

    AUTO = "auto"
    CUDA = "cuda"
    TENSORRT = "tensorrt"
    CPU = "cpu"
