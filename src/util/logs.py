"""Logging set-up: timestamps on every line, one format for every stage."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator, Sized
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")
LOG_EVERY_S = 10.0

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def setup_logging(level: int = logging.INFO) -> None:
    """Send log records to stderr with timestamps (idempotent)."""
    root = logging.getLogger()
    if any(getattr(h, "_zalo_handler", False) for h in root.handlers):
        root.setLevel(level)
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT, datefmt="%H:%M:%S"))
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
