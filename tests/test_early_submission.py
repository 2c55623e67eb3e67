"""The frozen encoders' submission comes first, survives a kill during training, and the full
stack replaces it after a rerun only when its OOF EER is not higher (``src/early_submission.py``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
import pytest

from src import early_submission
from src.config import load_config
from src.early_submission import FROZEN, FULL
from src.runner import run_pipeline, stage_range
from src.stacking.inputs import read_test_pair_list
from src.stacking.submit import check_submission
from tests.conftest import TINY, config_for

REPO = Path(__file__).resolve().parents[1]
TRAINING = ("train.epochs=3", "train.steps_per_epoch=2", "train.device=cpu", "export.onnx=false")


def tiny_config(root: Path, *overrides: str):
    """Demo data (8 speakers x 4 clips, 2 test speakers x 2 clips), the tiny CNN and a frozen
    CAM++ companion (its wheel is installed by the project's set-up)."""
    from src.data.demo import generate_demo

    generate_demo(root / "data", n_speakers=8, clips_per_speaker=4, n_test_speakers=2,
                  test_clips_per_speaker=3, seed=5)  # fmt: skip
    return config_for(root / "data", root, *TINY, *TRAINING, "companions=[campplus.yaml]",
                      *overrides)  # fmt: skip


def assert_complete_submission(cfg, path: Path) -> None:
    expected = read_test_pair_list(cfg.paths.input / cfg.data.test_csv).pairs
    check_submission(pd.read_csv(path), expected)  # every row, in order, labels 0/1


def test_applies_only_to_trained_runs_with_frozen_companions() -> None:
    cfg = load_config(REPO / "configs/zalo_cpu.yaml", ["paths.outputs=/tmp/x"])
    every = stage_range("prepare", "export")
    assert early_submission.applies(cfg, every)
    assert not early_submission.applies(cfg, stage_range("stack", "export"))  # no frozen stack
    assert not early_submission.applies(cfg, stage_range("prepare", "stack"))  # no submit
    source = load_config(REPO / "configs/zalo_cpu.yaml", ["submit.source=first_level"])
    assert not early_submission.applies(source, every)  # no stack to compare
    for overrides in (["early_submission=false"], ["companions=[]"],
                      ["stack.experiments=[zalo_cnn_cpu,campplus]"]):  # fmt: skip
        other = load_config(REPO / "configs/zalo_cpu.yaml", overrides)
        assert not early_submission.applies(other, every)
    frozen_only = load_config(REPO / "configs/campplus.yaml", ["companions=[ge2e.yaml]"])
    assert not early_submission.applies(frozen_only, every)  # nothing to wait for
    frozen = early_submission.frozen_config(cfg, ["campplus", "ge2e"])
    assert frozen.stacked_runs == ["campplus", "ge2e"] and frozen.variant == FROZEN
    assert frozen.submission_path.name == "submission-frozen.csv"
    assert frozen.stack_dir.name == "stack-frozen" and cfg.stack_dir.name == "stack"


def test_early_submission_survives_a_kill_in_training_and_a_rerun_replaces_it(
    tmp_path: Path, monkeypatch, caplog
) -> None:
    import src.training.train as train_module

    cfg = tiny_config(tmp_path)
    stages = stage_range("prepare", "export")
    seen_at_training: list[bool] = []
    original_train, original_save = train_module.train_stage, train_module.save_epoch

    def spy_train(run, fold, *args, **kwargs):
        if run.extractor.kind == "cnn":  # the submission is in place before any training
            seen_at_training.append(cfg.submission_path.is_file())
        return original_train(run, fold, *args, **kwargs)

    def save_then_die(*args, **kwargs):
        original_save(*args, **kwargs)
        raise KeyboardInterrupt("killed after epoch 1")

    monkeypatch.setattr(train_module, "train_stage", spy_train)
    monkeypatch.setattr(train_module, "save_epoch", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(cfg, stages)
    assert seen_at_training == [True]
    frozen = early_submission.frozen_config(cfg, ["campplus"])
    # the killed run leaves the frozen stack's complete submission and bundle in place
    assert_complete_submission(cfg, cfg.submission_path)
    assert cfg.submission_path.read_bytes() == frozen.submission_path.read_bytes()
    assert cfg.submission_scores_path.read_bytes() == frozen.submission_scores_path.read_bytes()
    record = json.loads(cfg.submission_source_path.read_text())
    assert record["source"] == FROZEN and record["stack"] == "stack-frozen"
    assert record["runs"] == ["campplus"]
    bundle = json.loads((cfg.bundle_dir / "manifest.json").read_text())
    assert bundle["variant"] == FROZEN and sorted(bundle["experiments"]) == ["campplus"]
    assert (frozen.report_dir / "summary.md").is_file()
    assert not (cfg.stack_dir / "metrics.json").exists()

    monkeypatch.setattr(train_module, "save_epoch", original_save)
    caplog.set_level(logging.INFO)
    run_pipeline(cfg, stages)  # resumes fold 0 after epoch 1, trains fold 1, stacks all
    assert "train fold 0: resuming after epoch 1" in caplog.text
    eers = {
        FROZEN: early_submission.oof_eer(frozen.stack_dir),
        FULL: early_submission.oof_eer(cfg.stack_dir),
    }
    winner = FULL if eers[FULL] <= eers[FROZEN] else FROZEN
    record = json.loads(cfg.submission_source_path.read_text())
    assert record["source"] == winner and record["oof_eer_by_stack"] == pytest.approx(eers)
    assert f"submission source: {cfg.submission_path}" in caplog.text
    assert_complete_submission(cfg, cfg.submission_path)
    bundle = json.loads((cfg.bundle_dir / "manifest.json").read_text())
    if winner == FULL:  # the full stack's own submission and bundle, and no -full copy
        check = cfg.with_submission_name("check")
        from src.stacking.submit import submit_stage

        submit_stage(check)
        assert cfg.submission_path.read_bytes() == check.submission_path.read_bytes()
        assert bundle["variant"] is None and "zalo" not in str(bundle["experiments"])
        assert not cfg.with_submission_name(FULL).submission_path.exists()
    else:
        assert cfg.submission_path.read_bytes() == frozen.submission_path.read_bytes()
        assert_complete_submission(cfg, cfg.with_submission_name(FULL).submission_path)
        assert bundle["variant"] == FROZEN

    # a third run reuses everything and keeps the same answer; so does a second level redone
    before = cfg.submission_path.read_bytes()
    caplog.clear()
    run_pipeline(cfg, stages)
    assert "resuming" not in caplog.text and "train fold 1: unchanged" in caplog.text
    assert cfg.submission_path.read_bytes() == before
    assert json.loads(cfg.submission_source_path.read_text())["source"] == winner
    assert early_submission.applies(cfg, stage_range("stack", "export"))  # a frozen stack now
    run_pipeline(cfg, stage_range("stack", "export"))
    assert cfg.submission_path.read_bytes() == before
    assert json.loads(cfg.submission_source_path.read_text())["source"] == winner


def fake_stack(folder: Path, eer: float) -> None:
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({"stack": {"eer": eer}}))


def stand_in_run(tmp_path: Path):
    """A config with a one-pair test list and a stand-in frozen stack of OOF EER 10 %."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "public-test.csv").write_text("audio_1,audio_2\na.wav,b.wav\n")
    cfg = config_for(data, tmp_path)
    frozen = early_submission.frozen_config(cfg, ["campplus"])
    fake_stack(frozen.stack_dir, 0.10)
    return cfg, frozen


def write_submission(path: Path, label: int) -> None:
    pd.DataFrame({"audio_1": ["a.wav"], "audio_2": ["b.wav"], "label": [label]}).to_csv(
        path, index=False
    )


@pytest.mark.parametrize(("full_eer", "winner"), [(0.05, FULL), (0.10, FULL), (0.11, FROZEN)])
def test_the_full_stack_replaces_the_frozen_one_only_when_its_oof_eer_is_not_higher(
    tmp_path: Path, full_eer: float, winner: str
) -> None:
    """The rule alone, on stand-in stacks (OOF EER 10 % for the frozen one): ties go to the
    full stack; a worse one is submitted as submission-full.csv and not exported."""
    cfg, frozen = stand_in_run(tmp_path)
    fake_stack(cfg.stack_dir, full_eer)
    for run, label in ((frozen, 0), (cfg, 0)):
        for path in (run.submission_path, run.submission_scores_path):
            write_submission(path, label)
    early_submission.write_source(cfg, FROZEN, frozen, {FROZEN: 0.10})
    stale = cfg.with_submission_name(FULL)  # a full stack's answer that lost before
    write_submission(stale.submission_path, 1)
    calls: list[tuple[str, str]] = []

    def call(stage: str, run) -> None:
        calls.append((stage, run.submission_path.name))
        if stage == "submit":
            write_submission(run.submission_path, 1)
            write_submission(run.submission_scores_path, 1)

    early_submission.finish_full(cfg, frozen, ["submit", "report", "export"], call)
    record = json.loads(cfg.submission_source_path.read_text())
    assert record["source"] == winner
    assert record["oof_eer_by_stack"] == {FROZEN: 0.10, FULL: full_eer}
    if winner == FULL:  # export before report: the report reads the bundle it describes
        assert calls == [(s, "submission.csv") for s in ("submit", "export", "report")]
        assert pd.read_csv(cfg.submission_path)["label"].tolist() == [1]
        assert not stale.submission_path.exists()
    else:
        assert calls == [("submit", "submission-full.csv"), ("report", "submission-full.csv")]
        assert pd.read_csv(cfg.submission_path)["label"].tolist() == [0]  # the frozen one


def test_a_frozen_submission_replaces_a_full_one_only_after_a_change_of_data(
    tmp_path: Path,
) -> None:
    cfg, frozen = stand_in_run(tmp_path)
    write_submission(frozen.submission_path, 0)
    write_submission(frozen.submission_scores_path, 0)
    write_submission(cfg.submission_path, 1)
    early_submission.write_source(cfg, FULL, cfg, {FULL: 0.05})
    early_submission.promote_frozen(cfg, frozen, elapsed=60)
    assert pd.read_csv(cfg.submission_path)["label"].tolist() == [1]  # the full one stays
    (cfg.paths.input / "public-test.csv").write_text("audio_1,audio_2\nb.wav,a.wav\n")  # new pairs
    early_submission.promote_frozen(cfg, frozen, elapsed=60)
    assert pd.read_csv(cfg.submission_path)["label"].tolist() == [0]
    assert json.loads(cfg.submission_source_path.read_text())["source"] == FROZEN


def test_score_adapt_reaches_the_companions_and_the_run_skips_the_export(
    tmp_path: Path, monkeypatch, caplog
) -> None:
    """One switch adapts every first level the config stacks; the bundle cannot serve adapted
    scores, so the run leaves export out with a warning instead of failing after the stack."""
    import src.stages
    from src.config import companion_configs
    from src.runner import adapted_runs

    plain = load_config(REPO / "configs/zalo_cpu.yaml", ["paths.outputs=/tmp/x"])
    assert adapted_runs(plain) == []
    overrides = [
        "score.adapt=wccn_cohort",
        f"paths.input={tmp_path}",
        f"paths.outputs={tmp_path}/o",
    ]
    cfg = load_config(REPO / "configs/zalo_cpu.yaml", overrides)
    assert [c.score.adapt for c in companion_configs(cfg)] == ["wccn_cohort"] * 2
    assert companion_configs(cfg)[0].score.asnorm_top_k == plain.score.asnorm_top_k
    assert adapted_runs(cfg) == [cfg.run_name, "campplus", "ge2e"]
    (tmp_path / "public-test.csv").write_text("audio_1,audio_2\n")
    called: list[str] = []
    monkeypatch.setattr(src.stages, "call_stage", lambda stage, run, **kw: called.append(stage))
    run_pipeline(cfg, ["report", "export"])
    assert called == ["report"] and "export skipped" in caplog.text


def test_the_order_frozen_first_then_only_the_trained_runs(tmp_path: Path) -> None:
    """Stage calls of a whole run, recorded: the frozen runs are embedded and scored once (a
    --force does not redo them after training), their second level comes before training, and
    the trained runs alone go through train, embed and score before the full stack."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "public-test.csv").write_text("audio_1,audio_2\na.wav,b.wav\n")
    cfg = config_for(data, tmp_path, "companions=[campplus.yaml,ge2e.yaml]")
    calls: list[tuple[str, tuple[str, ...]]] = []

    def call(stage: str, run) -> None:
        from src.training.large_margin import first_level_configs

        runs = first_level_configs(run) if stage in ("train", "embed", "score") else [run]
        calls.append((stage, tuple(r.stack_dir.name if stage in SECOND else r.run_name
                                   for r in runs)))  # fmt: skip
        if stage == "stack":
            fake_stack(run.stack_dir, 0.05 if run.variant else 0.04)
        if stage == "submit":
            write_submission(run.submission_path, 1)
            write_submission(run.submission_scores_path, 1)

    stages = stage_range("prepare", "report")
    assert early_submission.applies(cfg, stages)
    early_submission.run_early_first(cfg, stages, call)
    assert calls == [
        ("prepare", ("cnn",)), ("folds", ("cnn",)),
        ("embed", ("campplus",)), ("embed", ("ge2e",)),
        ("score", ("campplus",)), ("score", ("ge2e",)),
        ("stack", ("stack-frozen",)), ("submit", ("stack-frozen",)), ("report", ("stack-frozen",)),
        ("train", ("cnn",)), ("embed", ("cnn",)), ("score", ("cnn",)),
        ("stack", ("stack",)), ("submit", ("stack",)), ("report", ("stack",)),
    ]  # fmt: skip
    assert json.loads(cfg.submission_source_path.read_text())["source"] == FULL


SECOND = ("stack", "submit", "report", "export")
