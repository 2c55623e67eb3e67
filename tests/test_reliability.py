"""Nothing lost, nothing silently wrong: stage reuse, atomic writes, long clips, bad input, CLI.

Kill-and-resume of training is in ``test_kill_resume.py``; single bad training files in
``test_prepare.py``; submission row checks in ``test_submit.py``.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from src.cli import main
from src.config import load_config
from src.data.cache import AudioCache, read_manifest
from src.data.demo import generate_demo
from src.data.folds import folds_stage
from src.data.prepare import prepare_stage
from src.data.zalo import DataLayoutError, read_pair_csv
from src.inference.embed import embed_clips, embed_stage
from src.inference.score import score_stage
from src.stacking.inputs import StageInputError, read_test_pairs
from src.stacking.stack import stack_stage
from src.stacking.submit import ScoreSource, build_submission, submit_stage
from src.training.checkpoint import save_checkpoint
from src.training.train import train_stage
from src.util.io import write_csv, write_json, write_npz
from src.util.stage_cache import stamp_path
from tests.conftest import TINY as CORE
from tests.conftest import config_for, make_zalo, write_tone

REPO = Path(__file__).resolve().parents[1]
TINY = (
    *CORE, "train.epochs=1", "train.steps_per_epoch=2", "score.asnorm_top_k=5",
    "train.device=cpu", "stack.model=logistic",
)  # fmt: skip


def tmp_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.tmp"))


# ------------------------------------------------------------------------------------------
# Stage reuse: unchanged inputs skip, a change redoes the stage and everything downstream
# ------------------------------------------------------------------------------------------


def run_pipeline(cfg, caplog) -> dict[str, int]:
    """Run prepare .. submit; return how many "reusing" messages each stage logged."""
    stages = {
        "prepare": lambda: prepare_stage(cfg),
        "folds": lambda: folds_stage(cfg),
        "train": lambda: [train_stage(cfg, k) for k in range(2)],
        "embed": lambda: [embed_stage(cfg, k) for k in range(2)],
        "score": lambda: score_stage(cfg),
        "stack": lambda: stack_stage(cfg),
        "submit": lambda: submit_stage(cfg),
    }
    reused = {}
    for name, stage in stages.items():
        caplog.clear()
        with caplog.at_level(logging.INFO):
            stage()
        reused[name] = caplog.text.count("reusing")
    return reused


def test_rerun_reuses_and_a_change_redoes_downstream(tmp_path: Path, caplog, monkeypatch) -> None:
    generate_demo(tmp_path / "data", n_speakers=8, clips_per_speaker=4, n_test_speakers=2,
                  test_clips_per_speaker=3, seed=5)  # fmt: skip
    cfg = config_for(tmp_path / "data", tmp_path, *TINY)
    everything = {"prepare": 0, "folds": 0, "train": 0, "embed": 0, "score": 0, "stack": 0}
    assert run_pipeline(cfg, caplog) == {**everything, "submit": 0}
    submission = tmp_path / "outputs" / "submission.csv"
    first = submission.read_bytes()

    # stray temporaries of killed writes next to every output are ignored
    out_dirs = [cfg.paths.prep_dir, cfg.folds_dir, cfg.fold_dir(0), cfg.experiment_dir,
                cfg.paths.outputs / "stack"]  # fmt: skip
    for folder in out_dirs:
        for name in (".manifest.csv.k1.tmp", ".best.pt.k1.tmp", ".oof_scores.csv.k1.tmp"):
            (folder / name).write_bytes(b"half a file")
    reused_all = {"prepare": 1, "folds": 1, "train": 2, "embed": 2, "score": 1, "stack": 1}
    assert run_pipeline(cfg, caplog) == {**reused_all, "submit": 0}  # submit: cheap, always
    assert submission.read_bytes() == first

    # an upgrade that changes what the stack computes (its version bumped): only it is redone
    import src.stacking.stack as stack_module

    monkeypatch.setattr(stack_module, "STACK_VERSION", stack_module.STACK_VERSION + 1)
    assert run_pipeline(cfg, caplog) == {**reused_all, "stack": 0, "submit": 0}

    # a config value only scoring depends on: scoring and what follows are redone
    top_k = cfg.model_copy(deep=True)
    top_k.score.asnorm_top_k = 3
    assert run_pipeline(top_k, caplog) == {**reused_all, "score": 0, "stack": 0, "submit": 0}

    # a new training clip: every stage is redone, each seeing its inputs' new fingerprint
    write_tone(next((tmp_path / "data" / "train").iterdir()) / "new-clip.wav", seconds=1.3)
    assert run_pipeline(top_k, caplog) == {**everything, "submit": 0}
    assert "new-clip.wav" in set(read_manifest(cfg.paths.prep_dir)["name"])
    assert len(pd.read_csv(submission)) == len(pd.read_csv(tmp_path / "data" / "public-test.csv"))


# ------------------------------------------------------------------------------------------
# Atomic outputs: a crash inside a write leaves the previous file and no partial one
# ------------------------------------------------------------------------------------------

RAW_WRITE = re.compile(
    r"\.to_csv\((?!index=False\))|json\.dump\(|np\.save|torch\.save\(|\.write_text\(|"
    r"\.write_bytes\(|\.savefig\(|open\([^)]*[\"'][wax]b?\+?[\"']"
)
# files allowed to write directly, and why
RAW_WRITE_ALLOWED = {
    "src/util/io.py": "the atomic writers themselves",
    "src/data/demo_layout.py": "writes the input data set (one buffered write per clip), no stage "
    "output",
}


def test_every_output_write_goes_through_util_io() -> None:
    offenders = []
    for path in sorted((REPO / "src").rglob("*.py")):
        name = path.relative_to(REPO).as_posix()
        if name in RAW_WRITE_ALLOWED:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            wrapped = "write_with(" in line or "atomic_path(" in line  # a temporary path
            if RAW_WRITE.search(line) and not wrapped and not line.lstrip().startswith(">>>"):
                offenders.append(f"{name}:{number}: {line.strip()}")
    assert not offenders, "write these through src/util/io.py:\n" + "\n".join(offenders)


def _half_then_fail(real):
    """A writer that puts half its bytes into the file, then fails like a full disk."""

    def writer(*args, **kwargs):
        target = next(
            a for a in (*args, *kwargs.values()) if hasattr(a, "write") or isinstance(a, Path)
        )
        data = b"x" * 5000
        if hasattr(target, "write"):
            target.write(data.decode() if "b" not in getattr(target, "mode", "b") else data)
        else:
            Path(target).write_bytes(data)
        raise OSError(28, "No space left on device")

    return writer


@pytest.mark.parametrize("kind", ["csv", "npz", "checkpoint", "json"])
def test_crash_inside_a_write_keeps_the_previous_file(tmp_path: Path, kind, monkeypatch) -> None:
    frame = pd.DataFrame({"a": [1, 2, 3]})
    writers = {
        "csv": ("table.csv", lambda p: write_csv(p, frame), (pd.DataFrame, "to_csv")),
        "npz": ("arrays.npz", lambda p: write_npz(p, v=np.arange(3)), (np, "savez")),
        "checkpoint": ("last.pt", lambda p: save_checkpoint(p, {"w": torch.ones(3)}),
                       (torch, "save")),
        "json": ("metrics.json", lambda p: write_json(p, {"eer": 0.1}), None),
    }  # fmt: skip
    name, write, target = writers[kind]
    path = tmp_path / name
    write(path)
    before = path.read_bytes()
    if target is None:  # JSON is encoded before the file is opened: fail on a bad value
        with pytest.raises(TypeError):
            write_json(path, {"eer": object()})
    else:
        owner, attribute = target
        monkeypatch.setattr(owner, attribute, _half_then_fail(getattr(owner, attribute)))
        with pytest.raises(OSError, match="No space"):
            write(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no partial file, no .tmp


def test_submission_is_never_written_partially(tmp_path: Path, monkeypatch) -> None:
    cfg = load_config(None, [f"paths.input={tmp_path / 'in'}", f"paths.outputs={tmp_path}"])
    pairs = pd.DataFrame({"audio_1": ["a", "c", "a"], "audio_2": ["b", "d", "a"]})
    write_csv(tmp_path / "in" / "public-test.csv", pairs)
    write_csv(tmp_path / "stack" / "test_predictions.csv", pairs.assign(prob=[0.9, 0.2, 0.7]))
    write_csv(tmp_path / "stack" / "oof_predictions.csv",
              pd.DataFrame({"label": [1, 0], "prob": [0.8, 0.1]}))  # fmt: skip
    submit_stage(cfg)
    before = (tmp_path / "submission.csv").read_bytes()
    monkeypatch.setattr(pd.DataFrame, "to_csv", _half_then_fail(pd.DataFrame.to_csv))
    with pytest.raises(OSError):
        submit_stage(cfg)
    assert (tmp_path / "submission.csv").read_bytes() == before
    assert not tmp_files(tmp_path)


def test_prepare_killed_mid_decode_or_after_the_cache_swap(zalo_root, tmp_path, monkeypatch):
    """Mid-decode or any failure before the swap: the old manifest and cache stay, consistent
    (outputs are built aside). Killed mid-swap, after the new cache replaced the old one: no
    manifest is left to pair with it. Either way the rerun redoes prepare."""
    import src.data.prepare as prepare_module

    cfg = config_for(zalo_root, tmp_path)
    prep = prepare_stage(cfg)
    old_cache = (prep / "audio.int16").read_bytes()
    old_manifest = (prep / "manifest.csv").read_bytes()
    write_tone(zalo_root / "train" / "100-M-20" / "added.wav", seconds=2.0)
    real_decode, calls = prepare_module._decode_job, []

    def decode_then_die(job):
        calls.append(job)
        if len(calls) == 5:
            raise KeyboardInterrupt("killed")
        return real_decode(job)

    monkeypatch.setattr(prepare_module, "_decode_job", decode_then_die)
    with pytest.raises(KeyboardInterrupt):
        prepare_stage(cfg, force=True)  # every file decoded (else only the added one)
    old_stamp = stamp_path(prep, "prepare").read_bytes()

    def old_outputs_intact() -> None:
        assert (prep / "audio.int16").read_bytes() == old_cache
        assert (prep / "manifest.csv").read_bytes() == old_manifest
        assert stamp_path(prep, "prepare").read_bytes() == old_stamp  # of the old inputs
        assert not tmp_files(prep) and not (prep / ".staging").exists()
        AudioCache(prep)  # still a consistent pair

    old_outputs_intact()
    monkeypatch.setattr(prepare_module, "_decode_job", real_decode)
    monkeypatch.setattr(prepare_module, "_mark_duplicates", _raise(ValueError))
    with pytest.raises(ValueError):
        prepare_stage(cfg)
    old_outputs_intact()

    real_replace = prepare_module.os.replace

    def replace_then_die(source, target):
        if Path(source).name == "manifest.csv" and Path(source).parent.name == ".staging":
            raise KeyboardInterrupt("killed mid-swap")
        real_replace(source, target)

    monkeypatch.undo()
    monkeypatch.setattr(prepare_module.os, "replace", replace_then_die)
    with pytest.raises(KeyboardInterrupt):
        prepare_stage(cfg)
    monkeypatch.undo()
    assert (prep / "audio.int16").read_bytes() != old_cache
    assert not stamp_path(prep, "prepare").exists()
    with pytest.raises(FileNotFoundError, match="run the prepare stage first"):
        read_manifest(prep)

    manifest = read_manifest(prepare_stage(cfg))
    assert "added.wav" in set(manifest["name"])
    cache = AudioCache(prep)
    assert cache.length("train/100-M-20/added.wav") == 32000


def _raise(error):
    def fail(*args, **kwargs):
        raise error("killed")

    return fail


# ------------------------------------------------------------------------------------------
# Disk and memory: 10-minute clips through prepare and embed
# ------------------------------------------------------------------------------------------

LONG_SECONDS = 600
LONG_FLOAT_BYTES = LONG_SECONDS * 16000 * 4  # one 10-minute clip as float32: 38.4 MB


def write_long_clip(path: Path, freq: float, seed: int) -> Path:
    """Ten minutes at 16 kHz: a tone plus noise, written as 16-bit PCM (19 MB)."""
    rng = np.random.default_rng(seed)
    n = LONG_SECONDS * 16000
    wave = np.sin(np.arange(n, dtype=np.float32) * np.float32(2 * np.pi * freq / 16000))
    wave *= 0.3
    wave += rng.standard_normal(n, dtype=np.float32) * np.float32(0.05)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, wave, 16000, subtype="PCM_16")
    return path


def traced_peak(function) -> tuple[object, int]:
    """Run ``function`` and return its result and its peak traced allocation (numpy included)."""
    tracemalloc.start()
    try:
        result = function()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


class CountingCache:
    """An AudioCache wrapper that counts whole-clip reads."""

    def __init__(self, cache: AudioCache) -> None:
        self.cache, self.reads = cache, 0

    def length(self, clip_id: str) -> int:
        return self.cache.length(clip_id)

    def samples(self, clip_id: str) -> np.ndarray:
        self.reads += 1
        return self.cache.samples(clip_id)


class FirstSampleExtractor:
    """Fake extractor: remembers each window's first samples, returns unit vectors."""

    dim, fingerprint = 4, "fake"

    def __init__(self) -> None:
        self.heads: list[np.ndarray] = []

    def embed(self, waves: np.ndarray) -> np.ndarray:
        self.heads.extend(waves[:, :8].copy())
        return np.tile(np.array([1.0, 0, 0, 0], np.float32), (len(waves), 1))


