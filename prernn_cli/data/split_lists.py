"""Standard action-dataset splits: UCF101/HMDB51 split lists (``--split-file``) and group-aware holdouts (``--group-by``).

UCF101 (the ``ucfTrainTestlist`` folder)
    ``classInd.txt`` lists the classes in label order (``1 ApplyEyeMakeup``);
    ``trainlist0N.txt`` lists split N's training clips with their 1-based label
    (``ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1``), ``testlist0N.txt`` its test
    clips without one (the class is the clip's folder). ``--split-file`` names either
    list of split N; the other and ``classInd.txt`` are read from the same folder.
    A label that disagrees with the clip's folder is an error.
HMDB51 (the ``testTrainMulti_7030_splits`` folder)
    one file per class and split, ``<class>_test_split<N>.txt``, with lines
    ``<video>.avi 1|2|0``: 1 = train, 2 = test, 0 = unused (left out). ``--split-file``
    names any one of them; the files of every class for the same split N are read from
    its folder. Classes are sorted by name.

Clip paths are relative to the data folder (``--data``): ``DATA/ApplyEyeMakeup/v_…avi``
(UCF101), ``DATA/<class>/<video>.avi`` (HMDB51). A listed ``x.avi`` is also found as a
frame folder ``x`` (frames extracted beforehand) or as ``x`` with another video suffix. The
test list becomes the ``val`` split. Every listed clip must exist (one line names the
missing ones).

Group-aware holdout (:func:`group_holdout`): without split lists, a random holdout
leaks when clips share their source (UCF101's ``v_<Class>_g<XX>_c<YY>``: the clips of
one group share actors and scenes). ``--group-by REGEX`` names each clip's group by
the regex's first capture group searched in the clip's file or folder name (the whole
match when it has none); a deterministic ``val_fraction`` of the *groups* is held out,
and every clip of a held-out group goes to val. Groups are compared by that text across
all classes, so ``_g(\\d+)_`` holds out UCF101's group numbers in every class at once,
as the official splits do; put the class in the capture (``(v_.+_g\\d+)_``) to hold out
groups per class.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath
from typing import TypeVar

from prernn_cli.data.clips import Clip, DataSplits, holdout
from prernn_cli.data.decoding import VIDEO_SUFFIXES
from prernn_cli.errors import DataError, UserInputError
from prernn_cli.spec import Task

logger = logging.getLogger(__name__)

Item = TypeVar("Item")

_UCF_LIST = re.compile(r"^(train|test)list(\d+)\.txt$", re.IGNORECASE)
_HMDB_FILE = re.compile(r"^(.+)_test_split(\d+)\.txt$", re.IGNORECASE)
_HMDB_CODES = {"1": "train", "2": "test", "0": "unused"}


# ---------------------------------------------------------------- reading list files


def _lines(path: Path) -> list[tuple[int, str]]:
    """The non-blank lines of a list file with their 1-based numbers (CRLF and a BOM tolerated)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"split file {path} is not a text file; give the dataset's own split lists") from None
    except OSError as error:
        raise DataError(f"cannot read split file {path} ({error.strerror}); check the path and permissions") from None
    return [(number, line.strip()) for number, line in enumerate(text.splitlines(), start=1) if line.strip()]


def _relative_clip(text: str, path: Path, number: int) -> PurePosixPath:
    """A clip path from a list line: relative, without ``..``."""
    rel = PurePosixPath(text.replace("\\", "/"))
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise DataError(f"split file {path} line {number} names {text!r}; clip paths must be relative to --data")
    return rel


def _find_clip(data: Path, rel: PurePosixPath) -> Path | None:
    """The clip ``rel`` under ``data``: as listed, as a frame folder without the suffix, or with another video suffix."""
    listed = data.joinpath(*rel.parts)
    if listed.exists():
        return listed
    stem = listed.with_suffix("") if listed.suffix.lower() in VIDEO_SUFFIXES else listed
    if stem.is_dir():
        return stem
    for suffix in sorted(VIDEO_SUFFIXES):
        candidate = stem.with_suffix(suffix)
        if candidate.is_file():
            return candidate
    return None


