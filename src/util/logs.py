"""Logging set-up: timestamps on every line, one format for every stage."""

from __future__ import annotations

import logging
import sys

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