def test_long_clips_stream_through_prepare_and_embed(tmp_path: Path) -> None:
    root = make_zalo(tmp_path / "data", n_speakers=2, clips=2, n_test=2)
    long_id = "train/100-M-20/long0.wav"
    write_long_clip(root / long_id, 180.0, 0)
    cfg = config_for(root, tmp_path, "embed.window_seconds=3.0", "embed.hop_seconds=1.5")
    _, one_clip_peak = traced_peak(lambda: prepare_stage(cfg))
    for k, folder in enumerate(["100-M-20", "101-F-21", "101-F-21"], 1):
        write_long_clip(root / "train" / folder / f"long{k}.wav", 180.0 + 20 * k, k)
    prep, four_clip_peak = traced_peak(lambda: prepare_stage(cfg))

    # decoding holds a few copies of the clip being decoded, never all of them
    assert one_clip_peak < 5 * LONG_FLOAT_BYTES
    assert four_clip_peak - one_clip_peak < 0.5 * LONG_FLOAT_BYTES  # 3 more clips: 115 MB
    manifest = read_manifest(prep)
    long_rows = manifest[manifest["name"].str.startswith("long")]
    assert len(long_rows) == 4 and (long_rows["length"] == LONG_SECONDS * 16000).all()
    assert (prep / "audio.int16").stat().st_size == 2 * int(manifest["length"].sum())

    cache = CountingCache(AudioCache(prep))
    extractor = FirstSampleExtractor()
    ids = [long_id, "train/101-F-21/long2.wav"]
    (vectors, _), peak = traced_peak(lambda: embed_clips(extractor, cache, ids, cfg.embed, 16000))
    windows = 1 + int((LONG_SECONDS - 3) / 1.5)  # a 3 s window every 1.5 s: 399
    assert len(extractor.heads) == 2 * windows and vectors.shape == (2, 4)
    assert cache.reads == 2  # each clip read once, not once per window
    assert peak < 3 * LONG_FLOAT_BYTES
    whole = cache.cache.samples(long_id)
    for index in (0, 1, windows - 1):  # windows are the right slices, in order
        np.testing.assert_array_equal(extractor.heads[index], whole[index * 24000 :][:8])


