"""The export stage and the bundle: self-contained, checked, refused when damaged, ONNX-ready."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from src.serve.bundle import MANIFEST, BundleError, verify_bundle
from src.serve.ensemble import BundleModel, Clip
from src.serve.export import export_stage
from src.serve.uploads import decode_upload


def uploaded_test_pairs(cfg) -> tuple[dict[str, Clip], pd.DataFrame]:
    """The test files as uploads, and the pairs with the pipeline's bundle answers."""
    expected = pd.read_csv(cfg.submission_scores_path)
    folder = cfg.paths.input / cfg.data.test_dir
    clips = {}
    for name in sorted(set(expected["audio_1"]) | set(expected["audio_2"])):
        upload = decode_upload((folder / name).read_bytes(), cfg.data.sample_rate, 120.0)
        clips[name] = Clip(upload.samples, upload.facts())
    return clips, expected


def test_bundle_holds_everything_and_says_what_it_was_measured_at(tiny_bundle) -> None:
    root = tiny_bundle.bundle_dir
    manifest = verify_bundle(root)
    assert set(manifest["experiments"]) == {"cnn", "cnn_small"}
    for run in ("cnn", "cnn_small"):
        for k in (0, 1):
            for name in ("best.pt", "cohort.npy", "model.onnx"):
                assert f"experiments/{run}/fold{k}/{name}" in manifest["files"]
    assert manifest["oof"]["bundle_stacker"]["eer"] is not None
    assert manifest["oof"]["stack_graph_features"] is True  # the bundle's stacker has none
    assert manifest["threshold"]["policy"] == "balanced"
    assert manifest["versions"]["lightgbm"] and manifest["versions"]["torch"]
    stacker = json.loads((root / "stack/stacker/stacker.json").read_text())
    columns = stacker["groups"][0]["columns"]
    assert not [c for c in columns if "__g_" in c]  # no trial-graph feature
    assert any(c.startswith("gender") for c in columns) and "duration_min" in columns


def test_a_moved_bundle_serves_without_the_outputs(tiny_bundle, tmp_path: Path) -> None:
    """Copied elsewhere, with the outputs folder gone, the bundle answers as the pipeline did."""
    clips, expected = uploaded_test_pairs(tiny_bundle)
    outputs = tiny_bundle.paths.outputs
    moved = shutil.copytree(tiny_bundle.bundle_dir, tmp_path / "bundle")
    aside = outputs.rename(outputs.with_name("outputs-aside"))
    try:
        answers = BundleModel.load(moved).answer(clips, expected[["audio_1", "audio_2"]])
    finally:
        aside.rename(outputs)
    np.testing.assert_allclose(answers["probability"], expected["bundle_probability"], atol=1e-6)
    assert answers["label"].tolist() == expected["bundle_label"].tolist()


def test_onnx_runtime_matches_torch(tiny_bundle) -> None:
    manifest = verify_bundle(tiny_bundle.bundle_dir)
    for run in manifest["experiments"].values():
        assert run["onnx_folds"] == [0, 1]
        assert run["onnx_max_abs_diff"] < 1e-4  # reported by export, checked here
    clips, expected = uploaded_test_pairs(tiny_bundle)
    pairs = expected[["audio_1", "audio_2"]]
    torch_answers = BundleModel.load(tiny_bundle.bundle_dir).answer(clips, pairs)
    onnx_model = BundleModel.load(tiny_bundle.bundle_dir, runtime="onnx")
    assert all(
        type(f.extractor).__name__ == "OnnxFoldExtractor" for r in onnx_model.runs for f in r.folds
    )
    onnx_answers = onnx_model.answer(clips, pairs)
    for run in ("cnn", "cnn_small"):
        np.testing.assert_allclose(
            onnx_answers[f"{run}__asnorm"], torch_answers[f"{run}__asnorm"], atol=1e-4
        )
    np.testing.assert_allclose(onnx_answers["probability"], torch_answers["probability"], atol=1e-3)


