"""First level end to end on a tiny data set: train (with resume), embed, score."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from src.inference.embed import embed_stage, load_embeddings
from src.inference.score import score_stage
from src.training.train import train_stage
from src.util.io import read_json
from tests.conftest import TINY as CORE
from tests.conftest import prepare_tiny

TINY = (
    *CORE, "train.epochs=2", "train.steps_per_epoch=3", "score.asnorm_top_k=5",
)  # fmt: skip


@pytest.fixture(scope="module")
def tiny_experiment(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return prepare_tiny(root, *TINY, test_speakers=4, test_clips=3, seed=3)


def test_train_writes_checkpoints_and_history(tiny_experiment) -> None:
    cfg = tiny_experiment
    best = train_stage(cfg, 0)
    history = pd.read_csv(best.parent / "history.csv")
    assert best.is_file() and (best.parent / "last.pt").is_file()
    assert list(history["epoch"]) == [1, 2] and history["val_eer"].isna().all()  # average
    assert (best.parent / "config.yaml").is_file()


def test_rerun_skips_and_resume_continues(tiny_experiment, caplog) -> None:
    cfg = tiny_experiment
    train_stage(cfg, 0)
    with caplog.at_level("INFO"):
        train_stage(cfg, 0)
    assert "unchanged, reusing" in caplog.text
    longer = cfg.model_copy(update={"train": cfg.train.model_copy(update={"epochs": 3})})
    with pytest.raises(RuntimeError, match="another config"):
        train_stage(longer, 0, resume=True)


def test_resume_matches_uninterrupted_run(tiny_experiment, tmp_path: Path, monkeypatch) -> None:
    """A run interrupted after epoch 2 and resumed equals a run of 3 epochs in one go."""
    import src.training.train as train_module

    def with_outputs(folder: str):
        paths = tiny_experiment.paths.model_copy(
            update={"outputs": tmp_path / folder, "prep": tiny_experiment.paths.prep_dir}
        )
        train = tiny_experiment.train.model_copy(update={"epochs": 3})
        return tiny_experiment.model_copy(update={"paths": paths, "train": train})

    straight = pd.read_csv(train_stage(with_outputs("a"), 1).parent / "history.csv")
    original_save = train_module.save_epoch

    def crash_after_epoch_two(*args, **kwargs):
        original_save(*args, **kwargs)
        if args[6]["epoch"] == 2:  # state dict
            raise KeyboardInterrupt("simulated crash")

    interrupted = with_outputs("b")
    monkeypatch.setattr(train_module, "save_epoch", crash_after_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        train_stage(interrupted, 1)
    monkeypatch.setattr(train_module, "save_epoch", original_save)
    resumed = pd.read_csv(train_stage(interrupted, 1, resume=True).parent / "history.csv")
    assert list(resumed["epoch"]) == [1, 2, 3]
    np.testing.assert_allclose(resumed["loss"], straight["loss"], rtol=1e-5)
    np.testing.assert_allclose(resumed["val_eer"], straight["val_eer"], atol=1e-9)


def test_embed_and_score(tiny_experiment) -> None:
    cfg = tiny_experiment
    for fold in range(2):
        train_stage(cfg, fold)
        path = embed_stage(cfg, fold)
        emb = load_embeddings(path)
        assert set(emb["role"]) == {"oof", "test", "cohort"}
        np.testing.assert_allclose(np.linalg.norm(emb["vectors"], axis=1), 1.0, atol=1e-4)
    score_stage(cfg)
    oof = pd.read_csv(cfg.experiment_dir / "oof_scores.csv")
    test = pd.read_csv(cfg.experiment_dir / "test_scores.csv")
    assert {"fold", "cosine", "asnorm", "q_norm_1", "q_cohort_2"} <= set(oof.columns)
    assert {"cosine_fold0", "asnorm_fold1", "asnorm"} <= set(test.columns)
    pairs = pd.read_csv(cfg.paths.input / "public-test.csv")
    assert (test["audio_1"] == pairs["audio_1"]).all() and len(test) == len(pairs)
    metrics = read_json(cfg.experiment_dir / "metrics.json")
    assert 0 <= metrics["oof"]["asnorm"]["eer"] <= 1
    assert "accuracy_balanced" in metrics["test"]["asnorm"]
    assert "best_accuracy" in metrics["test"]["asnorm"]["oracle"]
    assert "best_accuracy" not in metrics["test"]["asnorm"]


def test_fine_tuning_starts_from_checkpoint(tiny_experiment, tmp_path: Path) -> None:
    import torch

    from src.training.train import TrainingModule, load_pretrained_embedder

    cfg = tiny_experiment
    source = train_stage(cfg, 0)
    module = TrainingModule(cfg, n_speakers=3)
    load_pretrained_embedder(module.model, source)
    saved = torch.load(source, weights_only=False)["model"]
    for name, value in module.model.state_dict().items():
        torch.testing.assert_close(value, saved[name])
    train_stage(cfg, 1)
    paths = cfg.paths.model_copy(update={"outputs": tmp_path, "prep": cfg.paths.prep_dir})

    def tuned_from(path, **train_options):
        options = {"init_checkpoint": path, "lr": 1e-4, "epochs": 1, **train_options}
        return cfg.model_copy(
            update={"paths": paths, "train": cfg.train.model_copy(update=options)}
        )

    # fold 0's model trained on fold 1's speakers: fold 1 must not start from it
    with pytest.raises(ValueError, match="saw .* of this fold's .* OOF speakers"):
        train_stage(tuned_from(source), 1)
    # fold k from the earlier run's fold k model: never saw fold k
    per_fold = source.parent.parent / "fold{fold}" / "best.pt"
    assert train_stage(tuned_from(per_fold), 1).is_file()
    assert train_stage(tuned_from(source, allow_seen_speakers=True), 1, force=True).is_file()
    wider = cfg.model_copy(update={"model": cfg.model.model_copy(update={"embedding_dim": 48})})
    with pytest.raises(RuntimeError, match="does not fit this model config"):
        load_pretrained_embedder(TrainingModule(wider, 3).model, source)


def test_gender_head_predictions_feed_the_stack(tiny_experiment, tmp_path: Path) -> None:
    from src.stacking.stack import stack_stage

    cfg = tiny_experiment
    paths = cfg.paths.model_copy(update={"outputs": tmp_path, "prep": cfg.paths.prep_dir})
    head = cfg.head.model_copy(update={"gender_weight": 0.5})
    with_gender = cfg.model_copy(update={"paths": paths, "head": head})
    for fold in range(2):
        train_stage(with_gender, fold)
        embed_stage(with_gender, fold)
        fold_table = pd.read_csv(with_gender.fold_dir(fold) / "gender.csv")
        assert set(fold_table["role"]) == {"oof", "test"}
    score_stage(with_gender)
    oof = pd.read_csv(with_gender.experiment_dir / "gender_oof.csv")
    test = pd.read_csv(with_gender.experiment_dir / "gender_test.csv")
    assert oof["p_male"].between(0, 1).all() and test["p_male"].between(0, 1).all()
    assert oof["id"].is_unique and test["id"].str.startswith("public-test/").all()
    assert {"p_male_fold0", "p_male_fold1"} <= set(test.columns)
    stack_stage(with_gender)
    importances = pd.read_csv(tmp_path / "stack" / "importances.csv")
    assert importances.astype(str).apply(lambda c: c.str.contains("gender")).any().any()
    assert_test_views_are_single_fold(with_gender)


def _one_fold_world(experiment, fold: int):
    """The experiment as if every fold model had given fold ``fold``'s test outputs, so that
    every fold mean equals fold ``fold``'s value too."""
    from src.stacking.features import PER_FOLD

    test = experiment.test.copy()
    for column in [c for c in test.columns if PER_FOLD.search(c)]:
        test[column] = test[PER_FOLD.sub(f"_fold{fold}", column)]
        test[PER_FOLD.sub("", column)] = test[PER_FOLD.sub(f"_fold{fold}", column)]
    gender = experiment.gender_test.copy()
    for column in gender.columns:
        gender[column] = gender[f"p_male_fold{fold}"]
    return replace(experiment, test=test, gender_test=gender)


