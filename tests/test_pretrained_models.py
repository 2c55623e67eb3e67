"""Bring-your-own pretrained models: Kaldi fbank, WeSpeaker ResNet layout, ONNX, GE2E."""

from __future__ import annotations

from pathlib import Path

import kaldi_native_fbank as knf
import numpy as np
import pytest
import torch

from src.config import ExperimentConfig, FeaturesConfig, load_config
from src.features.kaldi_fbank import KaldiFbank
from src.inference.extractors import build_extractor
from src.inference.resemblyzer_backend import resemblyzer_available
from src.model_zoo import build_embedder
from src.model_zoo.wespeaker_resnet import WeSpeakerResNet
from src.util.stage_cache import file_digest
from tests.fixtures.speech import speech_like


def reference_fbank(wave: np.ndarray, window: str, n_mels: int) -> np.ndarray:
    options = knf.FbankOptions()
    options.frame_opts.dither = 0.0
    options.frame_opts.samp_freq = 16000
    options.frame_opts.window_type = window
    options.mel_opts.num_bins = n_mels
    options.mel_opts.low_freq = 20.0
    options.mel_opts.high_freq = 0.0
    fbank = knf.OnlineFbank(options)
    fbank.accept_waveform(16000, (wave * 32768).tolist())
    fbank.input_finished()
    return np.stack([fbank.get_frame(i) for i in range(fbank.num_frames_ready)])


@pytest.mark.parametrize(("window", "n_mels"), [("hamming", 80), ("povey", 80), ("hanning", 40)])
def test_kaldi_fbank_matches_kaldi_native_fbank(window: str, n_mels: int) -> None:
    wave = speech_like(2.37, seed=3)
    cfg = FeaturesConfig(
        frontend="kaldi_fbank", n_mels=n_mels, kaldi={"window": window, "cmn": False}
    )
    ours = KaldiFbank(cfg, 16000).eval()(torch.from_numpy(wave)[None])[0].numpy()
    reference = reference_fbank(wave, window, n_mels)
    assert ours.shape == reference.shape
    difference = float(np.abs(ours - reference).max())
    print(f"kaldi fbank ({window}, {n_mels} bins) vs kaldi-native-fbank: {difference:.2e}")
    assert difference < 1e-3


def test_kaldi_fbank_dithers_in_training_only_and_removes_the_mean() -> None:
    fbank = KaldiFbank(FeaturesConfig(frontend="kaldi_fbank"), 16000)
    wave = torch.from_numpy(speech_like(1.0))[None]
    eval_out = fbank.eval()(wave)
    torch.testing.assert_close(eval_out, fbank(wave))  # deterministic at inference
    torch.testing.assert_close(eval_out.mean(dim=1), torch.zeros(1, 80), atol=1e-4, rtol=0)
    assert not torch.equal(fbank.train()(wave), eval_out)


def wespeaker_config(tmp_path: Path, *overrides: str) -> ExperimentConfig:
    return load_config(
        None,
        [
            "model.architecture=wespeaker_resnet34",
            "features.frontend=kaldi_fbank",
            "features.n_mels=80",
            "model.embedding_dim=256",
            "extractor.kind=pretrained",
            "train.device=cpu",
            f"paths.outputs={tmp_path}",
            *overrides,
        ],
    )


UPSTREAM_KEYS = (  # a sample of WeSpeaker ResNet34 parameter names
    "conv1.weight",
    "bn1.running_mean",
    "layer1.2.conv2.weight",
    "layer2.0.shortcut.0.weight",
    "layer2.0.shortcut.1.num_batches_tracked",
    "layer3.5.bn2.bias",
    "layer4.2.conv1.weight",
    "seg_1.weight",
    "seg_1.bias",
)


@pytest.fixture(scope="module")
def wespeaker_checkpoint(tmp_path_factory) -> Path:
    """A randomly initialised ResNet34 saved as WeSpeaker saves avg_model.pt (with its head)."""
    torch.manual_seed(0)
    weights = WeSpeakerResNet(depth=34, feat_dim=80, embed_dim=256).state_dict()
    weights["projection.weight"] = torch.randn(10, 256)  # the upstream margin head
    path = tmp_path_factory.mktemp("wespeaker") / "avg_model.pt"
    torch.save(weights, path)
    return path


