"""The config reference, generated from the typed config: every key, its type, default, meaning.

``python -m src show-config --explain`` prints it; ``configs/REFERENCE.md`` is a copy that a
test keeps current.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel

from src.config import ExperimentConfig

# meanings of the keys whose Field carries no description (one place for the reference)
MEANINGS: dict[str, str] = {
    "experiment": "experiment name: the first-level folder under paths.outputs",
    "seed": "seed of every random choice (folds, trials, training, stacking)",
    "paths.input": "data folder in the Zalo layout",
    "paths.outputs": "where every stage writes",
    "paths.folds": "where fold splits and trial lists go (one subfolder per folds setting)",
    "paths.prep": "manifest and decoded-audio cache; default <outputs>/prep",
    "data.sample_rate": "rate every clip is resampled to (Hz)",
    "data.train_dir": "training folder inside paths.input",
    "data.test_dir": "test audio folder inside paths.input",
    "data.test_csv": "test pair list inside paths.input (audio_1,audio_2)",
    "data.extensions": "audio file endings read; others are listed as skipped",
    "folds.n_folds": "number of speaker-disjoint folds",
    "features.kaldi.window": "analysis window of each frame (WeSpeaker uses hamming)",
    "features.kaldi.low_freq": "lowest edge of the mel filters (Hz)",
    "features.kaldi.preemphasis": "pre-emphasis coefficient within each frame; 0 = off",
    "features.kaldi.remove_dc_offset": "subtract each frame's mean before pre-emphasis",
    "train.large_margin.enabled": "run the large-margin phase after training (run <run>_lmft)",
    "train.large_margin.epochs": "epochs of the large-margin phase",
    "train.large_margin.crop_seconds": "crop length range of the phase (seconds)",
    "train.large_margin.margin": "margin of the head during the phase, from its first step",
    "train.large_margin.lr": "peak learning rate of the phase",
    "folds.positive_share": "share of same-speaker trials per fold",
    "folds.same_gender_negative_share": "share of different-speaker trials of one gender",
    "folds.pairs_per_file_min": "fewest trials a clip appears in (target)",
    "folds.pairs_per_file_max": "most trials a clip appears in (target, log-uniform between)",
    "folds.max_trials_per_fold": "cap on trials per fold",
    "features.n_mels": "mel bins of the log-mel front-end",
    "features.win_ms": "analysis window (ms)",
    "features.hop_ms": "frame shift (ms)",
    "features.n_fft": "FFT size",
    "features.fmin": "lowest mel frequency (Hz)",
    "features.fmax": "highest mel frequency (Hz); null = Nyquist",
    "features.specaugment.freq_masks": "SpecAugment frequency masks per example (training)",
    "features.specaugment.freq_width": "widest frequency mask (bins)",
    "features.specaugment.time_masks": "SpecAugment time masks per example (training)",
    "features.specaugment.time_width": "widest time mask (frames)",
    "augment.enabled": "waveform augmentation in training (audiomentations)",
    "augment.noise_p": "probability of added Gaussian noise",
    "augment.noise_snr_db": "SNR range of added noise (dB)",
    "augment.colored_noise_p": "probability of coloured noise",
    "augment.gain_p": "probability of a gain change",
    "augment.gain_db": "gain range (dB)",
    "augment.bandpass_p": "probability of a band-pass filter",
    "augment.lowpass_p": "probability of a low-pass filter",
    "augment.reverb_p": "probability of reverberation",
    "augment.impulse_dir": "folder of real impulse responses; null = simulated",
    "augment.background_dir": "folder of background noises; null = none",
    "augment.background_p": "probability of background noise when background_dir is set",
    "extractor.kind": "first-level model: cnn (trained per fold) or resemblyzer (pretrained)",
    "model.backbone": "timm backbone name",
    "model.pretrained": "ImageNet weights (opt-in; fails offline with a clear message)",
    "model.stem": "speaker stem (1 input channel, configurable stride) or timm's own",
    "model.pooling": "statistics or attentive statistics pooling over time",
    "model.embedding_dim": "embedding size",
    "model.drop_rate": "dropout before the embedding layer",
    "head.kind": "margin head: additive angular margin, sub-centre AAM or softmax",
    "head.margin": "angular margin (radians)",
    "head.scale": "logit scale",
    "head.subcenters": "sub-centres per speaker (subcenter_aam)",
    "head.margin_warmup_epochs": "epochs over which the margin grows from 0",
    "head.softmax_logits": "softmax head: cosine or linear logits",
    "train.epochs": "epochs (the fixed schedule with selection=average, a cap with holdout)",
    "train.batch_size": "clips per batch",
    "train.utterances_per_speaker": "clips of each speaker in a batch",
    "train.steps_per_epoch": "batches per epoch; null = about one pass over the clips",
    "train.crop_seconds": "random crop length range (s)",
    "train.optimizer": "adamw or sgd (Nesterov momentum 0.9)",
    "train.lr": "peak learning rate",
    "train.weight_decay": "weight decay",
    "train.scheduler": "learning-rate schedule after warm-up",
    "train.warmup_epochs": "linear warm-up (epochs)",
    "train.grad_clip": "gradient norm clip; 0 = off",
    "train.amp": "mixed precision on CUDA",
    "train.device": "auto (CUDA when present), cpu or cuda[:n]",
    "train.workers": "data-loader worker processes",
    "train.val_max_trials": "cap on validation trials (selection=holdout)",
    "embed.mode": "embed whole clips or average sliding windows",
    "embed.window_seconds": "window length (s)",
    "embed.hop_seconds": "window hop (s)",
    "embed.drop_low_energy_db": "drop windows this many dB below the clip's loudest; null = keep",
    "embed.batch_seconds": "audio per embedding batch (s); changes speed, not results",
    "score.asnorm_top_k": "cohort scores averaged by AS-norm (top k)",
    "stack.experiments": "first-level runs (folders) to stack; empty = this config's run",
    "stack.model": "second-level model: LightGBM, logistic regression, or blend (both averaged)",
    "stack.num_leaves": "LightGBM leaves per tree",
    "stack.learning_rate": "LightGBM learning rate",
    "stack.n_estimators": "LightGBM rounds (cap; early stopping picks fewer)",
    "stack.early_stopping_rounds": "LightGBM early stopping patience (rounds)",
    "stack.min_child_samples": "LightGBM minimum rows per leaf",
    "stack.use_metadata": "pair metadata features (durations, sizes, loudness, ...)",
    "stack.average": "one stacker over all runs (none) or one per run, averaged",
    "stack.test_scores": "fold k's stacker on fold k's test view (per_fold) or on fold means",
    "stack.feature_fraction": "LightGBM feature fraction per tree",
    "stack.adversarial_warn_auc": "warn when OOF and test pairs separate above this AUC",
    "submit.policy": "threshold: balanced share, best OOF accuracy, or OOF EER",
    "submit.positive_share": "share of pairs labelled same-speaker (balanced policy)",
    "submit.source": "label the stack's or one first-level run's scores",
    "submit.experiment": "source=first_level: which run (default: this config's)",
    "submit.score": "source=first_level: which score column",
    "serve.host": "address the API listens on",
    "serve.port": "port the API listens on",
    "serve.max_upload_mb": "largest upload (MB); larger is refused with 413",
    "serve.max_seconds": "longest clip accepted (s)",
}


def _type_name(annotation: Any) -> str:
    text = (
        getattr(annotation, "__name__", None) if not getattr(annotation, "__args__", None) else None
    )
    text = text or str(annotation)
    text = re.sub(r"\b(typing|pathlib|src\.config)\.", "", text)
    return text.replace("NoneType", "None").replace("|", "or")


def _default(value: Any) -> str:
    if isinstance(value, BaseModel):
        return ""
    return "null" if value is None else f"`{value}`"


def _rows(model: type[BaseModel], prefix: str = "") -> list[tuple[str, str, str, str]]:
    rows = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            rows.extend(_rows(annotation, f"{key}."))
            continue
        meaning = (field.description or MEANINGS.get(key, "")).replace("|", "/")
        rows.append((key, _type_name(annotation), _default(field.default), meaning))
    return rows


def undocumented_keys() -> list[str]:
    """Config keys with no meaning in the reference (a test keeps this empty)."""
    return [key for key, _, _, meaning in _rows(ExperimentConfig) if not meaning]


def config_reference() -> str:
    """Markdown tables, one per config section, generated from :class:`ExperimentConfig`."""
    lines = [
        "# Config reference",
        "",
        "Generated by `python -m src show-config --explain` from `src/config.py`; every key a",
        "YAML config or a `key.sub=value` override may set. Unknown keys are an error.",
        "",
    ]
    sections: dict[str, list[tuple[str, str, str, str]]] = {}
    for row in _rows(ExperimentConfig):
        section = row[0].split(".")[0] if "." in row[0] else "top level"
        sections.setdefault(section, []).append(row)
    for section, rows in sections.items():
        lines += [f"## {section}", "", "| key | type | default | meaning |", "|---|---|---|---|"]
        lines += [f"| `{k}` | {t} | {d} | {m} |" for k, t, d, m in rows]
        lines.append("")
    return "\n".join(lines)
