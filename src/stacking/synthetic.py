"""Synthetic inputs for the second level: a manifest, folds and first-level score tables.

The tables follow the contracts of the prepare, folds and score stages, so the stack, submit and
report stages can be tested and timed without audio or a trained model. Scores carry a real but
noisy speaker signal whose noise grows on short clips; same-speaker clips share a recording
device (sample rate, channels), so metadata carries signal too, as in the Zalo data.

Example
-------
>>> cfg = write_synthetic_inputs(Path("/tmp/synth"), n_test_pairs=100)  # doctest: +SKIP
>>> sorted(p.name for p in (cfg.paths.outputs / "cnn").iterdir())  # doctest: +SKIP
['oof_scores.csv', 'test_scores.csv']
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from src.config import ExperimentConfig, config_from_dict
from src.util.io import write_csv

log = logging.getLogger(__name__)

SAMPLE_RATES = np.array([8000, 16000, 22050, 44100, 48000])


def _clips(rng: np.random.Generator, speakers: np.ndarray, genders: np.ndarray, per: int) -> dict:
    """Per-clip arrays for ``per`` clips of every speaker (device fixed per speaker)."""
    n = speakers.size
    device_rate = rng.choice(SAMPLE_RATES, n)
    device_channels = rng.choice([1, 2], n, p=[0.8, 0.2])
    level = rng.normal(-24, 5, n)
    speaker = np.repeat(np.arange(n), per)
    rate = device_rate[speaker]
    # 1 in 5 clips comes from another device, so metadata is a hint, not an answer
    other = rng.random(speaker.size) < 0.2
    rate = np.where(other, rng.choice(SAMPLE_RATES, speaker.size), rate)
    duration = np.clip(rng.lognormal(np.log(3.5), 0.7, speaker.size), 0.4, 30.0)
    channels = device_channels[speaker]
    frames = np.round(duration * rate).astype(np.int64)
    return {
        "speaker_index": speaker,
        "speaker": speakers[speaker],
        "gender": genders[speaker],
        "duration": np.round(duration, 3),
        "sample_rate": rate,
        "channels": channels,
        "frames": frames,
        "bytes": frames * channels * 2 + 44,
        "rms_dbfs": level[speaker] + rng.normal(0, 2, speaker.size),
        "snr_db": rng.uniform(5, 40, speaker.size),
    }


def _pairs(rng: np.random.Generator, speaker: np.ndarray, n: int) -> pd.DataFrame:
    """Up to ``n`` distinct pairs of clip indices, half same-speaker, half different."""
    order = np.argsort(speaker, kind="stable")
    _, start, count = np.unique(speaker[order], return_index=True, return_counts=True)
    n_pos = n // 2
    drawn = 2 * n_pos  # oversample, then drop repeated pairs
    chosen = rng.integers(0, start.size, drawn)
    offset = rng.integers(0, count[chosen])
    partner = (offset + 1 + rng.integers(0, count[chosen] - 1)) % count[chosen]
    positives = (order[start[chosen] + offset], order[start[chosen] + partner])
    neg_a = rng.integers(0, speaker.size, 3 * (n - n_pos))
    neg_b = rng.integers(0, speaker.size, 3 * (n - n_pos))
    keep = speaker[neg_a] != speaker[neg_b]
    parts = []
    for (a, b), label, wanted in (
        (positives, 1, n_pos),
        ((neg_a[keep], neg_b[keep]), 0, n - n_pos),
    ):
        part = pd.DataFrame({"i1": a, "i2": b, "label": label})
        key = pd.DataFrame({"lo": np.minimum(a, b), "hi": np.maximum(a, b)})
        parts.append(part[~key.duplicated().to_numpy()].head(wanted))
    pairs = pd.concat(parts, ignore_index=True)
    return pairs.sample(frac=1.0, random_state=int(rng.integers(1 << 31))).reset_index(drop=True)


def _scores(rng: np.random.Generator, pairs: pd.DataFrame, clips: pd.DataFrame, models: int):
    """Cosine/AS-norm of ``models`` first-level models: shared pair noise + per-model noise."""
    shorter = np.minimum(
        clips["duration"].to_numpy()[pairs.i1], clips["duration"].to_numpy()[pairs.i2]
    )
    sigma = 0.08 + 0.25 / np.sqrt(shorter)
    base = 0.1 + 0.35 * pairs["label"].to_numpy() + sigma * rng.normal(size=len(pairs))
    cosine = base[:, None] + 0.05 * rng.normal(size=(len(pairs), models))
    asnorm = (cosine - 0.1) * 6 + 0.1 * rng.normal(size=cosine.shape)
    return cosine, asnorm


def _norms(clips: pd.DataFrame, pairs: pd.DataFrame, rng: np.random.Generator) -> dict:
    norm = 8 + np.log(clips["duration"].to_numpy()) + 0.3 * rng.normal(size=len(clips))
    cohort = 0.05 + 0.05 * rng.normal(size=len(clips))
    return {
        "q_norm_1": norm[pairs.i1],
        "q_norm_2": norm[pairs.i2],
        "q_cohort_1": cohort[pairs.i1],
        "q_cohort_2": cohort[pairs.i2],
    }


def _manifest(clips: pd.DataFrame, split: str, ids: list[str], names: list[str]) -> pd.DataFrame:
    test = split == "test"
    return pd.DataFrame(
        {
            "id": ids,
            "name": names,
            "path": ids,
            "split": split,
            "speaker": "" if test else clips["speaker"],
            "gender": "" if test else clips["gender"],
            "age": "" if test else "NA",
            "duration": clips["duration"],
            "sample_rate": clips["sample_rate"],
            "channels": clips["channels"],
            "frames": clips["frames"],
            "bytes": clips["bytes"],
            "md5": [f"{i:032x}" for i in range(len(clips))],
            "status": "ok",
            "rms_dbfs": clips["rms_dbfs"],
            "peak": 0.9,
            "snr_db": clips["snr_db"],
            "offset": 0,
            "length": 0,
        }
    )


def write_synthetic_inputs(
    root: Path,
    n_folds: int = 5,
    train_speakers: int = 200,
    test_speakers: int = 150,
    clips_per_speaker: int = 8,
    trials_per_fold: int = 1000,
    n_test_pairs: int = 2000,
    experiments: tuple[str, ...] = ("cnn",),
    gender_head: bool = False,
    test_labels: bool = True,
    seed: int = 0,
) -> ExperimentConfig:
    """Write a manifest, folds, score tables and ``public-test.csv`` under ``root``.

    Returns a config whose paths point there (``stack.experiments`` = ``experiments``).
    """
    rng = np.random.default_rng(seed)
    genders = rng.choice(["M", "F"], train_speakers + test_speakers)
    train_ids = np.array([f"{100 + s}-{genders[s]}-NA" for s in range(train_speakers)])
    train = pd.DataFrame(_clips(rng, train_ids, genders[:train_speakers], clips_per_speaker))
    test_ids = np.array([f"t{s}" for s in range(test_speakers)])
    test = pd.DataFrame(_clips(rng, test_ids, genders[train_speakers:], clips_per_speaker))
    train["id"] = [f"train/{s}/{s.split('-')[0]}-{i}.wav" for i, s in enumerate(train["speaker"])]
    test["name"] = [f"{i:06x}a.wav" for i in range(len(test))]
    manifest = pd.concat(
        [
            _manifest(train, "train", list(train["id"]), [p.split("/")[-1] for p in train["id"]]),
            _manifest(test, "test", [f"public-test/{n}" for n in test["name"]], list(test["name"])),
        ],
        ignore_index=True,
    )
    prep = root / "outputs" / "prep"
    write_csv(prep / "manifest.csv", manifest)

    fold_of_speaker = rng.permutation(train_speakers) % n_folds
    oof_parts = []
    for fold in range(n_folds):
        in_fold = np.flatnonzero(fold_of_speaker[train["speaker_index"]] == fold)
        pairs = _pairs(rng, train["speaker_index"].to_numpy()[in_fold], trials_per_fold)
        pairs["i1"], pairs["i2"] = in_fold[pairs.i1], in_fold[pairs.i2]
        trials = pd.DataFrame(
            {
                "audio_1": train["id"].to_numpy()[pairs.i1],
                "audio_2": train["id"].to_numpy()[pairs.i2],
            }
        ).assign(label=pairs["label"])
        write_csv(root / "folds" / f"trials_fold{fold}.csv", trials)
        oof_parts.append((fold, pairs, trials))

    test_pairs = _pairs(rng, test["speaker_index"].to_numpy(), n_test_pairs)
    names = test["name"].to_numpy()
    public = pd.DataFrame({"audio_1": names[test_pairs.i1], "audio_2": names[test_pairs.i2]})
    write_csv(root / "input" / "public-test.csv", public)
    if test_labels:
        write_csv(root / "input" / "public-test-labels.csv", public.assign(label=test_pairs.label))

    for exp in experiments:
        out = root / "outputs" / exp
        oof = []
        for fold, pairs, trials in oof_parts:
            cosine, asnorm = _scores(rng, pairs, train, 1)
            oof.append(
                trials.assign(fold=fold, cosine=cosine[:, 0], asnorm=asnorm[:, 0]).assign(
                    **_norms(train, pairs, rng)
                )
            )
        oof_frame = pd.concat(oof, ignore_index=True)
        cols = ["fold", "audio_1", "audio_2", "label", "cosine", "asnorm"]
        oof_frame = oof_frame[cols + [c for c in oof_frame.columns if c.startswith("q_")]]
        write_csv(out / "oof_scores.csv", oof_frame)
        cosine, asnorm = _scores(rng, test_pairs, test, n_folds)
        table = public.copy()
        for k in range(n_folds):
            table[f"cosine_fold{k}"] = cosine[:, k]
            table[f"asnorm_fold{k}"] = asnorm[:, k]
        table["cosine"], table["asnorm"] = cosine.mean(axis=1), asnorm.mean(axis=1)
        table = table.assign(**_norms(test, test_pairs, rng))
        write_csv(out / "test_scores.csv", table)
        if gender_head:
            for part, frame, ids in (("oof", train, train["id"]), ("test", test, test["name"])):
                truth = (frame["gender"] == "M").to_numpy(float)
                views = 1 if part == "oof" else n_folds  # one model per OOF clip, K on test
                logit = (2 * truth - 1)[:, None] * 3 + rng.normal(size=(len(frame), views))
                p_male = 1 / (1 + np.exp(-logit))
                table = pd.DataFrame({"id": ids, "p_male": p_male.mean(axis=1)})
                if part == "test":
                    table = table.assign(**{f"p_male_fold{k}": p_male[:, k] for k in range(views)})
                write_csv(out / f"gender_{part}.csv", table)

    return config_from_dict(
        {
            "experiment": experiments[0],
            "paths": {
                "input": str(root / "input"),
                "outputs": str(root / "outputs"),
                "folds": str(root / "folds"),
            },
            "folds": {"n_folds": n_folds},
            # score tables without embeddings: no trial graph to build
            "stack": {"experiments": list(experiments), "graph_features": False},
        }
    )


def benchmark(
    root: Path, n_test_pairs: int = 50000, trials_per_fold: int = 4000, num_threads: int = 0
) -> dict:
    """Time stack + submit (+ report) on synthetic inputs of competition size; seconds per step.

    Example: ``python -c "from pathlib import Path; from src.util.logs import setup_logging;
    setup_logging(); from src.stacking.synthetic import benchmark; benchmark(Path('/tmp/b'))"``
    """
    from src.report.report import report_stage

    from .stack import stack_stage
    from .submit import submit_stage

    cfg = write_synthetic_inputs(
        root,
        train_speakers=600,
        test_speakers=1500,
        clips_per_speaker=10,
        trials_per_fold=trials_per_fold,
        n_test_pairs=n_test_pairs,
        gender_head=True,
    )
    cfg.stack.num_threads = num_threads
    timings = {}
    for name, stage in (("stack", stack_stage), ("submit", submit_stage), ("report", report_stage)):
        started = time.perf_counter()
        stage(cfg)
        timings[name] = round(time.perf_counter() - started, 2)
    log.info(
        "timings (s) for %d test pairs, %d OOF trials: %s",
        n_test_pairs,
        5 * trials_per_fold,
        timings,
    )
    return timings
