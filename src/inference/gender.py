"""Predicted gender of clips from a fold model's auxiliary gender head (a stacking feature).

When a CNN was trained with ``head.gender_weight > 0``, its ``best.pt`` holds the gender head.
The embed stage writes ``fold{k}/gender.csv`` (id, p_male) for the fold's OOF and test clips; the
score stage gathers them into ``gender_oof.csv`` (each OOF clip by its own fold's model) and
``gender_test.csv`` (``p_male_fold{k}`` per fold model, and their mean ``p_male``), which the
stacker turns into a gender-agreement feature: fold k's stacker sees fold k's own predictions on
test, as it saw one model's predictions on its OOF rows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from src.config import EmbedConfig
from src.inference.extractors import ModuleExtractor
from src.inference.windows import batches_by_length, clip_windows
from src.model_zoo import GenderHead
from src.training.checkpoint import load_checkpoint


def load_gender_head(checkpoint_path: Path, dim: int) -> GenderHead | None:
    """The gender head saved with a fold model, or None when it was trained without one."""
    state = load_checkpoint(checkpoint_path)
    if "gender" not in state:
        return None
    head = GenderHead(dim)
    head.load_state_dict(state["gender"])
    return head.eval()


@torch.inference_mode()
def male_probabilities(
    extractor: ModuleExtractor, head: GenderHead, clips, ids: list[str], sample_rate: int
) -> np.ndarray:
    """p(male) of each whole clip (one forward pass per clip, batched by length)."""
    full = EmbedConfig(mode="full")
    windows = [
        w for i, c in enumerate(ids) for w in clip_windows(clips.length(c), full, sample_rate, i)
    ]
    probabilities = np.zeros(len(ids), dtype=np.float32)
    head = head.to(extractor.device)
    for batch in batches_by_length(windows, int(full.batch_seconds * sample_rate)):
        waves = np.stack([clips.samples(ids[w.clip])[: w.length] for w in batch])
        inputs = torch.from_numpy(waves).to(extractor.device)
        logits = head.linear(extractor.raw(inputs))  # (batch, 2): female, male
        male = torch.softmax(logits, dim=1)[:, 1].cpu().numpy()
        probabilities[[w.clip for w in batch]] = male
    return probabilities


def gather_gender_tables(fold_tables: list[pd.DataFrame]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """OOF rows of every fold; test rows with one column per fold model and their mean."""
    tables = pd.concat([t.assign(fold=k) for k, t in enumerate(fold_tables)])
    oof = tables[tables["role"] == "oof"][["id", "p_male"]]
    test_rows = tables[tables["role"] == "test"]
    test = test_rows.pivot_table(index="id", columns="fold", values="p_male", sort=False)
    test.columns = [f"p_male_fold{k}" for k in test.columns]
    test.insert(0, "p_male", test.mean(axis=1))
    return oof.reset_index(drop=True), test.reset_index()
