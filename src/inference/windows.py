"""Cutting clips into embedding windows and batching equal-length windows together.

A clip longer than the window is covered by windows every ``hop`` samples plus one aligned to
its end; a shorter clip is one window of its own length, rounded down to a multiple of 0.1 s so
that clips of similar length share a batch. A clip under two such quanta (0.2 s) keeps every
sample: rounding would drop up to half of a short clip's speech (a 0.19 s clip embedded from
0.1 s), and such clips are few.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from src.config import EmbedConfig


@dataclass(frozen=True)
class Window:
    clip: int  # index of the clip in the caller's list
    start: int
    length: int


def clip_windows(n_samples: int, cfg: EmbedConfig, sample_rate: int, clip: int = 0) -> list[Window]:
    """Windows of one clip (at least one).

    >>> from src.config import EmbedConfig
    >>> [w.length for w in clip_windows(2400, EmbedConfig(mode="full"), 16000)]  # 0.15 s
    [2400]
    >>> [w.length for w in clip_windows(5000, EmbedConfig(mode="full"), 16000)]  # 0.3125 s
    [4800]
    """
    quantum = sample_rate // 10
    window = int(cfg.window_seconds * sample_rate)
    if n_samples < 2 * quantum and (cfg.mode == "full" or n_samples <= window):
        return [Window(clip, 0, n_samples)]
    if cfg.mode == "full":
        return [Window(clip, 0, n_samples - n_samples % quantum)]
    hop = max(1, int(cfg.hop_seconds * sample_rate))
    if n_samples <= window:
        return [Window(clip, 0, n_samples - n_samples % quantum)]
    starts = list(range(0, n_samples - window + 1, hop))
    if starts[-1] != n_samples - window:
        starts.append(n_samples - window)
    return [Window(clip, s, window) for s in starts]


def batches_by_length(windows: list[Window], max_samples: int) -> Iterator[list[Window]]:
    """Group windows of equal length into batches of at most ``max_samples`` samples in all."""
    groups: dict[int, list[Window]] = defaultdict(list)
    for w in windows:
        groups[w.length].append(w)
    for length in sorted(groups, reverse=True):
        group = groups[length]
        per_batch = max(1, max_samples // max(length, 1))
        for i in range(0, len(group), per_batch):
            yield group[i : i + per_batch]


def energy_mask(wave_rms_db: np.ndarray, drop_below_db: float | None) -> np.ndarray:
    """Keep windows whose level is within ``drop_below_db`` dB of the loudest (at least one)."""
    if drop_below_db is None or wave_rms_db.size == 0:
        return np.ones(wave_rms_db.size, dtype=bool)
    keep = wave_rms_db >= wave_rms_db.max() - drop_below_db
    keep[np.argmax(wave_rms_db)] = True
    return keep
