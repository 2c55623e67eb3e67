from pathlib import Path

import pytest

from src.config import ConfigError, config_to_yaml, load_config

CONFIGS = sorted(Path("configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_validates(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.experiment


def test_unknown_top_level_key_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("experimnet: typo\n")
    with pytest.raises(ConfigError, match="unknown config key 'experimnet'"):
        load_config(bad)


def test_unknown_nested_key_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epoch: 3\n")
    with pytest.raises(ConfigError, match="unknown config key 'train.epoch'"):
        load_config(bad)


def test_misspelled_override_fails() -> None:
    with pytest.raises(ConfigError, match="train.learning_rate"):
        load_config(None, ["train.learning_rate=0.1"])


def test_wrong_type_fails_with_key() -> None:
    with pytest.raises(ConfigError, match="train.epochs"):
        load_config(None, ["train.epochs=many"])


def test_extends_merges_sections(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text("seed: 7\ntrain:\n  epochs: 9\n  lr: 0.1\n")
    (tmp_path / "child.yaml").write_text("extends: base.yaml\ntrain:\n  epochs: 3\n")
    cfg = load_config(tmp_path / "child.yaml", ["train.batch_size=8"])
    assert (cfg.seed, cfg.train.epochs, cfg.train.lr, cfg.train.batch_size) == (7, 3, 0.1, 8)


def test_extends_loop_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="loop"):
        load_config(tmp_path / "a.yaml")


def test_resolved_config_round_trips(tmp_path: Path) -> None:
    cfg = load_config(None, ["folds.n_folds=3", "train.crop_seconds=[0.5, 1.5]"])
    saved = tmp_path / "resolved.yaml"
    saved.write_text(config_to_yaml(cfg))
    assert load_config(saved) == cfg


def test_missing_config_file() -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config("configs/does-not-exist.yaml")


def test_yaml_on_off_words_are_taken_as_words() -> None:
    assert load_config(None, ["submit.transitive=off"]).submit.transitive == "off"
    assert load_config(None, ["submit.transitive=on"]).submit.transitive == "on"
