"""Input hygiene (issue 22): what a spreadsheet, macOS, `cp -p` or a typo does to the input gives
what the clean input gives, or a clear error; each expected value is the clean input's."""

from __future__ import annotations

import logging
import os
import shutil
import unicodedata
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from src.cli import REPO, main
from src.config import load_config
from src.data.cache import AudioCache, read_manifest
from src.data.folds import assign_folds, check_folds, largest_workable_folds
from src.data.pairs import DataLayoutError, pair_list_from_text, read_pair_list
from src.data.prepare import prepare_stage
from src.report.report import _data_notes_lines, data_notes
from src.runner import RunError, ensure_input
from src.serve.app import parse_pairs, upload_name
from src.stacking.submit import submit_stage
from tests.conftest import TINY, config_for, write_tone

NAME = "người_nữ.wav"  # Vietnamese: NFC and NFD spell it with different code points
NFD = unicodedata.normalize("NFD", NAME)
CLEAN = f"audio_1,audio_2\n{NAME},b.wav\nc.wav,{NAME}\nb.wav,c.wav\n"


def dirty(text: str, bom: bool = True) -> str:
    """``text`` as a spreadsheet export on Windows might write it: a space after each comma,
    CRLF line ends, a byte-order mark, the names decomposed (NFD)."""
    spaced = text.replace(",", ", ").replace("\n", "\r\n")
    return ("\ufeff" if bom else "") + unicodedata.normalize("NFD", spaced)


@pytest.mark.parametrize(
    "text",
    [
        CLEAN.replace(",", ", "),  # values and header spaced
        CLEAN.replace("\n", "\r\n"),
        "\ufeff" + CLEAN,
        unicodedata.normalize("NFD", CLEAN),
        " audio_1 , audio_2 \n" + CLEAN.split("\n", 1)[1],
        dirty(CLEAN),
    ],
)
def test_pair_reader_reads_a_dirty_csv_as_the_clean_one(tmp_path: Path, text: str) -> None:
    clean = pair_list_from_text(CLEAN, "clean")
    path = tmp_path / "public-test.csv"
    path.write_bytes(text.encode("utf-8"))
    got = read_pair_list(path)
    pd.testing.assert_frame_equal(got.pairs, clean.pairs)
    assert got.written["audio_1"][0].strip() == text.split("\n")[1].split(",")[0].strip()
    # the API reads the same text the same way (its names are the cleaned upload names)
    names = {"b.wav", "c.wav", upload_name(NFD + " ", {})}
    pd.testing.assert_frame_equal(parse_pairs(text, names, 100), clean.pairs)


