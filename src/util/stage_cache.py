"""Skip finished stages: a stage stores a fingerprint of its inputs and config with its outputs.

A rerun whose fingerprint matches the stored one (and whose outputs still exist) is skipped; any
change of an input file's content or of the config section redoes the stage. Intermediate files
are fingerprinted by content (a rerun that rewrites identical bytes does not invalidate what
follows); raw audio folders, too large to hash on every run, by content too, read only for
files whose size, times or inode differ from the record (``src/data/sources.py``).
A stage removes its stamp when it starts rewriting (:func:`mark_started`) and writes it last
(:func:`mark_done`), so a crash in between is always redone, never reused.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from src.util.io import write_json

STAMP_NAME = ".stage.json"


def fingerprint(*parts: Any) -> str:
    """Stable SHA-256 of JSON-serialisable parts (paths and other objects become strings)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def file_digest(path: Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's content."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def files_fingerprint(paths: Iterable[Path]) -> str:
    """Fingerprint of the content of the existing files among ``paths``."""
    return fingerprint([[str(p), file_digest(p)] for p in sorted(paths) if p.exists()])


def stamp_path(stage_dir: Path, stage: str) -> Path:
    return Path(stage_dir) / f"{STAMP_NAME[:-5]}.{stage}.json"


def is_fresh(stage_dir: Path, stage: str, stamp: str, outputs: Iterable[Path] = ()) -> bool:
    """True when ``stage_dir`` holds a stamp for ``stage`` equal to ``stamp`` and all outputs."""
    stamp_file = stamp_path(stage_dir, stage)
    if not stamp_file.is_file():
        return False
    try:
        stored = json.loads(stamp_file.read_text()).get("fingerprint")
    except (json.JSONDecodeError, OSError):
        return False
    return stored == stamp and all(Path(p).exists() for p in outputs)


def mark_started(stage_dir: Path, stage: str, stale: Iterable[Path] = ()) -> None:
    """Forget a stage's stamp (and ``stale`` outputs) before the stage rewrites its outputs.

    A run killed half way then leaves no stamp, so the next run redoes the stage instead of
    trusting outputs that are part old, part new; ``stale`` names outputs that must not be read
    together with the new ones (e.g. old score tables beside new ones, read by the stack stage).
    """
    stamp_path(stage_dir, stage).unlink(missing_ok=True)
    for path in stale:
        Path(path).unlink(missing_ok=True)


def mark_done(stage_dir: Path, stage: str, stamp: str, **details: Any) -> None:
    """Write the stamp (last); ``details`` are kept beside it for the stage's next run."""
    write_json(stamp_path(stage_dir, stage), {**details, "stage": stage, "fingerprint": stamp})


def read_stamp(stage_dir: Path, stage: str) -> dict[str, Any]:
    """The stored stamp of ``stage`` with its details; empty when there is none (or unreadable)."""
    try:
        stored = json.loads(stamp_path(stage_dir, stage).read_text())
    except (json.JSONDecodeError, OSError):
        return {}
    return stored if isinstance(stored, dict) else {}
