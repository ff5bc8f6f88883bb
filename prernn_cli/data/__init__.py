"""Clip data for training and evaluation: discovery, decoding, frame sampling, preprocessing.

* :mod:`~prernn_cli.data.discovery` and :mod:`~prernn_cli.data.manifests`: where clips come from
  (a clip folder ``DIR/<class>/<clip>`` or a ``.csv``/``.jsonl`` manifest) and their train/val splits;
* :mod:`~prernn_cli.data.split_lists`: UCF101/HMDB51 split lists and group-aware holdouts;
* :mod:`~prernn_cli.data.decoding`: video files and frame folders decoded into frames;
* :mod:`~prernn_cli.data.sampling`: which frames make a clip's T steps;
* :mod:`~prernn_cli.data.preprocessing`: resizing, cropping, normalising, augmentation;
* :mod:`~prernn_cli.data.dataset`: the torch ``Dataset`` and batch collation;
* :mod:`~prernn_cli.data.frame_cache`: a disk cache of decoded, resized clips;
* :mod:`~prernn_cli.data.trunk_cache`: a disk cache of a frozen trunk's outputs, and the dataset reading it.
"""

from prernn_cli.data.clips import Clip, DataSplits
from prernn_cli.data.dataset import ClipDataset, collate
from prernn_cli.data.decoding import ClipReadError, count_frames, frame_folder, probe_clip, read_frames
from prernn_cli.data.discovery import discover
from prernn_cli.data.frame_cache import FrameCache
from prernn_cli.data.manifests import check_targets, load_targets, read_manifest
from prernn_cli.data.modalities import check_clip, count_clip_frames, read_clip_frames
from prernn_cli.data.preprocessing import (
    Augment,
    flip_pairs_from_names,
    parse_flip_pairs,
    preprocess,
    read_clip_steps,
    resize_frames,
    to_tensor,
)
from prernn_cli.data.sampling import Sampling, dense_windows, frames_to_steps, spec_steps, step_starts
from prernn_cli.data.split_lists import read_split_file
from prernn_cli.data.trunk_cache import TrunkCache, TrunkFeatureDataset, TrunkFeatureModel
from prernn_cli.spec import Task

__all__ = [
    "Task",
    "Sampling",
    "Clip",
    "DataSplits",
    "Augment",
    "ClipDataset",
    "ClipReadError",
    "FrameCache",
    "TrunkCache",
    "TrunkFeatureDataset",
    "TrunkFeatureModel",
    "discover",
    "read_manifest",
    "read_split_file",
    "load_targets",
    "read_frames",
    "count_frames",
    "frame_folder",
    "step_starts",
    "dense_windows",
    "frames_to_steps",
    "resize_frames",
    "to_tensor",
    "preprocess",
    "collate",
    "check_targets",
    "parse_flip_pairs",
    "flip_pairs_from_names",
    "probe_clip",
    "read_clip_steps",
    "read_clip_frames",
    "count_clip_frames",
    "check_clip",
    "spec_steps",
]
