"""One reader for pair lists (``audio_1,audio_2``): the test CSV, its answer key, API batches.

Every stage that reads a pair list reads it here, so what ``prepare`` accepts every later stage
accepts (``submit``, ``report``, ``score``'s answer key, ``/api/predict_batch``):

- the text is UTF-8, with or without a byte-order mark; lines end in LF, CRLF or CR;
- header names and values are stripped of surrounding spaces (``a.wav, b.wav``, as some
  spreadsheet exports write it);
- file names are compared in Unicode normal form C (:func:`clean_name`): a name typed on one
  system and stored decomposed (NFD, as macOS writes file names) on another is the same name.

A :class:`PairList` keeps both forms: ``pairs`` (cleaned, what is matched against files and other
tables) and ``written`` (the cells exactly as in the file), so the submission can repeat the
user's rows as the user wrote them.

Example
-------
>>> pairs = pair_list_from_text("audio_1, audio_2\\r\\na.wav, b.wav\\r\\n", "pairs")
>>> pairs.pairs.values.tolist(), pairs.written.values.tolist()
([['a.wav', 'b.wav']], [['a.wav', ' b.wav']])
"""

from __future__ import annotations

import io
import logging
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

log = logging.getLogger(__name__)

PAIR_COLUMNS = ["audio_1", "audio_2"]


class DataLayoutError(ValueError):
    """The data folder or its CSV cannot be used; the message says what and where."""


def clean_name(text: str) -> str:
    """A file name as it is matched everywhere: surrounding spaces removed, Unicode NFC.

    >>> clean_name(" nu\\u0303.wav ") == "n\\u0169.wav"
    True
    """
    return unicodedata.normalize("NFC", text.strip())


@dataclass(frozen=True)
class PairList:
    """A pair list read by :func:`read_pair_list` (rows in file order, blank lines dropped).

    ``pairs`` holds ``audio_1, audio_2`` (and any ``extra`` columns asked for) with cleaned
    values; ``written`` holds ``audio_1, audio_2`` exactly as the file spells them.
    """

    pairs: pd.DataFrame
    written: pd.DataFrame
    source: str

    def __len__(self) -> int:
        return len(self.pairs)


def read_pair_list(
    path: Path, what: str | None = None, extra: tuple[str, ...] = (), log_rows: bool = True
) -> PairList:
    """Read a pair-list CSV file (see the module docstring for what is tolerated).

    Raises
    ------
    DataLayoutError
        Text that is not UTF-8 or not a CSV, an empty file, a missing column (the message lists
        the columns found), no rows, or an empty file name (the message names the rows).
    """
    what = what or str(path)
    try:
        text = Path(path).read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataLayoutError(f"{what}: not valid UTF-8 text ({err})") from None
    return pair_list_from_text(text, what, extra, log_rows)


def pair_list_from_text(
    text: str, what: str, extra: tuple[str, ...] = (), log_rows: bool = True
) -> PairList:
    """:func:`read_pair_list` for CSV text already in memory (e.g. an API form field)."""
    text = text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    try:
        table = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise DataLayoutError(f"{what}: empty file, expected header audio_1,audio_2") from None
    except pd.errors.ParserError as err:
        raise DataLayoutError(f"{what}: not a readable CSV ({err})") from None
    table.columns = [str(c).strip() for c in table.columns]
    return pair_list_from_table(table, what, extra, log_rows)


def pair_list_from_rows(rows: list[list[str]], what: str) -> PairList:
    """:func:`read_pair_list` for pairs given as a list of ``[audio_1, audio_2]`` (JSON)."""
    if not all(isinstance(r, list) and len(r) == 2 and all(isinstance(n, str) for n in r)
               for r in rows):  # fmt: skip
        raise DataLayoutError(f"{what}: each pair must be a list of two file names")
    return pair_list_from_table(pd.DataFrame(rows, columns=PAIR_COLUMNS, dtype=str), what)