# ------------------------------------------------------------------------------------------
# Bad input (those not already in test_prepare.py)
# ------------------------------------------------------------------------------------------


def dominant_frequency(samples: np.ndarray, rate: int = 16000) -> float:
    spectrum = np.abs(np.fft.rfft(samples))
    return float(np.argmax(spectrum) * rate / samples.size)


def test_8k_and_96k_files_go_through_prepare(zalo_root: Path, tmp_path: Path) -> None:
    write_tone(zalo_root / "train" / "100-M-20" / "low.wav", seconds=1.0, rate=8000, freq=300.0)
    write_tone(zalo_root / "train" / "101-F-21" / "high.wav", seconds=1.5, rate=96000, freq=440.0)
    write_tone(zalo_root / "public-test" / "test001.wav", seconds=1.2, rate=96000, freq=520.0)
    write_tone(zalo_root / "public-test" / "test002.wav", seconds=0.8, rate=8000, freq=350.0)
    prep = prepare_stage(config_for(zalo_root, tmp_path))
    manifest = read_manifest(prep).set_index("name")
    cache = AudioCache(prep)
    expected = [("low.wav", 8000, 1.0, 300.0), ("high.wav", 96000, 1.5, 440.0),
                ("test001.wav", 96000, 1.2, 520.0), ("test002.wav", 8000, 0.8, 350.0)]  # fmt: skip
    for name, rate, seconds, freq in expected:
        row = manifest.loc[name]
        assert row["sample_rate"] == rate and row["status"] == "ok"
        assert abs(int(row["length"]) - seconds * 16000) <= 1
        clip = cache.samples(row["id"])
        assert np.isfinite(clip).all()
        assert dominant_frequency(clip) == pytest.approx(freq, abs=2.0)  # resampled, not shifted


