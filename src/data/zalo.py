"""Read a Zalo-layout data folder: speaker folders, test files and the test pair list.

Layout::

    root/train/<id>-<gender>-<age>/*.wav     gender M or F, age a number or NA
    root/public-test/*.wav                   random names
    root/public-test.csv                     audio_1,audio_2

With ``data.layout: speaker_folders`` (an external corpus for pretraining, e.g. VoxCeleb's
``wav/id10001/<video>/00001.wav``) every sub-folder of the training folder is one speaker of
unknown gender and age, and its audio files are found at any depth.

File and folder names are matched as :func:`src.data.pairs.clean_name` writes them (Unicode NFC,
surrounding spaces removed), the form the CSV's names are read in: a manifest ``id`` and
``name`` are in that form, ``path`` is the file's real path. A speaker folder with no usable
audio is listed in ``bad_files.csv`` (its path ending in ``/``).
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from src.config import DataConfig
from src.data.pairs import PAIR_COLUMNS, DataLayoutError, clean_name, read_pair_csv

__all__ = ["DataLayoutError", "read_pair_csv"]  # re-exported: their home is src.data.pairs

log = logging.getLogger(__name__)

SPEAKER_DIR = re.compile(r"^(?P<speaker>[^-\s]+)-(?P<gender>[MFmf]|NA)-(?P<age>\d{1,3}|NA)$")


@dataclass(frozen=True)
class SourceFile:
    """One audio file found in the data folder."""

    id: str  # path relative to the data root, e.g. train/103-F-NA/103-1.wav
    name: str
    path: str
    split: str  # train | test
    speaker: str
    gender: str
    age: str


@dataclass(frozen=True)
class SkippedFile:
    path: str
    split: str
    reason: str


def _utf8_name(path: Path) -> bool:
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _shown(path: Path) -> str:
    """A path as text that can be written to a UTF-8 file (undecodable bytes as escapes)."""
    return str(path) if _utf8_name(path) else repr(str(path))


def _audio_files(
    folder: Path, split: str, cfg: DataConfig, skipped: list[SkippedFile], recursive: bool = False
) -> list[Path]:
    """Sorted audio files of a folder (and, ``recursive``, its sub-folders); everything else is
    reported as skipped."""
    files = []
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    for path in sorted(p for p in candidates if p.is_file()):
        if not _utf8_name(path):
            skipped.append(SkippedFile(_shown(path), split, "file name is not valid UTF-8"))
        elif path.suffix.lower() not in cfg.extensions:
            reason = f"unsupported extension {path.suffix or '(none)'!r}"
            skipped.append(SkippedFile(str(path), split, reason))
        else:
            files.append(path)
    return files


def scan_train(root: Path, cfg: DataConfig, skipped: list[SkippedFile]) -> list[SourceFile]:
    """Files of ``root/train``; badly named and empty speaker folders are skipped with a reason.

    Raises
    ------
    DataLayoutError
        No training folder, or two files (or speaker folders) whose names are the same once
        normalised (:func:`src.data.pairs.clean_name`); the message names both.
    """
    train_dir = root / cfg.train_dir
    if not train_dir.is_dir():
        raise DataLayoutError(f"no training folder {train_dir}")
    folders = _unique_folders(train_dir)
    if cfg.layout == "speaker_folders":
        return _scan_speaker_folders(root, train_dir, folders, cfg, skipped)
    found = []
    for folder in folders:
        match = SPEAKER_DIR.match(clean_name(folder.name))
        if match is None:
            reason = f"speaker folder {folder.name!r} is not in <id>-<gender>-<age> form"
            skipped.extend(
                SkippedFile(_shown(p), "train", reason) for p in folder.rglob("*") if p.is_file()
            )
            log.warning("skipping %s", reason)
            continue
        gender = match["gender"].upper() if match["gender"] != "NA" else "NA"
        found.extend(
            _source(root, path, "train", match["speaker"], gender, match["age"])
            for path in _speaker_audio(folder, cfg, skipped)
        )
    return _unique_ids(found)


def _speaker_audio(
    folder: Path, cfg: DataConfig, skipped: list[SkippedFile], recursive: bool = False
) -> list[Path]:
    """A speaker folder's audio files; a folder without any is listed in ``skipped`` (with
    path ``<folder>/``) and logged, so a speaker never disappears silently."""
    files = _audio_files(folder, "train", cfg, skipped, recursive)
    if not files:
        has_files = any(p.is_file() for p in (folder.rglob("*") if recursive else folder.iterdir()))
        reason = (
            "no usable audio file in this speaker folder" if has_files else "empty speaker folder"
        )
        skipped.append(SkippedFile(_shown(folder) + "/", "train", reason))
        log.warning("skipping speaker folder %s: %s", _shown(folder), reason)
    return files


def _unique_folders(parent: Path) -> list[Path]:
    """Sub-folders of ``parent``, refusing two whose names are the same once normalised."""
    folders = sorted(p for p in parent.iterdir() if p.is_dir())
    _refuse_collisions([(clean_name(f.name), _shown(f)) for f in folders])
    return folders


def _unique_ids(files: list[SourceFile]) -> list[SourceFile]:
    _refuse_collisions([(f.id, f.path) for f in files])
    return files


def _refuse_collisions(keyed: list[tuple[str, str]]) -> None:
    """Raise naming the first two paths that share a normalised name (``keyed``: name, path)."""
    seen: dict[str, str] = {}
    for key, path in keyed:
        if key in seen:
            raise DataLayoutError(
                f"{seen[key]!r} and {path!r} have the same name once normalised ({key!r}: "
                "Unicode NFC, surrounding spaces removed), so a CSV cannot tell them apart; "
                "rename or remove one"
            )
        seen[key] = path


def _source(root: Path, path: Path, split: str, speaker: str, gender: str, age: str) -> SourceFile:
    """A found file; ``id`` and ``name`` are normalised (:func:`clean_name`) so that they match
    the names of a CSV, ``path`` is the file's real path."""
    relative = path.relative_to(root).parts
    return SourceFile(
        id="/".join(clean_name(part) for part in relative),
        name=clean_name(path.name),
        path=str(path),
        split=split,
        speaker=speaker,
        gender=gender,
        age=age,
    )


