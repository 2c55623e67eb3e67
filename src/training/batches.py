"""Speaker-balanced training batches of random-length crops, reproducible by (seed, epoch, step).

Each batch holds ``batch_size // utterances_per_speaker`` speakers with that many clips each, one
crop length per batch drawn from ``crop_seconds``. A batch is a pure function of its seed,
epoch and step, so data loader workers, ranks and resumed runs all see the same batches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch.utils.data import IterableDataset, get_worker_info

from src.config import TrainConfig
from src.data.cache import AudioCache


@dataclass(frozen=True)
class TrainingSet:
    """Training clips with contiguous speaker labels 0..S-1."""

    ids: np.ndarray  # (clips,)
    labels: np.ndarray  # (clips,) speaker index
    genders: np.ndarray  # (clips,) 1 male, 0 female, -1 unknown
    speakers: list[str]

    @classmethod
    def from_files(cls, files: pd.DataFrame) -> TrainingSet:
        files = files.sort_values("id", kind="mergesort")
        speakers = sorted(files["speaker"].unique())
        index = {s: i for i, s in enumerate(speakers)}
        gender_code = files["gender"].map({"M": 1, "F": 0}).fillna(-1).astype(np.int64)
        return cls(
            ids=files["id"].to_numpy(),
            labels=files["speaker"].map(index).to_numpy(np.int64),
            genders=gender_code.to_numpy(),
            speakers=speakers,
        )

    def clips_by_speaker(self) -> list[np.ndarray]:
        return [np.flatnonzero(self.labels == s) for s in range(len(self.speakers))]


class BalancedBatches(IterableDataset):
    """Iterable of ``(waveforms, speaker_labels, gender_labels)`` batches for one epoch.

    ``steps`` are the global step numbers this dataset yields (a rank's share under DDP);
    data loader workers split them further, so every step is produced exactly once.
    :meth:`set_epoch` moves to another epoch; the epoch lives in shared memory, so loader
    workers kept alive across epochs (``persistent_workers``) read the new one when the next
    pass over the loader starts.
    """

    def __init__(
        self,
        data: TrainingSet,
        cache: AudioCache,
        cfg: TrainConfig,
        sample_rate: int,
        seed: int,
        epoch: int,
        steps: list[int],
        augment: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> None:
        super().__init__()
        self.data, self.cache, self.cfg = data, cache, cfg
        self.sample_rate, self.seed, self.steps = sample_rate, seed, steps
        self._epoch = torch.tensor([epoch], dtype=torch.int64).share_memory_()
        self.augment = augment
        self.by_speaker = data.clips_by_speaker()

    @property
    def epoch(self) -> int:
        return int(self._epoch[0])

    def set_epoch(self, epoch: int) -> None:
        """Draw the batches of ``epoch`` from the next pass on (in every loader worker)."""
        self._epoch[0] = epoch

    def __len__(self) -> int:
        return len(self.steps)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        worker = get_worker_info()
        steps = self.steps if worker is None else self.steps[worker.id :: worker.num_workers]
        for step in steps:
            yield self.batch(step)

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.epoch, step])
        per_speaker = self.cfg.utterances_per_speaker
        n_speakers = min(len(self.by_speaker), max(1, self.cfg.batch_size // per_speaker))
        speakers = rng.choice(len(self.by_speaker), size=n_speakers, replace=False)
        low, high = self.cfg.crop_seconds
        n_samples = int(rng.uniform(low, high) * self.sample_rate)
        clips = []
        for speaker in speakers:
            pool = self.by_speaker[speaker]
            chosen = rng.choice(pool, size=per_speaker, replace=pool.size < per_speaker)
            clips.extend(int(c) for c in chosen)
        if self.augment is not None:  # audiomentations draws from the global generators
            np.random.seed(rng.integers(2**31))
            import random

            random.seed(int(rng.integers(2**31)))
        waves = np.stack([self._crop(c, n_samples, rng) for c in clips])  # (batch, samples)
        return (
            torch.from_numpy(waves),
            torch.from_numpy(self.data.labels[clips]),
            torch.from_numpy(self.data.genders[clips]),
        )

    def _crop(self, clip: int, n_samples: int, rng: np.random.Generator) -> np.ndarray:
        wave = self.cache.crop(self.data.ids[clip], n_samples, rng)
        if self.augment is not None:
            wave = self.augment(wave)
        return np.ascontiguousarray(wave, dtype=np.float32)


def steps_per_epoch(cfg: TrainConfig, n_clips: int) -> int:
    """Configured steps per epoch, else enough batches to see every clip about once."""
    return cfg.steps_per_epoch or max(1, n_clips // cfg.batch_size)