def test_non_utf8_names_are_skipped_with_a_reason(zalo_root: Path, tmp_path: Path) -> None:
    audio = (zalo_root / "train" / "100-M-20" / "100-0.wav").read_bytes()
    train = os.fsencode(zalo_root / "train")
    for folder, name in ((b"101-F-21", b"x\xff.wav"), (b"bad\xff", b"a.wav"),
                         (b"1\xfe-M-20", b"b.wav")):  # fmt: skip
        os.makedirs(train + b"/" + folder, exist_ok=True)
        with open(train + b"/" + folder + b"/" + name, "wb") as handle:
            handle.write(audio)
    with open(os.fsencode(zalo_root / "public-test") + b"/t\xff.wav", "wb") as handle:
        handle.write(audio)
    prep = prepare_stage(config_for(zalo_root, tmp_path))
    bad = pd.read_csv(prep / "bad_files.csv", encoding="utf-8")
    assert len(bad) == 5  # the 3 files, the badly named folder's file, the folder left empty
    assert bad["reason"].str.contains("not valid UTF-8").sum() == 3
    assert bad["reason"].str.contains("no usable audio file in this speaker folder").sum() == 1
    assert bad["reason"].str.contains("<id>-<gender>-<age>").sum() == 1
    assert bad["path"].str.contains("\\udc", regex=False).all()  # the bad byte, escaped
    manifest = read_manifest(prep)
    assert len(manifest) == 30 and manifest["id"].map(str.isascii).all()


