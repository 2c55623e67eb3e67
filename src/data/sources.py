"""Has an input audio file changed since ``prepare`` decoded it? Content, not only size and time.

``prepare`` keeps ``sources.csv`` beside its manifest: for every audio file it scanned, the
file's size, modification time, status-change time (``ctime``), inode and md5. A later run
trusts a file without reading it only when all four stat fields are as recorded; otherwise it
hashes the file and compares the md5. That is sound against copies that keep size and
modification time (``cp -p``, ``rsync -a``, unzip): writing a file or setting its times always
sets its ``ctime`` to the present (no system call sets it back), and ``rsync`` and unzip also
create a new inode. A file whose ``ctime`` lay within :data:`RACY_NS` of the scan (a write in the
same clock tick could go unnoticed) is recorded without a ``ctime``, so it is hashed next time
(git's "racily clean" rule).

Moving or copying the whole data folder changes every ``ctime`` and inode: the next run hashes
every file once (cost in ``bench/RESULTS.md``), finds the content unchanged and decodes nothing.

Example
-------
>>> check = check_sources(files, Path("outputs/prep"))  # doctest: +SKIP
>>> check.changed  # doctest: +SKIP
['public-test/a.wav']
"""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from src.data.audio import file_md5
from src.data.zalo import SourceFile
from src.util.io import write_csv

log = logging.getLogger(__name__)

SOURCES_NAME = "sources.csv"
RACY_NS = 2_000_000_000  # a ctime this close to the scan is not trusted (coarse clocks)
STAT_COLUMNS = ["bytes", "mtime_ns", "ctime_ns", "inode"]
COLUMNS = ["id", "path", *STAT_COLUMNS, "md5"]


def file_stat(path: str | Path) -> tuple[int, int, int, int]:
    """``(bytes, mtime_ns, ctime_ns, inode)`` of a file."""
    info = os.stat(path)
    return info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino


@dataclass
class SourceCheck:
    """What :func:`check_sources` found, for the files of one scan."""

    stats: dict[str, tuple[int, int, int, int]]  # id -> stat now
    md5: dict[str, str]  # id -> content md5, for every file whose content is known
    changed: list[str] = field(default_factory=list)  # ids new or not as recorded
    hashed: int = 0  # files read because their stat differed from the record
    seconds: float = 0.0
    scanned_ns: int = 0  # when the stats were taken


def read_records(prep_dir: Path) -> pd.DataFrame | None:
    """``sources.csv`` of an earlier run, or ``None``."""
    path = prep_dir / SOURCES_NAME
    if not path.is_file():
        return None
    try:
        table = pd.read_csv(path, dtype={"id": str, "path": str, "md5": str}, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        return None
    return table if set(COLUMNS) <= set(table.columns) else None


def check_sources(files: list[SourceFile], prep_dir: Path, threads: int = 4) -> SourceCheck:
    """Compare ``files`` with the recorded ones: stat first, md5 where the stat differs.

    A file without a record (new) is ``changed`` and not hashed here (decoding hashes it).
    """
    started = time.perf_counter()
    scanned_ns = time.time_ns()
    stats = {f.id: file_stat(f.path) for f in files}
    records = read_records(prep_dir)
    known: dict[str, tuple[tuple[int, int, int, int], str]] = {}
    if records is not None:
        for row in records.itertuples(index=False):
            stat = (int(row.bytes), int(row.mtime_ns), int(row.ctime_ns), int(row.inode))
            known[row.id] = (stat, row.md5)
    md5: dict[str, str] = {}
    to_hash: list[SourceFile] = []
    for source in files:
        record = known.get(source.id)
        if record is None:
            continue
        if record[0] == stats[source.id]:
            md5[source.id] = record[1]
        else:
            to_hash.append(source)
    with ThreadPoolExecutor(max(1, threads)) as pool:  # hashlib releases the GIL while hashing
        hashes = list(pool.map(_md5_or_empty, [s.path for s in to_hash]))
    md5.update((s.id, h) for s, h in zip(to_hash, hashes, strict=True))
    changed = [f.id for f in files if f.id not in known or md5.get(f.id) != known[f.id][1]]
    return SourceCheck(stats, md5, changed, len(to_hash), time.perf_counter() - started, scanned_ns)


def _md5_or_empty(path: str) -> str:
    try:
        return file_md5(path)
    except OSError:
        return ""  # unreadable: never equal to a record, so decoding reports why


def write_records(
    path: Path, files: list[SourceFile], check: SourceCheck, md5: dict[str, str]
) -> None:
    """Record each file's stat (as taken by the check) and md5 for the next run's check."""
    rows = []
    for source in files:
        size, mtime, ctime, inode = check.stats[source.id]
        if ctime > check.scanned_ns - RACY_NS:
            ctime = -1  # changed too near the scan to trust: hash it next time
        rows.append((source.id, source.path, size, mtime, ctime, inode, md5.get(source.id, "")))
    write_csv(path, pd.DataFrame(rows, columns=COLUMNS))


def describe(check: SourceCheck, files: list[SourceFile]) -> str:
    """One log phrase: how the check decided, e.g. ``13200 files by stat, 3 hashed (0.4 s)``."""
    by_stat = len(files) - check.hashed - sum(f.id not in check.md5 for f in files)
    return f"{by_stat} files by stat, {check.hashed} hashed ({check.seconds:.1f} s)"