def _resolve(data: Path, listed: Sequence[tuple[PurePosixPath, int]], split_file: Path) -> list[Clip]:
    """Clips of the listed (path, label) pairs; a DataError naming the clips that are not under ``data``."""
    clips, missing = [], []
    for rel, label in listed:
        found = _find_clip(data, rel)
        if found is None:
            missing.append(str(rel))
        else:
            clips.append(Clip(found, label=label))
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise DataError(
            f"{len(missing)} clip(s) listed in {split_file.parent} are not under {data}: {', '.join(missing[:3])}{more}; "
            "give --data the folder the lists' paths are relative to (or extract the missing clips)"
        )
    return clips


# ---------------------------------------------------------------- UCF101


def _ucf_classes(path: Path) -> tuple[str, ...]:
    """``classInd.txt``: ``<index> <class>`` lines, indices 1..K in order."""
    if not path.is_file():
        raise DataError(f"UCF101 split lists need {path.name} beside them; {path} is missing")
    names = []
    for number, line in _lines(path):
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit() or int(parts[0]) != len(names) + 1:
            raise DataError(
                f"{path} line {number} is {line!r}; each line must be '<index> <class>', indices counting from 1"
            )
        names.append(parts[1])
    if len(names) < 2:
        raise DataError(f"{path} lists {len(names)} class(es); classification needs at least two")
    return tuple(names)


def _ucf_list(path: Path, classes: tuple[str, ...]) -> list[tuple[PurePosixPath, int]]:
    """A train or test list: ``<Class>/<clip> [label]``; the class is the folder, a label must agree with it."""
    index = {name: i for i, name in enumerate(classes)}
    listed = []
    for number, line in _lines(path):
        parts = line.split()
        rel = _relative_clip(parts[0], path, number)
        folder = rel.parts[0] if len(rel.parts) > 1 else None
        if folder not in index:
            raise DataError(
                f"{path} line {number}: {parts[0]!r} is not in a class folder named in classInd.txt; "
                "list clips as <Class>/<clip>"
            )
        if len(parts) > 1 and (not parts[1].isdigit() or int(parts[1]) != index[folder] + 1):
            raise DataError(
                f"{path} line {number}: label {parts[1]} but the clip's folder is {folder} "
                f"(label {index[folder] + 1} in classInd.txt); fix the list"
            )
        listed.append((rel, index[folder]))
    return listed


def _read_ucf(split_file: Path, data: Path, kind: str, number: str) -> DataSplits:
    folder = split_file.parent
    other = "test" if kind.lower() == "train" else "train"
    partner = folder / re.sub(r"^(train|test)", other, split_file.name, flags=re.IGNORECASE)
    if not partner.is_file():
        raise DataError(f"UCF101 split {int(number)} needs both lists: {partner} is missing beside {split_file.name}")
    train_file, test_file = (split_file, partner) if kind.lower() == "train" else (partner, split_file)
    classes = _ucf_classes(folder / "classInd.txt")
    train = _resolve(data, _ucf_list(train_file, classes), train_file)
    val = _resolve(data, _ucf_list(test_file, classes), test_file)
    if not train:
        raise DataError(f"{train_file} lists no clips; give the dataset's training list")
    return DataSplits(Task.CLASSIFY, classes, train, val, len(classes), f"UCF101 split {int(number)}")


# ---------------------------------------------------------------- HMDB51


def _hmdb_file(path: Path, label: int) -> tuple[list, list]:
    """One class's ``<video> 1|2|0`` lines as (train, test) lists of (path, label)."""
    train, test = [], []
    class_name = _HMDB_FILE.match(path.name).group(1)
    for number, line in _lines(path):
        parts = line.split()
        if len(parts) != 2 or parts[1] not in _HMDB_CODES:
            raise DataError(f"{path} line {number} is {line!r}; each line must be '<video> 1|2|0' (train|test|unused)")
        rel = PurePosixPath(class_name) / _relative_clip(parts[0], path, number)
        if parts[1] == "1":
            train.append((rel, label))
        elif parts[1] == "2":
            test.append((rel, label))
    return train, test