def test_wespeaker_layout_loads_strictly(wespeaker_checkpoint: Path, tmp_path: Path) -> None:
    saved = torch.load(wespeaker_checkpoint, weights_only=True)
    assert set(UPSTREAM_KEYS) <= set(saved)
    assert (
        len([k for k in saved if k.startswith("layer")]) == 16 * 12 + 3 * 6
    )  # 16 blocks, 3 shortcuts
    cfg = wespeaker_config(
        tmp_path,
        f"model.weights={wespeaker_checkpoint}",
        f"model.weights_sha256={file_digest(wespeaker_checkpoint)}",
    )
    extractor = build_extractor(cfg, 0)
    encoder = extractor.model.encoder
    for name, value in encoder.state_dict().items():
        torch.testing.assert_close(value, saved[name])
    assert set(encoder.state_dict()) == set(saved) - {"projection.weight"}
    wave = np.stack([speech_like(2.0, seed=1), speech_like(2.0, seed=2)])
    first, again = extractor.embed(wave), extractor.embed(wave)
    np.testing.assert_array_equal(first, again)  # deterministic
    assert first.shape == (2, 256) and extractor.fold_independent


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("features.n_mels=64", "trained on 80 fbank bins .* set features.n_mels=80"),
        ("model.embedding_dim=192", "gives 256-d embeddings.* set model.embedding_dim=256"),
        ("model.weights_sha256=" + "ab" * 32, "has sha256 .* a different or damaged file"),
        ("model.wespeaker_channels=64", "first stage of 32 channels"),
    ],
)
def test_wespeaker_weights_that_do_not_fit_are_refused(
    wespeaker_checkpoint: Path, tmp_path: Path, override: str, message: str
) -> None:
    cfg = wespeaker_config(tmp_path, f"model.weights={wespeaker_checkpoint}", override)
    with pytest.raises(ValueError, match=message):
        build_extractor(cfg, 0)


def test_missing_or_absent_weights_say_what_was_expected(tmp_path: Path) -> None:
    missing = wespeaker_config(tmp_path, f"model.weights={tmp_path / 'nope.pt'}")
    with pytest.raises(FileNotFoundError, match="does not exist; expected a WeSpeaker ResNet"):
        build_extractor(missing, 0)
    with pytest.raises(ValueError, match="none are configured"):
        build_extractor(wespeaker_config(tmp_path), 0)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable torch checkpoint"):
        build_extractor(wespeaker_config(tmp_path, f"model.weights={junk}"), 0)


def export_onnx(encoder: torch.nn.Module, path: Path, n_mels: int) -> None:
    torch.onnx.export(
        encoder.eval(),
        (torch.randn(2, 120, n_mels),),
        str(path),
        input_names=["feats"],
        output_names=["embs"],
        dynamic_axes={"feats": {0: "batch", 1: "frames"}, "embs": {0: "batch"}},
        dynamo=False,
    )


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(1)
    encoder = WeSpeakerResNet(depth=18, feat_dim=40, embed_dim=64, m_channels=8).eval()
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    export_onnx(encoder, path, 40)
    return path, encoder


def onnx_config(tmp_path: Path, path: Path, *overrides: str) -> ExperimentConfig:
    return load_config(
        None,
        [
            "extractor.kind=onnx",
            f"extractor.path={path}",
            "extractor.dim=64",
            "extractor.threads=1",
            "features.frontend=kaldi_fbank",
            "features.n_mels=40",
            f"paths.outputs={tmp_path}",
            *overrides,
        ],
    )


def test_onnx_extractor_matches_the_torch_model(onnx_model, tmp_path: Path) -> None:
    path, encoder = onnx_model
    extractor = build_extractor(
        onnx_config(tmp_path, path, f"extractor.sha256={file_digest(path)}"), 0
    )
    waves = np.stack([speech_like(1.7, seed=s) for s in range(3)])
    front_end = KaldiFbank(FeaturesConfig(frontend="kaldi_fbank", n_mels=40), 16000).eval()
    with torch.inference_mode():
        expected = torch.nn.functional.normalize(encoder(front_end(torch.from_numpy(waves))), dim=1)
    got = extractor.embed(waves)
    difference = float(np.abs(got - expected.numpy()).max())
    print(f"onnx extractor vs torch: max abs diff {difference:.2e}")
    assert difference < 1e-4 and extractor.fold_independent


@pytest.mark.parametrize(
    ("override", "error", "message"),
    [
        ("features.n_mels=80", ValueError, "takes 40 fbank bins, but features.n_mels is 80"),
        ("extractor.dim=256", ValueError, r"embeddings of shape \(64,\) .* extractor.dim is 256"),
        ("extractor.input_name=x", ValueError, r"has no input 'x' \(it has \['feats'\]\)"),
        ("extractor.sha256=" + "cd" * 32, ValueError, "a different or damaged file"),
    ],
)
def test_onnx_models_that_do_not_fit_are_refused(
    onnx_model, tmp_path: Path, override: str, error: type, message: str
) -> None:
    with pytest.raises(error, match=message):
        build_extractor(onnx_config(tmp_path, onnx_model[0], override), 0)


