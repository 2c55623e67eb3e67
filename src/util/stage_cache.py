"""Skip finished stages: a stage stores a fingerprint of its inputs and config with its outputs.

A rerun whose fingerprint matches the stored one (and whose outputs still exist) is skipped; any
change of an input file (size or modification time) or of the config section redoes the stage.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from src.util.io import write_json

STAMP_NAME = ".stage.json"


def file_signature(path: Path) -> list[Any]:
    """Cheap identity of a file: name, size and modification time in nanoseconds."""
    stat = path.stat()
    return [str(path), stat.st_size, stat.st_mtime_ns]


def fingerprint(*parts: Any) -> str:
    """Stable SHA-256 of JSON-serialisable parts (paths and other objects become strings)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def files_fingerprint(paths: Iterable[Path]) -> str:
    return fingerprint([file_signature(p) for p in sorted(paths) if p.exists()])


def is_fresh(stage_dir: Path, stage: str, stamp: str, outputs: Iterable[Path] = ()) -> bool:
    """True when ``stage_dir`` holds a stamp for ``stage`` equal to ``stamp`` and all outputs."""
    stamp_file = stage_dir / f"{STAMP_NAME[:-5]}.{stage}.json"
    if not stamp_file.is_file():
        return False
    try:
        stored = json.loads(stamp_file.read_text()).get("fingerprint")
    except (json.JSONDecodeError, OSError):
        return False
    return stored == stamp and all(Path(p).exists() for p in outputs)


def mark_done(stage_dir: Path, stage: str, stamp: str) -> None:
    write_json(
        stage_dir / f"{STAMP_NAME[:-5]}.{stage}.json", {"stage": stage, "fingerprint": stamp}
    )