def test_pair_reader_names_the_row_and_the_problem(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text("audio_1,audio_2\na.wav,b.wav\nc.wav, \n")
    with pytest.raises(DataLayoutError, match=r"empty file name in row\(s\) 2"):
        read_pair_list(path)
    path.write_text("audio_1,audio_2\na.wav,b.wav\nc.wav\n")  # a short row
    with pytest.raises(DataLayoutError, match=r"empty file name in row\(s\) 2"):
        read_pair_list(path)
    path.write_text("audio_1, audio_1,audio_2\na.wav,b.wav,c.wav\n")
    with pytest.raises(DataLayoutError, match="appear twice"):
        read_pair_list(path)
    path.write_text("audio_1;audio_2\na.wav;b.wav\n")
    with pytest.raises(DataLayoutError, match=r"missing column.*audio_1,audio_2"):
        read_pair_list(path)
    with pytest.raises(Exception, match="are the same name") as refused:
        upload_name(NFD, {NAME: NAME})
    assert refused.value.status_code == 400


def make_data(root: Path, n_test: int = 4) -> Path:
    """Three speakers' training clips and ``n_test`` test clips, one of them named ``NAME``."""
    for s in range(4):
        for c in range(3):
            write_tone(root / "train" / f"{10 + s}-{'MF'[s % 2]}-30" / f"{c}.wav", 0.8,
                       freq=130.0 + 30 * s + 5 * c, seed=10 * s + c)  # fmt: skip
    names = [NAME, "b.wav", "c.wav", "d.wav"][:n_test]
    for i, name in enumerate(names):
        write_tone(root / "public-test" / name, 1.0 + 0.1 * i, freq=300.0 + 20 * i, seed=50 + i)
    rows = [(names[i], names[(i + 1) % n_test]) for i in range(n_test)]
    pd.DataFrame(rows, columns=["audio_1", "audio_2"]).to_csv(root / "public-test.csv", index=False)
    return root


def test_dirty_csv_and_nfd_file_name_prepare_like_the_clean_input(tmp_path: Path) -> None:
    clean_root = make_data(tmp_path / "clean")
    clean = read_manifest(prepare_stage(config_for(clean_root, tmp_path / "a")))
    dirty_root = tmp_path / "dirty"
    shutil.copytree(clean_root, dirty_root)
    os.rename(dirty_root / "public-test" / NAME, dirty_root / "public-test" / NFD)  # as macOS
    csv = dirty_root / "public-test.csv"
    csv.write_bytes(dirty(csv.read_text(), bom=False).replace(NFD, NAME).encode())  # CSV: NFC
    prep = prepare_stage(config_for(dirty_root, tmp_path / "b"))
    got = read_manifest(prep)
    columns = [c for c in clean.columns if c != "path"]
    pd.testing.assert_frame_equal(got[columns], clean[columns])
    clean_pairs = pd.read_csv(tmp_path / "a" / "outputs" / "prep" / "test_pairs.csv")
    pd.testing.assert_frame_equal(pd.read_csv(prep / "test_pairs.csv"), clean_pairs)
    assert pd.read_csv(prep / "fallback_pairs.csv").empty  # every pair scored


def test_two_files_with_one_normalised_name_are_refused(tmp_path: Path) -> None:
    root = make_data(tmp_path / "data")
    write_tone(root / "public-test" / NFD, 1.0)  # beside the NFC one
    with pytest.raises(DataLayoutError, match="same name once normalised") as refused:
        prepare_stage(config_for(root, tmp_path))
    assert NAME in str(refused.value) and NFD in str(refused.value)


def test_submission_repeats_the_rows_as_written(tmp_path: Path) -> None:
    """Spaced CSV, NFD names: submit checks the cleaned rows and writes the user's own."""
    root = make_data(tmp_path / "data")
    csv = root / "public-test.csv"
    written = dirty(csv.read_text())
    csv.write_bytes(written.encode())
    cfg = config_for(root, tmp_path, "submit.transitive=off")
    prep = prepare_stage(cfg)
    scored = pd.read_csv(prep / "test_pairs.csv")  # what score and stack carry on
    cfg.stack_dir.mkdir(parents=True)
    scored.assign(prob=[0.9, 0.2, 0.8, 0.1]).to_csv(cfg.stack_dir / "test_predictions.csv")
    oof = pd.DataFrame({"label": [1, 0, 1, 0], "prob": [0.8, 0.3, 0.6, 0.4]})
    oof.to_csv(cfg.stack_dir / "oof_predictions.csv", index=False)
    submit_stage(cfg)
    submission = pd.read_csv(cfg.submission_path, dtype=str, keep_default_na=False)
    rows = [line.split(",") for line in written.lstrip("\ufeff").split("\r\n")[1:] if line]
    assert submission[["audio_1", "audio_2"]].values.tolist() == rows  # as written
    assert submission["label"].tolist() == ["1", "0", "1", "0"]  # as the clean input's


def replace_keeping_size_and_time(path: Path, seed: int) -> None:
    """Other audio of the same byte size, modification time kept (``cp -p``, rsync -a)."""
    info = os.stat(path)
    data, rate = sf.read(path, dtype="float32")
    other = np.random.default_rng(seed).uniform(-0.3, 0.3, data.shape).astype(np.float32)
    sf.write(path, other, rate, subtype="PCM_16")
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))
    assert os.stat(path).st_size == info.st_size