def _scan_speaker_folders(
    root: Path, train_dir: Path, folders: list[Path], cfg: DataConfig, skipped: list[SkippedFile]
) -> list[SourceFile]:
    """One speaker per sub-folder of ``train_dir`` (any name), audio at any depth below it."""
    for stray in sorted(p for p in train_dir.iterdir() if p.is_file()):
        skipped.append(SkippedFile(_shown(stray), "train", "file outside any speaker folder"))
    return _unique_ids(
        [
            _source(root, path, "train", clean_name(folder.name), "NA", "NA")
            for folder in folders
            for path in _speaker_audio(folder, cfg, skipped, recursive=True)
        ]
    )


def scan_test(root: Path, cfg: DataConfig, skipped: list[SkippedFile]) -> list[SourceFile]:
    test_dir = root / cfg.test_dir
    if not test_dir.is_dir():
        log.warning("no test folder %s: only training data will be prepared", test_dir)
        return []
    found = _audio_files(test_dir, "test", cfg, skipped)
    return _unique_ids([_source(root, path, "test", "", "", "") for path in found])


def check_pairs_exist(pairs: pd.DataFrame, available: set[str], csv_path: Path) -> None:
    """Raise naming every file of the CSV that is not among ``available`` names."""
    named = pd.unique(pairs[PAIR_COLUMNS].to_numpy().ravel())
    missing = sorted(n for n in named if n not in available)
    if missing:
        shown = ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else "")
        raise DataLayoutError(
            f"{csv_path}: {len(missing)} file(s) named in the CSV are missing or unusable: {shown}"
        )


def skipped_frame(skipped: list[SkippedFile]) -> pd.DataFrame:
    return pd.DataFrame([asdict(s) for s in skipped], columns=["path", "split", "reason"])
