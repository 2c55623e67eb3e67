"""Checkpoints: written atomically, loaded with a clear error when missing or unreadable."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from src.util.io import write_with


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """``torch.save`` to a temporary file, then rename: never a half-written checkpoint."""
    write_with(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found: train this fold first")
    try:
        return torch.load(path, map_location=device, weights_only=False)
    except Exception as err:  # truncated zip, foreign bytes (UnpicklingError), I/O error, ...
        raise RuntimeError(
            f"checkpoint {path} is unreadable ({err}); retrain with --force"
        ) from None
