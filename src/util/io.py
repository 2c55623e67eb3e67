"""Atomic output writing: every file is written to a temporary name and renamed into place.

A crash therefore never leaves a half-written CSV, JSON, array or checkpoint that the next stage
would read; at worst a stray ``*.tmp`` file remains, which is ignored and overwritten.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file for writing that replaces ``path`` only when closed cleanly.

    Text is always UTF-8 (what every reader here assumes), whatever the machine's locale.
    """
    encoding = None if "b" in mode else "utf-8"
    with atomic_path(path) as tmp, open(tmp, mode, encoding=encoding) as handle:
        yield handle


def write_text(path: str | Path, text: str) -> None:
    with atomic_open(path) as handle:
        handle.write(text)


def write_json(path: str | Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def write_csv(path: str | Path, frame: pd.DataFrame) -> None:
    with atomic_open(path) as handle:
        frame.to_csv(handle, index=False)


def write_npz(path: str | Path, **arrays: np.ndarray) -> None:
    with atomic_open(path, "wb") as handle:
        np.savez(handle, **arrays)


def write_npy(path: str | Path, array: np.ndarray) -> None:
    with atomic_open(path, "wb") as handle:
        np.save(handle, array)


def write_with(path: str | Path, writer: Callable[[Path], None]) -> None:
    """Let ``writer`` fill a temporary path (e.g. ``torch.save``), then rename it into place."""
    with atomic_path(path) as tmp:
        writer(tmp)


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())