def assert_test_views_are_single_fold(cfg) -> None:
    """Fold k's stacker must see test features made by fold k's models alone: replacing every
    other fold's outputs (and so every fold mean) by fold k's must not change its view."""
    from src.stacking.inputs import load_experiment, load_manifest
    from src.stacking.stack import _metadata, test_views

    manifest = load_manifest(cfg.paths.prep_dir)
    experiment = load_experiment(cfg.experiment_dir)
    views = test_views([experiment], _metadata([experiment], manifest), cfg)
    assert len(views) == cfg.folds.n_folds
    for fold, view in views.items():
        world = _one_fold_world(experiment, fold)
        pd.testing.assert_frame_equal(
            view, test_views([world], _metadata([world], manifest), cfg)[fold]
        )
    per_fold_columns = [c for c in views[0].columns if not views[0][c].equals(views[1][c])]
    assert any("gender" in c for c in per_fold_columns)  # the check is not vacuous
    assert any("asnorm" in c for c in per_fold_columns)


def test_answer_key_is_part_of_the_score_fingerprint(tiny_experiment, tmp_path: Path) -> None:
    """A changed key rescores; a key that does not match the pairs is reported, not dropped."""
    cfg = tiny_experiment
    for fold in range(2):
        train_stage(cfg, fold)
        embed_stage(cfg, fold)
    pairs = pd.read_csv(cfg.paths.input / "public-test.csv")
    key = cfg.paths.input / "public-test-labels.csv"
    saved = key.read_bytes() if key.exists() else None
    try:
        pairs.assign(label=[1, 0] * (len(pairs) // 2) + [1] * (len(pairs) % 2)).to_csv(
            key, index=False
        )
        score_stage(cfg)
        assert (
            "accuracy_balanced" in read_json(cfg.experiment_dir / "metrics.json")["test"]["asnorm"]
        )
        pairs.iloc[::-1].assign(label=1).to_csv(key, index=False)
        score_stage(cfg)  # not skipped: the key changed
        test = read_json(cfg.experiment_dir / "metrics.json")["test"]
        assert "does not match" in test["answer_key_problem"] and "asnorm" not in test
    finally:
        if saved is None:
            key.unlink()
        else:
            key.write_bytes(saved)


def test_a_failed_score_keeps_the_last_good_scores(tiny_experiment) -> None:
    """A fold count that does not match the embeddings fails before anything is removed."""
    cfg = tiny_experiment
    for fold in range(2):
        train_stage(cfg, fold)
        embed_stage(cfg, fold)
    score_stage(cfg)
    names = ("oof_scores.csv", "test_scores.csv", "metrics.json")
    before = {n: (cfg.experiment_dir / n).read_bytes() for n in names}
    three = cfg.model_copy(update={"folds": cfg.folds.model_copy(update={"n_folds": 3})})
    with pytest.raises(FileNotFoundError, match="existing scores .* are unchanged"):
        score_stage(three)
    assert {n: (cfg.experiment_dir / n).read_bytes() for n in names} == before


def test_stack_with_graph_features_and_transitive_submit(tiny_experiment, tmp_path: Path) -> None:
    from src.stacking.stack import run_stack
    from src.stacking.submit import submit_stage

    cfg = tiny_experiment
    for fold in range(2):
        train_stage(cfg, fold)
        embed_stage(cfg, fold)
    score_stage(cfg)
    stack = cfg.stack.model_copy(update={"graph_features": True, "num_threads": 1})
    submit = cfg.submit.model_copy(update={"transitive": "on"})
    graphed = cfg.model_copy(update={"stack": stack, "submit": submit, "variant": "graph"})
    result = run_stack(graphed, [cfg.experiment_dir])
    features = set(result.importances["feature"])
    wanted = {"cnn__g_log_rank_max", "cnn__g_two_hop", "cnn__g_same_cluster_0", "cnn__g_tree_sim"}
    assert wanted | {"cnn__g_profile_corr", "cnn__g_expanded_sim"} <= features
    assert np.isfinite(result.test["prob"]).all() and np.isfinite(result.oof["prob"]).all()
    assert set(result.metrics["graph_adversarial_auc"]) == {
        "neighbourhood",
        "local normalisation",
        "paths",
        "clusters",
        "second order",
    }
    assert "eer" in result.metrics["without_graph"]
    submit_stage(graphed)
    scores = pd.read_csv(graphed.submission_scores_path)
    assert len(scores) == len(pd.read_csv(cfg.paths.input / "public-test.csv"))
    from src.report.report import report_stage

    report_stage(graphed)
    assert "## Trial graph" in (graphed.report_dir / "summary.md").read_text()
