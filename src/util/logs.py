"""Logging set-up: timestamps on every line, one format for every stage, no noise.

The handler :func:`setup_logging` installs also keeps the log readable whatever a call site
passes: a float (or a float inside a dict, list or tuple) shown with ``%s`` is rounded to
:data:`SIGNIFICANT` significant digits, and a warning whose text was already logged in this
process is not repeated (one warning per kind per run: e.g. a model setting that does not apply,
built once per fold).
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Iterable, Iterator, Sized
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")
LOG_EVERY_S = 10.0

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
SIGNIFICANT = 4  # digits of a float logged with %s
# one printf-style conversion: flags, width, precision, length, type (``%%`` is no argument)
CONVERSION = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(?:\*|\d+)?(?:\.(?:\*|\d+))?[hlL]?([a-zA-Z%])")


def plural(count: int, word: str, words: str | None = None) -> str:
    """``"1 run"``, ``"2 runs"``: a count with its noun in the right number.

    >>> plural(1, "run"), plural(3, "graph"), plural(2, "entry", "entries")
    ('1 run', '3 graphs', '2 entries')
    """
    return f"{count} {word if count == 1 else (words or word + 's')}"


def rounded(value: object) -> object:
    """``value`` with every float in it (also inside dicts, lists and tuples) rounded to
    :data:`SIGNIFICANT` significant digits; anything else unchanged."""
    if isinstance(value, float):
        return float(f"{value:.{SIGNIFICANT}g}")
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(rounded(v) for v in value)
    if type(value).__module__ == "numpy" and getattr(value, "ndim", None) == 0:
        item = value.item()  # type: ignore[attr-defined]
        return rounded(item) if isinstance(item, float) else value
    return value


class QuietLog(logging.Filter):
    """Rounds floats shown with ``%s`` (:func:`rounded`) and drops a warning already shown."""

    def __init__(self) -> None:
        super().__init__()
        self.warned: set[tuple[str, str]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, dict) and isinstance(record.msg, str) and "%(" not in record.msg:
            record.args = rounded(
                record.args
            )  # one dict argument shown with %s (logging unpacks it)
        elif isinstance(record.args, tuple) and record.args and isinstance(record.msg, str):
            kinds = [m.group(1) for m in CONVERSION.finditer(record.msg) if m.group(1) != "%"]
            if len(kinds) == len(record.args) and "*" not in record.msg:
                record.args = tuple(
                    rounded(arg) if kind in "sr" else arg
                    for kind, arg in zip(kinds, record.args, strict=True)
                )
        if record.levelno == logging.WARNING:
            key = (record.name, record.getMessage())
            if key in self.warned:
                return False
            self.warned.add(key)
        return True


def setup_logging(level: int = logging.INFO) -> None:
    """Send log records to stderr with timestamps (idempotent)."""
    root = logging.getLogger()
    if any(getattr(h, "_zalo_handler", False) for h in root.handlers):
        root.setLevel(level)
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT, datefmt="%H:%M:%S"))
    handler.addFilter(QuietLog())
    handler._zalo_handler = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)


def progress(
    items: Iterable[T], desc: str, total: int | None = None, unit: str = "it", enabled: bool = True
) -> Iterator[T]:
    """A tqdm bar on a terminal; elsewhere (a log file, CI) a log line at each tenth of the way
    that comes at least ``LOG_EVERY_S`` seconds after the previous one (short loops stay quiet).

    Example
    -------
    >>> list(progress(range(3), "demo", enabled=False))
    [0, 1, 2]
    """
    if not enabled:
        yield from items
        return
    if sys.stderr.isatty():
        yield from tqdm(items, desc=desc, total=total, unit=unit, leave=False)
        return
    total = total if total is not None else (len(items) if isinstance(items, Sized) else None)
    step = max(1, (total or 0) // 10)
    started = last = time.perf_counter()
    logger = logging.getLogger("src.progress")
    for done, item in enumerate(items, 1):
        yield item
        now = time.perf_counter()
        if total and (done % step == 0 or done == total) and now - last >= LOG_EVERY_S:
            logger.info("%s: %d/%d %s (%.0f s)", desc, done, total, unit, now - started)
            last = now
