"""Coarse samples (issue 35): an 8-bit file, or a quiet 16-bit one using few of its levels, gets
a warning naming its effective bits and ``checks.min_effective_bits``: in prepare's manifest and
log (training clips are kept) and per test file in the report's ``file_warnings.csv``; a normal
16-bit file gets none. (The API's warnings: ``tests/test_serve.py``.)"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from src.config import ChecksConfig
from src.data.audio import decode_audio, effective_bits
from src.data.cache import read_manifest
from src.data.checks import recording_warnings
from src.data.prepare import prepare_stage
from src.report.recording import file_warnings
from tests.conftest import config_for

RATE = 16000
WARNING = "coarse samples: "


def voice(peak: float, seconds: float = 3.5, seed: int = 0) -> np.ndarray:
    """A buzzy harmonic tone with a little noise, scaled to ``peak`` (float32)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    wave = sum(np.sin(2 * np.pi * 140.0 * h * t) / h for h in range(1, 8))
    wave = wave + 0.05 * rng.standard_normal(t.size)
    return (peak * wave / np.abs(wave).max()).astype(np.float32)


# name -> (samples, subtype, expected effective bits)
FILES = {
    "eight_bit.wav": (voice(0.9), "PCM_U8", (7.5, 8.0)),
    "quiet.wav": (voice(0.002), "PCM_16", (6.5, 7.5)),
    "normal.wav": (voice(0.5), "PCM_16", (14.5, 16.0)),
}


def write(path: Path, name: str, seed: int = 0) -> Path:
    """``FILES[name]`` written to ``path``; another ``seed``: other noise, the same level."""
    samples, subtype, _ = FILES[name]
    if seed:
        samples = np.roll(samples, 997 * seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, samples, RATE, subtype=subtype)
    return path


@pytest.mark.parametrize("name", list(FILES))
def test_effective_bits_follow_the_files_coding_and_level(tmp_path, name) -> None:
    low, high = FILES[name][2]
    bits = decode_audio(write(tmp_path / name, name), RATE).effective_bits
    assert low <= bits <= high


def test_the_coding_grid_is_found_in_any_container_and_a_dc_offset_does_not_count(
    tmp_path,
) -> None:
    eight = np.round(voice(0.9) * 128) / 128  # 8-bit audio stored as 16-bit and as float
    for subtype in ("PCM_16", "FLOAT"):
        path = tmp_path / f"eight_in_{subtype}.wav"
        sf.write(path, eight.astype(np.float32), RATE, subtype=subtype)
        assert 7.5 <= decode_audio(path, RATE).effective_bits <= 8.0
    quiet = np.round(voice(0.002) * 32768) / 32768
    shifted = (quiet + 0.25).astype(np.float32)  # a large DC offset, the same levels
    assert effective_bits(shifted) == effective_bits(quiet.astype(np.float32))
    assert 6.5 <= effective_bits(shifted) <= 7.5


def test_a_float_file_off_any_grid_is_not_estimated(tmp_path) -> None:
    path = tmp_path / "float.wav"
    sf.write(path, voice(0.002), RATE, subtype="FLOAT")  # full float precision, quiet
    bits = decode_audio(path, RATE).effective_bits
    assert math.isnan(bits)
    facts = {"effective_bits": bits, "peak": 0.002}
    assert recording_warnings(facts, ChecksConfig(), 1.0, -80.0) == []


def test_the_warning_names_the_bits_and_the_threshold() -> None:
    eight = {"effective_bits": 7.99, "peak": 0.9}
    quiet = {"effective_bits": 7.03, "peak": 0.002}
    (said,) = recording_warnings(eight, ChecksConfig(), 1.0, -80.0)
    assert said.startswith(f"{WARNING}7.99 effective bits (< 10 bits, checks.min_effective_bits)")
    assert "about 8-bit samples" in said
    (said,) = recording_warnings(quiet, ChecksConfig(), 1.0, -80.0)
    assert said.startswith(f"{WARNING}7.03 effective bits (< 10 bits, checks.min_effective_bits)")
    assert "a quiet recording (peak 0.002)" in said
    assert recording_warnings(quiet, ChecksConfig(min_effective_bits=7.0), 1.0, -80.0) == []
    assert recording_warnings({"effective_bits": 15.2}, ChecksConfig(), 1.0, -80.0) == []


def test_prepare_records_the_bits_and_warns_without_skipping_and_the_report_lists_test_files(
    zalo_root, tmp_path, caplog
) -> None:
    for name in FILES:
        write(zalo_root / "public-test" / f"test_{name}", name)
        write(zalo_root / "train" / "100-M-20" / f"train_{name}", name, seed=1)
    cfg = config_for(zalo_root, tmp_path)
    with caplog.at_level("WARNING"):
        manifest = read_manifest(prepare_stage(cfg))
    rows = manifest.set_index("name")
    for name, (_, _, (low, high)) in FILES.items():
        for split in ("test", "train"):
            assert low <= float(rows.loc[f"{split}_{name}", "effective_bits"]) <= high
    said = [r.getMessage() for r in caplog.records if "checks.min_effective_bits" in r.getMessage()]
    assert len(said) == 2  # one line per split, both coarse clips kept
    train = next(line for line in said if " train clip(s)" in line)
    assert train.startswith("2 train clip(s) have coarse samples (< 10 effective bits")
    assert "train_eight_bit.wav" in train and "train_quiet.wav" in train
    assert "normal" not in train
    table = file_warnings(manifest, cfg)
    coarse = table[table["warning"].str.startswith(WARNING)]
    assert sorted(coarse["name"]) == ["test_eight_bit.wav", "test_quiet.wav"]
    assert coarse["warning"].str.contains("checks.min_effective_bits").all()
    assert table[table["name"] == "test_normal.wav"].empty  # 3.5 s of speech, 16 bits