def damage(root: Path, how: str) -> str:
    """Damage a copy of a bundle; returns the words the refusal must contain."""
    model_file = next((root / "stack/stacker").glob("group0_fold1.*"))
    if how == "changed":
        data = bytearray(model_file.read_bytes())
        data[len(data) // 2] ^= 1  # one bit: the size stays
        model_file.write_bytes(bytes(data))
        return f"sha256 of stack/stacker/{model_file.name} differs"
    if how == "truncated":
        data = (root / "experiments/cnn/fold0/best.pt").read_bytes()
        (root / "experiments/cnn/fold0/best.pt").write_bytes(data[: len(data) // 2])
        return "bytes"
    if how == "missing":
        (root / "experiments/cnn_small/fold1/cohort.npy").unlink()
        return "cohort.npy is missing"
    manifest = json.loads((root / MANIFEST).read_text())
    if how == "newer format":
        manifest["format_version"] = 99
        (root / MANIFEST).write_text(json.dumps(manifest))
        return "format 99"
    (root / MANIFEST).write_text("{not json")
    return "not valid JSON"


@pytest.mark.parametrize("how", ["changed", "truncated", "missing", "newer format", "manifest"])
def test_a_damaged_or_incompatible_bundle_is_refused(tiny_bundle, tmp_path: Path, how) -> None:
    copy = shutil.copytree(tiny_bundle.bundle_dir, tmp_path / "bundle")
    words = damage(copy, how)
    with pytest.raises(BundleError, match=words):
        BundleModel.load(copy)


def test_no_bundle_and_onnx_without_onnx_models_are_refused(tiny_bundle, tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="run the export stage"):
        BundleModel.load(tmp_path / "nothing")
    copy = shutil.copytree(tiny_bundle.bundle_dir, tmp_path / "bundle")
    manifest = json.loads((copy / MANIFEST).read_text())
    for run in manifest["experiments"].values():
        run["onnx_folds"] = []
    (copy / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="no ONNX fold models"):
        BundleModel.load(copy, runtime="onnx")


def test_export_reuses_an_unchanged_bundle(tiny_bundle, caplog) -> None:
    before = (tiny_bundle.bundle_dir / MANIFEST).read_text()
    with caplog.at_level("INFO"):
        export_stage(tiny_bundle)
    assert "unchanged, reusing" in caplog.text
    assert (tiny_bundle.bundle_dir / MANIFEST).read_text() == before


def test_export_names_the_missing_inputs(tiny_bundle, tmp_path: Path) -> None:
    paths = tiny_bundle.paths.model_copy(update={"outputs": tmp_path / "empty"})
    with pytest.raises(FileNotFoundError, match="run the stack stage"):
        export_stage(tiny_bundle.model_copy(update={"paths": paths}))


def test_a_plain_export_after_an_onnx_one_leaves_the_onnx_bundle_served(tiny_bundle) -> None:
    """export.onnx=true, then a plain export (the last stage of every ``run.sh``): the ONNX
    bundle is untouched and ``serve.runtime=onnx`` still finds and loads it."""
    onnx_root = tiny_bundle.bundle_dir
    assert onnx_root.name == "bundle-onnx"
    before = (onnx_root / MANIFEST).read_text()
    plain = tiny_bundle.model_copy(
        update={"export": tiny_bundle.export.model_copy(update={"onnx": False})}
    )
    plain_root = export_stage(plain)
    assert plain_root.name == "bundle" and plain_root != onnx_root
    assert not any("model.onnx" in name for name in verify_bundle(plain_root)["files"])
    assert (onnx_root / MANIFEST).read_text() == before
    serving = plain.model_copy(update={"serve": plain.serve.model_copy(update={"runtime": "onnx"})})
    assert serving.served_bundle == onnx_root
    model = BundleModel.load(serving.served_bundle, runtime="onnx")
    assert all(
        type(f.extractor).__name__ == "OnnxFoldExtractor" for r in model.runs for f in r.folds
    )
    assert plain.served_bundle == plain_root  # the torch runtime serves the plain bundle


def test_serving_onnx_without_an_onnx_export_says_how_to_make_one(tmp_path: Path) -> None:
    from src.config import load_config
    from src.serve.app import serve_stage

    cfg = load_config(
        Path("configs/demo.yaml"), [f"paths.outputs={tmp_path}", "serve.runtime=onnx"]
    )
    with pytest.raises(BundleError, match="export.onnx=true"):
        serve_stage(cfg)


def test_a_changed_submit_section_is_exported_and_served(tiny_bundle, tmp_path: Path) -> None:
    """Editing ``submit.positive_share`` and rerunning from the stack stage (the stack itself is
    reused) exports a new bundle whose API labels equal the submission's ``bundle_label``."""
    from src.cli import call_stage

    root = tiny_bundle.paths.outputs.parent
    copy = shutil.copytree(root, tmp_path / "copy", symlinks=True)
    paths = tiny_bundle.paths.model_copy(
        update={"input": copy / "data", "outputs": copy / "outputs", "folds": copy / "folds"}
    )
    cfg = tiny_bundle.model_copy(update={"paths": paths})
    for stage in ("stack", "submit", "export"):
        call_stage(stage, cfg)
    before = json.loads((cfg.bundle_dir / MANIFEST).read_text())["threshold"]["value"]
    submit = cfg.submit.model_copy(update={"positive_share": 0.25})
    edited = cfg.model_copy(update={"submit": submit})
    for stage in ("stack", "submit", "export"):
        call_stage(stage, edited)
    manifest = json.loads((edited.bundle_dir / MANIFEST).read_text())
    assert manifest["threshold"]["positive_share"] == 0.25
    assert manifest["threshold"]["value"] > before
    clips, expected = uploaded_test_pairs(edited)
    answers = BundleModel.load(edited.bundle_dir).answer(clips, expected[["audio_1", "audio_2"]])
    assert answers["label"].tolist() == expected["bundle_label"].tolist()
    assert 0 < expected["bundle_label"].mean() < 0.5


def test_a_stacked_run_config_is_read_on_the_stacks_paths(tmp_path: Path) -> None:
    """An outputs folder that was moved or copied: the run's saved ``config.yaml`` names the old
    folder, and export reads the run on the stack's own ``paths`` (its files are where they are)."""
    from src.config import config_to_yaml, load_config
    from src.serve.export import run_config

    old = load_config(Path("configs/demo.yaml"), ["paths.outputs=/nowhere/outputs"])
    cfg = load_config(Path("configs/demo.yaml"), [f"paths.outputs={tmp_path}"])
    (tmp_path / old.experiment).mkdir()
    (tmp_path / old.experiment / "config.yaml").write_text(config_to_yaml(old), encoding="utf-8")
    run = run_config(cfg, old.experiment)
    assert run.paths == cfg.paths
    assert run.experiment_dir == tmp_path / old.experiment