def write_pairs_csv(root: Path, text: str) -> Path:
    path = root / "public-test.csv"
    path.write_text(text)
    return path


def test_self_pairs_and_blank_lines_are_kept_row_for_row(zalo_root, tmp_path, caplog) -> None:
    csv = write_pairs_csv(
        zalo_root,
        "audio_1,audio_2\n\ntest000.wav,test000.wav\ntest001.wav,test002.wav\n\n\n"
        "test002.wav,test002.wav\n",
    )
    with caplog.at_level(logging.WARNING):
        prep = prepare_stage(config_for(zalo_root, tmp_path))
    assert "2 row(s) pair a file with itself" in caplog.text
    pairs = read_pair_csv(prep / "test_pairs.csv")
    expected = read_test_pairs(csv)  # what submit checks against: blank lines read the same
    assert pairs.equals(expected) and len(pairs) == 3
    source = ScoreSource("s", pairs.assign(score=[1.0, 0.2, 1.0]), np.zeros(2), np.array([0, 1]))
    table, _ = build_submission(source, expected, "balanced", 0.5)
    assert table[["audio_1", "audio_2"]].equals(expected) and table["label"].tolist() == [1, 0, 1]


@pytest.mark.parametrize(
    ("text", "message"),
    [("", "empty file"), ("audio_1,audio_2\n", "no pairs"), ("\n\n", "empty file")],
)
def test_empty_test_csv_is_refused_by_prepare_and_submit(zalo_root, tmp_path, text, message):
    csv = write_pairs_csv(zalo_root, text)
    with pytest.raises(DataLayoutError, match=message):
        prepare_stage(config_for(zalo_root, tmp_path))
    with pytest.raises(StageInputError, match=message):  # the same reader, the same words
        read_test_pairs(csv)


@pytest.mark.parametrize(
    ("name", "writer", "reason"),
    [
        ("notes.txt", lambda p: p.write_text("audio_1,audio_2"), "unsupported extension"),
        ("test001.wav", lambda p: p.write_text("this is text"), "corrupt"),
        ("test001.wav", lambda p: sf.write(p, np.full(4000, np.inf, np.float32), 16000, "FLOAT"),
         "NaN or infinite"),
        ("test001.wav", lambda p: sf.write(p, np.full(1, 0.5, np.float32), 16000), "too short"),
        ("test001.wav", lambda p: p.write_bytes(b""), "empty file"),
    ],
)  # fmt: skip
def test_unusable_test_file_named_in_the_csv_stops_prepare(
    zalo_root, tmp_path, name, writer, reason
) -> None:
    """With data.strict_test, or when no pair is left to score."""
    writer(zalo_root / "public-test" / name)
    write_pairs_csv(zalo_root, f"audio_1,audio_2\ntest000.wav,{name}\n")
    with pytest.raises(DataLayoutError, match=re.escape(name)):
        prepare_stage(config_for(zalo_root, tmp_path, "data.strict_test=true"))
    with pytest.raises(DataLayoutError, match="no pair has two usable files: " + re.escape(name)):
        prepare_stage(config_for(zalo_root, tmp_path))
    if name.endswith(".wav"):  # decoded and refused: the reason is on record
        bad = pd.read_csv(tmp_path / "outputs" / "prep" / "bad_files.csv")
        assert bad.loc[bad["path"].str.endswith(name), "reason"].str.contains(reason).all()
    assert not (tmp_path / "outputs" / "prep" / "manifest.csv").exists()