def test_changed_content_with_same_size_and_time_is_redecoded(tmp_path: Path, caplog) -> None:
    root = make_data(tmp_path / "data")
    cfg = config_for(root, tmp_path)
    prep = prepare_stage(cfg)
    with caplog.at_level(logging.INFO):
        prepare_stage(cfg)
    assert "inputs unchanged" in caplog.text
    replace_keeping_size_and_time(root / "train" / "11-F-30" / "1.wav", seed=3)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        prepare_stage(cfg)
    assert "1 file(s) new or changed" in caplog.text
    assert "decoding 1 new or changed file(s); 15 reused" in caplog.text
    # the expected value: a prepare of the changed folder from scratch
    fresh = prepare_stage(config_for(root, tmp_path / "fresh"))
    got, want = read_manifest(prep), read_manifest(fresh)
    columns = [c for c in want.columns if c != "path"]
    pd.testing.assert_frame_equal(got[columns], want[columns])
    assert (prep / "audio.int16").read_bytes() == (fresh / "audio.int16").read_bytes()
    cache = AudioCache(prep)
    assert cache.length("train/11-F-30/1.wav") == AudioCache(fresh).length("train/11-F-30/1.wav")


def test_a_moved_data_folder_is_hashed_not_decoded(tmp_path: Path, caplog) -> None:
    root = make_data(tmp_path / "data")
    cfg = config_for(root, tmp_path)
    prepare_stage(cfg)
    moved = tmp_path / "moved"
    shutil.copytree(root, moved)  # new inodes and ctimes, same bytes
    with caplog.at_level(logging.INFO):
        prepare_stage(
            cfg.model_copy(update={"paths": cfg.paths.model_copy(update={"input": moved})})
        )
    assert "inputs unchanged (0 files by stat, 16 hashed" in caplog.text


def test_empty_speaker_folder_and_truncated_clip_are_logged_and_listed(tmp_path, caplog) -> None:
    root = make_data(tmp_path / "data")
    (root / "train" / "20-M-40").mkdir()
    write_tone(root / "train" / "10-M-30" / "long.wav", 3.0)
    cfg = config_for(root, tmp_path, "data.max_duration=2.0")
    with caplog.at_level(logging.WARNING):
        prep = prepare_stage(cfg)
    assert (
        "skipping speaker folder" in caplog.text and "20-M-40: empty speaker folder" in caplog.text
    )
    assert "1 clip(s) longer than data.max_duration=2 s are truncated" in caplog.text
    bad = pd.read_csv(prep / "bad_files.csv")
    assert bad["path"].str.endswith("20-M-40/").tolist() == [True]
    notes = "\n".join(_data_notes_lines(data_notes(prep, read_manifest(prep))))
    assert "20-M-40/ | empty speaker folder" in notes
    assert "train/10-M-30/long.wav | 2.0" in notes
    # the clean input (no empty folder, no long clip) has nothing to note
    assert (
        data_notes(prepare_stage(config_for(make_data(tmp_path / "c"), tmp_path / "c")), None)
        is None
    )


def speakers_frame(n_speakers: int, clips: int) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"id": f"train/{s}-{'MF'[s % 2]}-30/{c}.wav", "speaker": str(s), "gender": "MF"[s % 2]}
            for s in range(n_speakers)
            for c in range(clips)
        ]
    )


def test_fold_error_says_the_real_cause_and_the_largest_n_folds() -> None:
    files = speakers_frame(12, 8)  # every speaker has 8 usable files
    with pytest.raises(ValueError, match="no different-speaker trials") as refused:
        check_folds(files, assign_folds(files, 7, seed=0), 7, seed=0)
    assert "the largest folds.n_folds that works for this data is 6" in str(refused.value)
    check_folds(files, assign_folds(files, 6, seed=0), 6, seed=0)  # the advice works
    singles = speakers_frame(12, 1)  # two speakers per fold, but one file each
    with pytest.raises(ValueError, match="no same-speaker trials"):
        check_folds(singles, assign_folds(singles, 2, seed=0), 2, seed=0)
    assert largest_workable_folds(singles, 0, 5) == 0
    with pytest.raises(ValueError, match="cannot fill 20 folds; the largest .* is 6"):
        assign_folds(files, 20, seed=0)


