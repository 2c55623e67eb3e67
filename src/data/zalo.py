"""Read a Zalo-layout data folder: speaker folders, test files and the test pair list.

Layout::

    root/train/<id>-<gender>-<age>/*.wav     gender M or F, age a number or NA
    root/public-test/*.wav                   random names
    root/public-test.csv                     audio_1,audio_2

With ``data.layout: speaker_folders`` (an external corpus for pretraining, e.g. VoxCeleb's
``wav/id10001/<video>/00001.wav``) every sub-folder of the training folder is one speaker of
unknown gender and age, and its audio files are found at any depth.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from src.config import DataConfig

log = logging.getLogger(__name__)

SPEAKER_DIR = re.compile(r"^(?P<speaker>[^-\s]+)-(?P<gender>[MFmf]|NA)-(?P<age>\d{1,3}|NA)$")
PAIR_COLUMNS = ["audio_1", "audio_2"]


class DataLayoutError(ValueError):
    """The data folder or its CSV cannot be used; the message says what and where."""


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
    """Files of ``root/train``; badly named speaker folders are skipped with a reason."""
    train_dir = root / cfg.train_dir
    if not train_dir.is_dir():
        raise DataLayoutError(f"no training folder {train_dir}")
    if cfg.layout == "speaker_folders":
        return _scan_speaker_folders(root, train_dir, cfg, skipped)
    found = []
    for folder in sorted(p for p in train_dir.iterdir() if p.is_dir()):
        match = SPEAKER_DIR.match(folder.name)
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
            for path in _audio_files(folder, "train", cfg, skipped)
        )
    return found


def _source(root: Path, path: Path, split: str, speaker: str, gender: str, age: str) -> SourceFile:
    return SourceFile(
        id=path.relative_to(root).as_posix(),
        name=path.name,
        path=str(path),
        split=split,
        speaker=speaker,
        gender=gender,
        age=age,
    )


def _scan_speaker_folders(
    root: Path, train_dir: Path, cfg: DataConfig, skipped: list[SkippedFile]
) -> list[SourceFile]:
    """One speaker per sub-folder of ``train_dir`` (any name), audio at any depth below it."""
    for stray in sorted(p for p in train_dir.iterdir() if p.is_file()):
        skipped.append(SkippedFile(_shown(stray), "train", "file outside any speaker folder"))
    return [
        _source(root, path, "train", folder.name, "NA", "NA")
        for folder in sorted(p for p in train_dir.iterdir() if p.is_dir())
        for path in _audio_files(folder, "train", cfg, skipped, recursive=True)
    ]


def scan_test(root: Path, cfg: DataConfig, skipped: list[SkippedFile]) -> list[SourceFile]:
    test_dir = root / cfg.test_dir
    if not test_dir.is_dir():
        log.warning("no test folder %s: only training data will be prepared", test_dir)
        return []
    return [
        _source(root, path, "test", "", "", "")
        for path in _audio_files(test_dir, "test", cfg, skipped)
    ]


def read_pair_csv(csv_path: Path) -> pd.DataFrame:
    """Read ``audio_1,audio_2`` pairs, refusing missing columns or empty cells.

    Extra columns are dropped with a warning; duplicate rows and self-pairs are kept (the
    submission must echo every row) but logged.
    """
    try:
        pairs = pd.read_csv(csv_path, dtype=str, keep_default_na=False, encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataLayoutError(f"{csv_path}: not valid UTF-8 text ({err})") from None
    except pd.errors.ParserError as err:
        raise DataLayoutError(f"{csv_path}: not a readable CSV ({err})") from None
    except pd.errors.EmptyDataError:
        raise DataLayoutError(f"{csv_path}: empty file, expected header audio_1,audio_2") from None
    pairs.columns = [str(c).strip() for c in pairs.columns]
    missing = [c for c in PAIR_COLUMNS if c not in pairs.columns]
    if missing:
        raise DataLayoutError(
            f"{csv_path}: missing column(s) {missing}; found {list(pairs.columns)}"
        )
    if pairs.empty:
        raise DataLayoutError(f"{csv_path}: no pairs, only a header")
    extra = [c for c in pairs.columns if c not in PAIR_COLUMNS]
    if extra:
        log.warning("%s: ignoring extra column(s) %s", csv_path, extra)
    pairs = pairs[PAIR_COLUMNS].apply(lambda col: col.str.strip())
    empty = pairs.index[(pairs == "").any(axis=1)]
    if len(empty):
        rows = ", ".join(str(i + 2) for i in empty[:5])
        raise DataLayoutError(f"{csv_path}: empty file name on line(s) {rows}")
    n_dup = int(pairs.duplicated().sum())
    if n_dup:
        log.warning("%s: %d duplicate row(s); each is kept and answered", csv_path, n_dup)
    n_self = int((pairs["audio_1"] == pairs["audio_2"]).sum())
    if n_self:
        log.warning("%s: %d row(s) pair a file with itself", csv_path, n_self)
    return pairs


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