def _read_hmdb(split_file: Path, data: Path, number: str) -> DataSplits:
    suffix = f"_test_split{number}.txt"
    files = sorted(p for p in split_file.parent.iterdir() if p.is_file() and p.name.lower().endswith(suffix.lower()))
    classes = tuple(p.name[: -len(suffix)] for p in files)
    if len(classes) < 2:
        raise DataError(
            f"{split_file.parent} holds {len(classes)} HMDB51 file(s) for split {number}; "
            "classification needs the <class>_test_split files of at least two classes"
        )
    train_listed, test_listed = [], []
    for label, path in enumerate(files):
        train, test = _hmdb_file(path, label)
        train_listed += train
        test_listed += test
    train = _resolve(data, train_listed, split_file)
    val = _resolve(data, test_listed, split_file)
    if not train:
        raise DataError(f"the HMDB51 files of split {number} in {split_file.parent} mark no clip as train (1)")
    return DataSplits(Task.CLASSIFY, classes, train, val, len(classes), f"HMDB51 split {int(number)}")


def read_split_file(split_file: Path, data: Path) -> DataSplits:
    """Train and val (= test) clips of a UCF101 or HMDB51 split (see the module docstring)."""
    split_file, data = Path(split_file), Path(data)
    if not split_file.is_file():
        raise DataError(
            f"split file {split_file} does not exist; give UCF101's trainlist0N.txt/testlist0N.txt "
            "or one of HMDB51's <class>_test_splitN.txt"
        )
    if not data.is_dir():
        raise DataError(f"--data {data} must be the folder the split list's clip paths are relative to")
    ucf = _UCF_LIST.match(split_file.name)
    if ucf:
        return _read_ucf(split_file, data, ucf.group(1), ucf.group(2))
    hmdb = _HMDB_FILE.match(split_file.name)
    if hmdb:
        return _read_hmdb(split_file, data, hmdb.group(2))
    raise DataError(
        f"--split-file {split_file.name} is neither a UCF101 list (trainlist01.txt / testlist01.txt beside "
        "classInd.txt) nor an HMDB51 split file (<class>_test_split1.txt); rename it or use a manifest"
    )


# ---------------------------------------------------------------- group-aware holdout


def group_pattern(text: str) -> re.Pattern:
    """``--group-by REGEX`` compiled; a UserInputError for a regex that does not compile."""
    try:
        return re.compile(text)
    except re.error as error:
        raise UserInputError(
            f"--group-by {text!r} is not a regular expression ({error}); e.g. --group-by '_g(\\d+)_'"
        ) from None


def group_of(pattern: re.Pattern, name: str) -> str | None:
    """The group a clip named ``name`` belongs to: the first capture group (or the whole match); None: no match."""
    match = pattern.search(name)
    if match is None:
        return None
    return match.group(1) if pattern.groups else match.group(0)


def group_holdout(
    items: Sequence[Item], name_of: Callable[[Item], str], pattern: re.Pattern, fraction: float
) -> tuple[list[Item], list[Item]]:
    """Split ``items`` into (train, val) by whole groups: a deterministic ``fraction`` of the groups goes to val."""
    keys = []
    for item in items:
        key = group_of(pattern, name_of(item))
        if key is None:
            raise DataError(
                f"clip {name_of(item)!r} does not match --group-by {pattern.pattern!r}; "
                "give a regex whose first group names every clip's group"
            )
        keys.append(key)
    groups = sorted(set(keys))
    if fraction > 0 and len(groups) < 2:
        raise DataError(
            f"--group-by {pattern.pattern!r} puts every clip in one group ({groups[0]!r}); "
            "a holdout needs at least two groups"
        )
    _, val_groups = holdout(groups, fraction, salt=f"groups:{pattern.pattern}")
    held = set(val_groups)
    train = [item for item, key in zip(items, keys) if key not in held]
    val = [item for item, key in zip(items, keys) if key in held]
    logger.info("--group-by: %d of %d groups held out (%d clips)", len(held), len(groups), len(val))
    return train, val