def test_a_named_input_folder_that_is_missing_is_an_error_not_the_demo(tmp_path, caplog) -> None:
    typo = tmp_path / "some" / "typo"
    with caplog.at_level(logging.ERROR):
        assert main(["run", f"paths.input={typo}"]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and f"input folder {typo} does not exist" in errors[0]
    assert "train/<id>-<gender>-<age>/*.wav" in errors[0]  # the expected layout
    assert not typo.exists() and not typo.parent.exists()
    # a demo config pointed at a folder: no demo data there either, unless --demo
    (tmp_path / "empty").mkdir()
    demo = load_config(REPO / "configs" / "demo.yaml", [f"paths.input={tmp_path / 'empty'}"])
    with pytest.raises(RunError, match="is empty: put your data there"):
        ensure_input(demo, demo=False)
    assert not any((tmp_path / "empty").iterdir())


def rename_test_file(root: Path, old: str, new: str) -> None:
    """Rename a test file of demo data on disk and in every CSV that names it."""
    os.rename(root / "public-test" / old, root / "public-test" / new)
    for csv in root.glob("public-test*.csv"):
        csv.write_text(csv.read_text().replace(old, unicodedata.normalize("NFC", new)))


def test_dirty_input_runs_every_stage_as_the_clean_input(tmp_path: Path, caplog) -> None:
    """The clean data through every stage; then the same data made dirty in place (spaced,
    CRLF, BOM CSVs; a test file renamed to its NFD spelling): prepare finds the same inputs,
    every stage agrees, and the submission is the clean one in the user's spelling."""
    from src.data.demo import generate_demo
    from src.runner import run_pipeline

    root = tmp_path / "data"
    generate_demo(root, n_speakers=8, clips_per_speaker=4, n_test_speakers=2,
                  test_clips_per_speaker=2, seed=0)  # fmt: skip
    first = str(pd.read_csv(root / "public-test.csv")["audio_1"][0])
    rename_test_file(root, first, NAME)
    cfg = config_for(root, tmp_path, *TINY, "train.epochs=1", "train.steps_per_epoch=2",
                     "train.average_last=1", "stack.graph_features=false")  # fmt: skip
    stages = ["prepare", "folds", "train", "embed", "score", "stack", "submit", "report"]
    run_pipeline(cfg, stages)
    clean = pd.read_csv(cfg.submission_path)
    clean_metrics = (cfg.report_dir / "metrics.json").read_text()

    rename_test_file(root, NAME, NFD)
    for name in ("public-test.csv", "public-test-labels.csv"):
        (root / name).write_bytes(dirty((root / name).read_text()).encode())
    with caplog.at_level(logging.INFO):
        run_pipeline(cfg, stages)
    assert "prepare: inputs unchanged (" in caplog.text  # same names, same content
    submission = pd.read_csv(cfg.submission_path, dtype={"label": int}, keep_default_na=False)
    written = read_pair_list(root / "public-test.csv").written
    pd.testing.assert_frame_equal(submission[["audio_1", "audio_2"]], written)
    assert submission["audio_2"].str.startswith(" ").all()  # the user's own spelling
    assert submission["label"].tolist() == clean["label"].tolist()
    assert (cfg.report_dir / "metrics.json").read_text() == clean_metrics  # answer key read too


def test_a_row_check_failure_names_the_row_and_the_difference() -> None:
    from src.stacking.submit import SubmissionError, check_submission

    want = pd.DataFrame({"audio_1": ["a", "c", "e"], "audio_2": ["b", "d", "f"]})
    got = want.assign(audio_2=["b", "d", "x"], label=0)
    with pytest.raises(SubmissionError, match=r"row 3: \('e', 'x'\) vs \('e', 'f'\)"):
        check_submission(got, want)