def test_inf_training_clip_and_truncated_data_chunk(zalo_root: Path, tmp_path: Path) -> None:
    folder = zalo_root / "train" / "101-F-21"
    sf.write(folder / "inf.wav", np.r_[np.zeros(8000), np.inf].astype(np.float32), 16000, "FLOAT")
    whole = write_tone(folder / "cut.wav", seconds=1.0).read_bytes()
    (folder / "cut.wav").write_bytes(whole[: 44 + 16000])  # header intact, half the samples
    prep = prepare_stage(config_for(zalo_root, tmp_path))
    bad = pd.read_csv(prep / "bad_files.csv").set_index("path")
    assert "NaN or infinite" in bad.loc[str(folder / "inf.wav"), "reason"]
    cut = read_manifest(prep).set_index("name").loc["cut.wav"]  # kept: the samples it has
    assert cut["status"] == "ok" and cut["length"] == 8000


def test_folds_refuse_a_fold_without_trials(tmp_path: Path) -> None:
    root = make_zalo(tmp_path / "data", n_speakers=4, clips=1, n_test=2)
    cfg = config_for(root, tmp_path, "folds.n_folds=2")
    prepare_stage(cfg)
    with pytest.raises(ValueError, match="fold 0: none of its 2 speakers has two usable training"):
        folds_stage(cfg)
    assert not (cfg.folds_dir / "folds.csv").exists()


def test_embed_refuses_a_cache_that_does_not_match_the_manifest(zalo_root, tmp_path) -> None:
    prep = prepare_stage(config_for(zalo_root, tmp_path))
    cache = prep / "audio.int16"
    cache.write_bytes(cache.read_bytes()[:1000])
    with pytest.raises(RuntimeError, match="does not belong to this manifest.*--force"):
        AudioCache(prep)


# ------------------------------------------------------------------------------------------
# CLI and configs: one-line errors, every shipped config shown
# ------------------------------------------------------------------------------------------


def test_cli_errors_are_one_line_and_name_the_problem(zalo_root: Path, tmp_path: Path) -> None:
    typo = tmp_path / "typo.yaml"
    typo.write_text(
        "extends: " + str(REPO / "configs" / "base.yaml") + "\ndata:\n  sample_rte: 8\n"
    )
    (zalo_root / "public-test" / "test003.wav").write_text("text, not audio")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    commands = {
        "typo": ["prepare", "--config", str(typo)],
        "bad test file": ["prepare", f"paths.input={zalo_root}", f"paths.outputs={tmp_path}",
                          "data.workers=1", "data.strict_test=true"],
    }  # fmt: skip
    running = {
        name: subprocess.Popen([sys.executable, "-m", "src", *args], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, args in commands.items()
    }  # fmt: skip
    stderrs = {name: p.communicate(timeout=120)[1] for name, p in running.items()}
    results = {name: (running[name].returncode, stderr) for name, stderr in stderrs.items()}
    code, stderr = results["typo"]
    errors = [line for line in stderr.splitlines() if "ERROR" in line]
    assert code == 2 and len(errors) == 1 and "unknown config key 'data.sample_rte'" in errors[0]
    code, stderr = results["bad test file"]
    assert code == 1 and "prepare failed" in stderr and "test003.wav" in stderr
    for _, stderr in results.values():
        assert "Traceback" not in stderr


CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_show_config_prints_a_config_that_loads_back(path: Path, tmp_path, capsys) -> None:
    assert main(["show-config", "--config", str(path)]) == 0
    resolved = tmp_path / "resolved.yaml"
    resolved.write_text(capsys.readouterr().out)
    assert load_config(resolved) == load_config(path)