def test_missing_onnx_file_says_what_was_expected(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist; expected an ONNX speaker model"):
        build_extractor(onnx_config(tmp_path, tmp_path / "absent.onnx"), 0)


needs_resemblyzer = pytest.mark.skipif(
    not resemblyzer_available(), reason="optional resemblyzer extra not installed"
)


@needs_resemblyzer
def test_ge2e_before_fine_tuning_gives_the_frozen_embeddings(tmp_path: Path) -> None:
    """The trainable GE2E (front-end inside) equals Resemblyzer's own encoder on the same
    windows, volume-normalised as Resemblyzer's preprocessing does."""
    from resemblyzer import VoiceEncoder
    from resemblyzer.audio import normalize_volume

    from src.training.train import TrainingModule

    cfg = load_config(None, ["model.architecture=ge2e", "model.pretrained=true"])
    model = TrainingModule(cfg, n_speakers=4).model.eval()
    reference = VoiceEncoder("cpu", verbose=False)
    for seconds, level in ((0.9, 0.01), (2.0, 0.2), (4.3, 0.05)):
        wave = speech_like(seconds, seed=int(seconds * 10), level=level)
        with torch.inference_mode():
            ours = torch.nn.functional.normalize(model(torch.from_numpy(wave)[None]), dim=1)[0]
        frozen = reference.embed_utterance(normalize_volume(wave, -30, increase_only=True))
        np.testing.assert_allclose(ours.numpy(), frozen, atol=1e-5)


def test_ge2e_refuses_settings_it_cannot_take() -> None:
    cfg = load_config(None, ["model.architecture=ge2e", "model.embedding_dim=128"])
    with pytest.raises(ValueError, match="model.embedding_dim=256"):
        build_embedder(cfg.features, cfg.model, cfg.data.sample_rate)


@pytest.mark.parametrize("kind", ["onnx", "pretrained"])
def test_frozen_experiment_flows_through_scoring_and_serving(
    onnx_model, tmp_path: Path, kind: str
) -> None:
    """An ONNX or frozen WeSpeaker first level gives the usual OOF/test score files, and the
    API serves it."""
    import shutil

    import pandas as pd

    from src.inference.embed import embed_stage
    from src.inference.score import score_stage
    from tests.conftest import prepare_tiny
    from tests.fixtures.bundle import bundle_of

    path = shutil.copyfile(onnx_model[0], tmp_path / "model.onnx")  # this test removes it
    encoder = onnx_model[1]
    weights = tmp_path / "small_resnet18.pt"
    torch.save(encoder.state_dict(), weights)
    settings = {
        "onnx": [f"extractor.path={path}", "extractor.dim=64", "extractor.threads=1"],
        "pretrained": [
            "model.architecture=wespeaker_resnet18",
            "model.wespeaker_channels=8",
            f"model.weights={weights}",
        ],
    }[kind]
    cfg = prepare_tiny(
        tmp_path,
        f"extractor.kind={kind}",
        *settings,
        "model.embedding_dim=64",
        "features.frontend=kaldi_fbank",
        "score.asnorm_top_k=3",
    )
    for fold in range(cfg.folds.n_folds):
        embed_stage(cfg, fold)
    score_stage(cfg)
    oof = pd.read_csv(cfg.experiment_dir / "oof_scores.csv")
    assert {"cosine", "asnorm"} <= set(oof.columns) and oof["asnorm"].notna().all()
    # the bundle holds its own copy of the weights: the original file may go
    served = bundle_of(cfg)
    (path if kind == "onnx" else weights).unlink()
    served = type(served).load(served.root)
    answer = served.answer_waves(speech_like(1.5, seed=1), speech_like(1.2, seed=2))
    assert np.isfinite(answer["probability"]) and np.isfinite(answer[f"{cfg.run_name}__asnorm"])


def test_wespeaker_weights_fine_tune_per_fold(onnx_model, tmp_path: Path) -> None:
    """model.weights starts every fold of a trained (cnn) experiment from the WeSpeaker-layout
    checkpoint: frozen for the first epoch the encoder is still exactly those weights."""
    from src.training.checkpoint import load_checkpoint
    from src.training.train import train_stage
    from tests.conftest import prepare_tiny

    _, encoder = onnx_model
    weights = tmp_path / "small_resnet18.pt"
    torch.save(encoder.state_dict(), weights)
    cfg = prepare_tiny(
        tmp_path,
        "model.architecture=wespeaker_resnet18",
        "model.wespeaker_channels=8",
        f"model.weights={weights}",
        "model.embedding_dim=64",
        "features.frontend=kaldi_fbank",
        "train.epochs=1",
        "train.freeze_epochs=1",
        "train.steps_per_epoch=2",
        "train.average_last=1",
    )
    best = load_checkpoint(train_stage(cfg, 0))
    for name, value in encoder.state_dict().items():
        if "running_" not in name and "num_batches" not in name:  # BN statistics still move
            torch.testing.assert_close(best["model"][f"encoder.{name}"], value)


@pytest.mark.parametrize(
    ("architecture", "frontend"),
    [
        ("timm", "kaldi_fbank"),
        ("timm", "logmel"),
        ("wespeaker_resnet18", "logmel"),
        ("wespeaker_resnet18", "kaldi_fbank"),
    ],
)
def test_every_architecture_takes_either_front_end(architecture: str, frontend: str) -> None:
    cfg = load_config(
        None,
        [
            f"model.architecture={architecture}",
            f"features.frontend={frontend}",
            "features.n_mels=40",
            "model.width=0.125",
            "model.wespeaker_channels=8",
            "model.embedding_dim=32",
        ],
    )
    model = build_embedder(cfg.features, cfg.model, cfg.data.sample_rate)
    waves = torch.from_numpy(np.stack([speech_like(1.0, seed=s) for s in range(3)]))
    assert model.train()(waves).shape == (3, 32)  # SpecAugment on
    assert model.eval()(waves).shape == (3, 32)
