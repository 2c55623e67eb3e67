"""What a new user meets in the first hour: help that says what the code does, a leaderboard that
keeps fold splits apart, report figures that read for any run, a reused report, quiet logs."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from src.cli import main
from src.config import config_to_yaml, load_config
from src.report import plots
from src.report.figures import calibration, collapse_reason, is_probability
from src.report.leaderboard import config_outputs, format_table, leaderboard
from src.report.report import report_stage
from src.runner import PIPELINE
from src.training.train import FoldTrainingData, selection_summary
from src.util.io import write_json
from src.util.logs import QuietLog, plural

REPO = Path(__file__).resolve().parents[1]


# --- help -------------------------------------------------------------------------------------


def test_run_sh_help_lists_every_stage_with_its_number() -> None:
    text = subprocess.run(
        ["bash", str(REPO / "run.sh"), "--help"], capture_output=True, text=True, check=True
    ).stdout
    for number, stage in enumerate(PIPELINE):
        assert f"{number} {stage}" in text
    assert "set -euo" not in text


@pytest.mark.parametrize("stage", ["prepare", "train", "score", "report", "export", "serve"])
def test_stage_help_says_what_it_reads_and_writes_without_developer_code(stage, capsys) -> None:
    assert main([stage, "--help"]) == 0
    text = capsys.readouterr().out
    assert "Reads:" in text and "Writes:" in text
    assert ">>> import" not in text and "cosine_pairs(" not in text


# --- leaderboard ------------------------------------------------------------------------------


def _scored_run(outputs: Path, name: str, eer: float, n_folds: int) -> None:
    folder = outputs / name
    folder.mkdir(parents=True)
    write_json(folder / "metrics.json", {"oof": {"asnorm": {"eer": eer, "min_dcf_0.01": 0.5}}})
    cfg = load_config(None, [f"folds.n_folds={n_folds}"])
    (folder / "config.yaml").write_text(config_to_yaml(cfg))


def test_leaderboard_ranks_runs_within_their_fold_split_only(tmp_path: Path) -> None:
    outputs, libri = tmp_path / "outputs", tmp_path / "outputs" / "libri"
    _scored_run(outputs, "five_good", 0.10, 5)
    _scored_run(outputs, "five_bad", 0.30, 5)
    _scored_run(outputs, "two", 0.05, 2)  # best EER, but on other trials
    _scored_run(libri, "libri_cnn", 0.20, 5)
    table = leaderboard([outputs, libri])
    assert set(table["folds"]) == {
        load_config(None, [f"folds.n_folds={k}"]).folds_dir.name for k in (2, 5)
    }
    five = table[table["folds"].str.startswith("5fold")]
    assert five["run"].tolist() == ["five_good", "libri_cnn", "five_bad"]
    assert five["rank"].tolist() == [1, 2, 3]
    two = table[table["folds"].str.startswith("2fold")]
    assert two["rank"].tolist() == [1]  # ranked alone, not first overall
    text = format_table(table)
    assert text.count("## ") == 2 and "not comparable" in text
    assert str(libri) in text


def test_leaderboard_without_config_looks_under_every_configs_outputs() -> None:
    found = config_outputs(REPO / "configs")
    assert found[0] == Path("outputs") and Path("outputs/libri") in found


# --- report figures ---------------------------------------------------------------------------


def test_collapsed_scores_are_named_and_healthy_ones_are_not() -> None:
    rng = np.random.default_rng(0)
    assert collapse_reason(rng.uniform(0.998, 1.0, 500)) is not None
    assert collapse_reason(rng.uniform(-0.2, 0.9, 500)) is None
    assert collapse_reason(rng.normal(0, 2, 500)) is None  # AS-norm scale
    assert collapse_reason(np.full(500, 3.0) + rng.normal(0, 1e-6, 500)) is not None


def test_calibration_error_is_small_when_calibrated_and_large_when_not() -> None:
    rng = np.random.default_rng(1)
    probs = rng.uniform(0, 1, 20000)
    labels = (rng.uniform(0, 1, 20000) < probs).astype(int)
    assert calibration(probs, labels)["ece"] < 0.02
    overconfident = np.where(probs > 0.5, 0.99, 0.01)
    assert calibration(overconfident, labels)["ece"] > 0.2
    assert not is_probability("run/cosine", probs) and is_probability("stack", probs)


@pytest.fixture
def captured(monkeypatch) -> list:
    figures: list = []
    monkeypatch.setattr(plots, "save", lambda fig, path: figures.append(fig))
    return figures


def test_one_epoch_curves_have_markers_and_det_axes_cover_weak_models(captured) -> None:
    history = pd.DataFrame({"epoch": [1], "loss": [5.1], "accuracy": [0.1], "val_eer": [np.nan]})
    plots.plot_training_curves({"run": [history, history]}, Path("x.png"))
    loss_axis = captured[0].axes[0]
    assert all(line.get_marker() == "o" for line in loss_axis.get_lines())
    assert loss_axis.get_ylabel() == "loss" and list(loss_axis.get_xticks()) == [1]
    rng = np.random.default_rng(2)
    labels = np.repeat([0, 1], 200)
    weak = rng.normal(0, 1, 400) + 0.1 * labels  # EER near 48 %
    plots.plot_det({"weak": (weak, labels)}, Path("det.png"))
    high = captured[1].axes[0].get_xlim()[1]
    assert high >= float(plots.probit(np.array([0.99]))[0])


def test_histograms_have_labels_and_the_threshold(captured) -> None:
    labels = np.repeat([0, 1], 50)
    scores = np.linspace(0, 1, 100)
    plots.plot_histograms(
        {"stack": (scores, labels, None)}, Path("h.png"), {"stack": 0.42}, {"stack": "why"}
    )
    ax = captured[0].axes[0]
    assert ax.get_xlabel() == "score" and ax.get_ylabel() == "density"
    assert any(list(line.get_xdata()) == [0.42, 0.42] for line in ax.get_lines())
    assert "COLLAPSED" in ax.get_title()


def _fake_run(cfg, collapsed: bool) -> None:
    """A scored 2-fold run (OOF and test score tables, a 1-epoch history) under ``cfg``."""
    rng = np.random.default_rng(3)
    folder = cfg.experiment_dir
    labels = np.tile([0, 1], 100)
    cosine = rng.uniform(0.998, 1.0, 200) if collapsed else rng.normal(0.3 + 0.4 * labels, 0.2)
    oof = pd.DataFrame(
        {
            "fold": np.repeat([0, 1], 100),
            "audio_1": [f"a{i}" for i in range(200)],
            "audio_2": [f"b{i}" for i in range(200)],
            "label": labels,
            "cosine": cosine,
            "asnorm": cosine * 10,
        }
    )
    for k in (0, 1):
        (folder / f"fold{k}").mkdir(parents=True, exist_ok=True)
        pd.DataFrame(
            {"epoch": [1], "loss": [5.0], "accuracy": [0.1], "val_eer": [np.nan], "seconds": [1]}
        ).to_csv(folder / f"fold{k}/history.csv", index=False)
    oof.to_csv(folder / "oof_scores.csv", index=False)


def test_report_warns_on_collapse_draws_every_figure_and_is_reused(tmp_path, caplog) -> None:
    cfg = load_config(
        None, [f"paths.outputs={tmp_path / 'out'}", f"paths.input={tmp_path / 'none'}"]
    )
    _fake_run(cfg, collapsed=True)
    with caplog.at_level(logging.INFO):
        report_stage(cfg)
    out = cfg.report_dir
    for name in ("det.png", "score_histograms.png", "training_curves.png",
                 "accuracy_threshold.png", "eer_by_fold.png"):  # fmt: skip
        assert (out / name).stat().st_size > 0, name
    summary = (out / "summary.md").read_text()
    assert "## WARNING" in summary and "scores collapsed" in summary
    assert "EER per fold" in summary
    assert any(r.levelname == "WARNING" and "collapsed" in r.getMessage() for r in caplog.records)

    caplog.clear()
    before = (out / "det.png").stat().st_mtime_ns
    with caplog.at_level(logging.INFO):
        report_stage(cfg)
    assert "reusing" in caplog.text and (out / "det.png").stat().st_mtime_ns == before
    assert any(r.levelname == "WARNING" and "collapsed" in r.getMessage() for r in caplog.records)

    _fake_run(cfg, collapsed=False)  # new scores: the report is redone, and all is well
    caplog.clear()
    with caplog.at_level(logging.INFO):
        report_stage(cfg)
    assert "reusing" not in caplog.text
    assert "## WARNING" not in (out / "summary.md").read_text()


# --- logs -------------------------------------------------------------------------------------


def _record(level: int, msg: str, *args) -> logging.LogRecord:
    return logging.LogRecord("src.x", level, __file__, 1, msg, args, None)


def test_quiet_log_rounds_floats_and_shows_a_warning_once() -> None:
    quiet = QuietLog()
    record = _record(
        logging.INFO, "a %s b %.2f c %d %s", {"p": 0.6394052044609665}, 0.5, 3, 0.68858
    )
    assert quiet.filter(record)
    assert record.getMessage() == "a {'p': 0.6394} b 0.50 c 3 0.6886"
    warning = "model.width=%s applies to ResNet-family backbones only"
    assert quiet.filter(_record(logging.WARNING, warning, 0.5))
    assert not quiet.filter(_record(logging.WARNING, warning, 0.5))  # the same, again: dropped
    assert quiet.filter(_record(logging.WARNING, warning, 0.25))  # another value: shown
    assert quiet.filter(_record(logging.INFO, "100%% of %s", 1.0))
    alone = logging.LogRecord(
        "src.x", logging.INFO, __file__, 1, "aucs %s", ({"g": 0.98332},), None
    )
    assert quiet.filter(alone) and alone.getMessage() == "aucs {'g': 0.9833}"  # a lone dict


def test_plurals_and_the_selection_summary_of_a_one_epoch_run() -> None:
    assert plural(1, "run") == "1 run" and plural(2, "run") == "2 runs"
    cfg = load_config(None, ["train.epochs=1"])
    split = FoldTrainingData(pd.DataFrame(), None, [], set())
    assert selection_summary(cfg, split) == "the weights after the last of 1 epoch"
    cfg = load_config(None, ["train.epochs=3"])
    assert selection_summary(cfg, split) == "the mean of the last 3 of 3 epochs"


def test_export_logs_the_final_bundle_not_its_staging_folder(tiny_bundle, caplog) -> None:
    from src.serve.export import export_stage

    with caplog.at_level(logging.INFO):
        export_stage(tiny_bundle, force=True)
    assert "partial" not in caplog.text
    assert f"{tiny_bundle.bundle_dir}/experiments/cnn/fold0/model.onnx" in caplog.text
    assert "2 runs" in caplog.text


def test_demo_generation_logs_the_final_folder_not_the_staged_one(tmp_path, caplog) -> None:
    from src.data.demo import STAGED_SUFFIX, generate_demo

    staged = tmp_path / f"input{STAGED_SUFFIX}"
    with caplog.at_level(logging.INFO):
        generate_demo(staged, n_speakers=4, clips_per_speaker=2, n_test_speakers=2,
                      test_clips_per_speaker=2, seed=1)  # fmt: skip
    assert STAGED_SUFFIX not in caplog.text and str(tmp_path / "input") in caplog.text


def test_a_cached_embed_builds_no_model(tiny_bundle, monkeypatch, caplog) -> None:
    """A fold whose embeddings are fresh is recognised from its checkpoint's digest alone."""
    import src.inference.embed as embed

    monkeypatch.setattr(embed, "build_extractor", lambda *args: pytest.fail("built a model"))
    with caplog.at_level(logging.INFO):
        assert embed.embed_stage(tiny_bundle, 0) == tiny_bundle.fold_dir(0) / "embeddings.npz"
    assert "unchanged, reusing" in caplog.text


def test_leaderboard_without_config_reads_a_paths_outputs_override(tmp_path: Path, capsys) -> None:
    """``leaderboard paths.outputs=X`` (no ``--config``) ranks the runs under X, not under the
    repo's configs' folders (an override is never ignored)."""
    _scored_run(tmp_path, "elsewhere", 0.12, 5)
    assert main(["leaderboard", f"paths.outputs={tmp_path}"]) == 0
    assert "elsewhere" in capsys.readouterr().out