def pair_list_from_table(
    table: pd.DataFrame, what: str, extra: tuple[str, ...] = (), log_rows: bool = True
) -> PairList:
    """Check a table of text cells (header already stripped) and clean its names."""
    wanted = [*PAIR_COLUMNS, *extra]
    repeated = sorted({c for c in table.columns if list(table.columns).count(c) > 1})
    if repeated:
        raise DataLayoutError(f"{what}: column(s) {repeated} appear twice in the header")
    missing = [c for c in wanted if c not in table.columns]
    if missing:
        raise DataLayoutError(
            f"{what}: missing column(s) {missing}; the header must name "
            f"{','.join(wanted)} (found {list(table.columns)})"
        )
    if table.empty:
        raise DataLayoutError(f"{what}: no pairs, only a header")
    ignored = [c for c in table.columns if c not in wanted]
    if ignored and log_rows:
        log.warning("%s: ignoring extra column(s) %s", what, ignored)
    table = table.fillna("")  # a short row's missing cells
    written = table[PAIR_COLUMNS].reset_index(drop=True)
    pairs = table[wanted].reset_index(drop=True).apply(lambda column: column.map(clean_name))
    empty = pairs.index[(pairs[PAIR_COLUMNS] == "").any(axis=1)]
    if len(empty):
        rows = ", ".join(str(i + 1) for i in empty[:5])
        raise DataLayoutError(f"{what}: empty file name in row(s) {rows} (1 = first after header)")
    if log_rows:
        _log_odd_rows(pairs, what)
    return PairList(pairs=pairs, written=written, source=what)


def _log_odd_rows(pairs: pd.DataFrame, what: str) -> None:
    """Duplicate rows and self-pairs are kept (a submission answers every row) but logged."""
    n_dup = int(pairs[PAIR_COLUMNS].duplicated().sum())
    if n_dup:
        log.warning("%s: %d duplicate row(s); each is kept and answered", what, n_dup)
    n_self = int((pairs["audio_1"] == pairs["audio_2"]).sum())
    if n_self:
        log.warning("%s: %d row(s) pair a file with itself", what, n_self)


def read_pair_csv(path: Path) -> pd.DataFrame:
    """The cleaned ``audio_1, audio_2`` of a pair-list file (:func:`read_pair_list`)."""
    return read_pair_list(path).pairs


def first_difference(got: pd.DataFrame, want: pd.DataFrame) -> str:
    """Where two pair tables first differ, e.g. ``row 3: ('a.wav', 'b.wav') vs ('a.wav',
    'c.wav')`` (rows counted from 1 after the header); empty when they are equal."""
    got_rows = list(zip(got["audio_1"], got["audio_2"], strict=True))
    want_rows = list(zip(want["audio_1"], want["audio_2"], strict=True))
    for row, (a, b) in enumerate(zip(got_rows, want_rows, strict=False), 1):
        if a != b:
            return f"row {row}: {a} vs {b}"
    if len(got_rows) != len(want_rows):
        row = min(len(got_rows), len(want_rows)) + 1
        longer = got_rows if len(got_rows) > len(want_rows) else want_rows
        side = "first" if longer is got_rows else "second"
        return f"row {row}: only the {side} has it, {longer[row - 1]}"
    return ""


def read_answer_key(path: Path) -> pd.DataFrame:
    """``public-test-labels.csv`` (``audio_1, audio_2, label``) by the same reader: cleaned names,
    integer labels.

    Raises
    ------
    DataLayoutError
        As :func:`read_pair_list`, or a label that is not 0 or 1 (the message names its row).
    """
    key = read_pair_list(path, extra=("label",), log_rows=False).pairs
    labels = pd.to_numeric(key["label"], errors="coerce")
    bad = key.index[~labels.isin([0, 1])]
    if len(bad):
        raise DataLayoutError(
            f"{path}: labels must be 0 or 1; row {bad[0] + 1} has {key['label'][bad[0]]!r}"
        )
    return key.assign(label=labels.astype("int64"))
