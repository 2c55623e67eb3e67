"""Read decoded audio from the `prepare` cache: one int16 memory map, no file opens per clip.

Example
-------
>>> cache = AudioCache("outputs/prep")  # doctest: +SKIP
>>> cache.samples("train/103-F-NA/103-1.wav").dtype  # doctest: +SKIP
dtype('float32')
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from src.data.audio import from_int16

CACHE_NAME = "audio.int16"  # the int16 cache of every decoded clip, in the prep folder

TEXT_COLUMNS = ["id", "name", "path", "split", "speaker", "gender", "age", "md5", "status",
                "duplicate_of", "downmix"]  # fmt: skip


def read_manifest(prep_dir: str | Path) -> pd.DataFrame:
    """The manifest with text columns kept as text (``NA`` ages stay the string ``NA``)."""
    path = Path(prep_dir) / "manifest.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run the prepare stage first")
    dtypes = dict.fromkeys(TEXT_COLUMNS, str)
    return pd.read_csv(path, dtype=dtypes, keep_default_na=False)


class AudioCache:
    """Decoded clips by manifest id, read from the memory-mapped int16 cache."""

    def __init__(self, prep_dir: str | Path, manifest: pd.DataFrame | None = None) -> None:
        prep_dir = Path(prep_dir)
        self.manifest = manifest if manifest is not None else read_manifest(prep_dir)
        cache_path = prep_dir / CACHE_NAME
        if not cache_path.is_file():
            raise FileNotFoundError(f"{cache_path} not found: run the prepare stage first")
        size = cache_path.stat().st_size // 2
        self._data = (
            np.memmap(cache_path, dtype=np.int16, mode="r", shape=(size,))
            if size
            else np.zeros(0, np.int16)
        )
        self._where = {
            row_id: (int(offset), int(length))
            for row_id, offset, length in zip(
                self.manifest["id"], self.manifest["offset"], self.manifest["length"], strict=True
            )
        }
        ends = self.manifest["offset"] + self.manifest["length"]
        needed = int(ends.max()) if len(ends) else 0
        if needed > size:
            raise RuntimeError(
                f"{cache_path} holds {size} samples but the manifest needs {needed}: the cache "
                "does not belong to this manifest; rerun `prepare --force`"
            )

    def __contains__(self, clip_id: str) -> bool:
        return clip_id in self._where

    def length(self, clip_id: str) -> int:
        return self._where[clip_id][1]

    def raw(self, clip_id: str, start: int = 0, count: int | None = None) -> np.ndarray:
        """int16 samples of a clip (a view into the memory map)."""
        if clip_id not in self._where:
            raise KeyError(f"{clip_id!r} is not in the audio cache (check the manifest)")
        offset, length = self._where[clip_id]
        count = length - start if count is None else min(count, length - start)
        return self._data[offset + start : offset + start + count]

    def samples(self, clip_id: str) -> np.ndarray:
        """The whole clip as float32 in [-1, 1]."""
        return from_int16(self.raw(clip_id))

    def crop(self, clip_id: str, n_samples: int, rng: np.random.Generator) -> np.ndarray:
        """A random ``n_samples`` crop; shorter clips are repeated to fill it."""
        length = self.length(clip_id)
        if length >= n_samples:
            start = int(rng.integers(0, length - n_samples + 1))
            return from_int16(self.raw(clip_id, start, n_samples))
        clip = from_int16(self.raw(clip_id))
        reps = -(-n_samples // length)
        start = int(rng.integers(0, length))
        return np.tile(clip, reps + 1)[start : start + n_samples]
