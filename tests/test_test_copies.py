"""Test clips that are byte copies of training clips: listed, refused or used, as configured."""

import shutil
from pathlib import Path

import pandas as pd
import pytest

from src.data.prepare import prepare_stage
from src.data.zalo import DataLayoutError
from src.stacking.submit import label_known_copies
from tests.conftest import config_for


def _copy_two_training_clips(root: Path) -> None:
    """test000 and test001 become copies of two clips of speaker 100, test002 of speaker 101."""
    for name, source in (
        ("test000.wav", "100-M-20/100-0.wav"),
        ("test001.wav", "100-M-20/100-1.wav"),
        ("test002.wav", "101-F-21/101-0.wav"),
    ):
        shutil.copy(root / "train" / source, root / "public-test" / name)


def test_copies_are_listed_in_the_manifest_folder(zalo_root: Path, tmp_path: Path, caplog) -> None:
    _copy_two_training_clips(zalo_root)
    with caplog.at_level("WARNING"):
        prep = prepare_stage(config_for(zalo_root, tmp_path))
    copies = pd.read_csv(prep / "test_train_copies.csv", dtype=str)
    assert list(copies["name"]) == ["test000.wav", "test001.wav", "test002.wav"]
    assert list(copies["speaker"]) == ["100", "100", "101"]
    assert "3 test file(s) are exact copies of training files" in caplog.text


def test_error_policy_stops_prepare_naming_the_files(zalo_root: Path, tmp_path: Path) -> None:
    _copy_two_training_clips(zalo_root)
    cfg = config_for(zalo_root, tmp_path, "data.test_train_copies=error")
    with pytest.raises(DataLayoutError, match="test000.wav = train/100-M-20/100-0.wav"):
        prepare_stage(cfg)


def test_no_copies_writes_an_empty_list(zalo_root: Path, tmp_path: Path) -> None:
    prep = prepare_stage(config_for(zalo_root, tmp_path))
    assert pd.read_csv(prep / "test_train_copies.csv").empty


def test_use_identity_labels_only_pairs_of_two_known_copies() -> None:
    table = pd.DataFrame(
        {
            "audio_1": ["test000.wav", "test000.wav", "test000.wav", "test005.wav"],
            "audio_2": ["test001.wav", "test002.wav", "test004.wav", "test004.wav"],
            "score": [0.1, 0.9, 0.5, 0.4],
            "label": [0, 1, 1, 0],
        }
    )
    copies = pd.DataFrame(
        {"name": ["test000.wav", "test001.wav", "test002.wav"], "speaker": ["100", "100", "101"]}
    )
    out = label_known_copies(table, copies)
    assert list(out["label"]) == [1, 0, 1, 0]
    assert list(out["label_source"]) == ["train_copies", "train_copies", "policy", "policy"]
