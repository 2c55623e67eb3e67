"""The `prepare` stage: scan the data folder, decode every file once, write manifest and cache.

Outputs in ``<prep_dir>``:

- ``manifest.csv``: one row per usable file (see ``MANIFEST_COLUMNS``), with ``offset`` and
  ``length`` locating its 16 kHz int16 samples in ``audio.int16``;
- ``audio.int16``: all decoded clips back to back, each without its DC offset and
  peak-normalised so quiet clips keep their resolution (the original level is in the manifest's
  ``rms_dbfs`` and ``peak``, the offset removed in ``dc_offset``, how the channels were mixed in
  ``downmix``), read later as a memory map;
- ``bad_files.csv``: every file that was skipped, with the reason;
- ``test_pairs.csv``: the validated public-test pair list (when the CSV exists).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import pandas as pd

from src.config import DataConfig, ExperimentConfig
from src.data.audio import (
    DECODE_VERSION,
    AudioError,
    clip_facts,
    decode_audio,
    file_md5,
    peak_normalise,
    silence_reason,
    to_int16,
)
from src.data.zalo import (
    DataLayoutError,
    SkippedFile,
    SourceFile,
    check_pairs_exist,
    read_pair_csv,
    scan_test,
    scan_train,
    skipped_frame,
)
from src.util.io import atomic_path, write_csv, write_text
from src.util.logs import progress
from src.util.stage_cache import fingerprint, is_fresh, mark_done, mark_started

log = logging.getLogger(__name__)

CACHE_NAME = "audio.int16"
FALLBACK_NAME = "fallback_pairs.csv"  # test pairs naming a damaged file: answered by submit
MANIFEST_COLUMNS = [
    "id", "name", "path", "split", "speaker", "gender", "age", "duration", "sample_rate",
    "channels", "frames", "bytes", "md5", "status", "duplicate_of", "rms_dbfs", "peak", "snr_db",
    "truncated", "dc_offset", "downmix", "clipped_share", "speech_seconds", "offset", "length",
]  # fmt: skip


def _decode_job(job: tuple[SourceFile, DataConfig]) -> tuple[SourceFile, Any, dict | None, str]:
    """Decode one file in a worker; returns (file, int16 samples, facts, error message)."""
    source, cfg = job
    # a test file must be answered whatever it sounds like: its silence is a warning, not a skip
    silence = cfg.silence_dbfs if source.split == "train" else None
    try:
        clip = decode_audio(
            source.path,
            target_rate=cfg.sample_rate,
            min_seconds=cfg.min_duration,
            max_seconds=cfg.max_duration,
            silence_dbfs=silence,
            silent_channel_db=cfg.downmix_silent_db,
            cancel_db=cfg.downmix_cancel_db,
        )
    except AudioError as err:
        return source, None, None, str(err)
    except Exception as err:  # any decoder failure becomes a skip with its reason
        return source, None, None, f"unexpected decoding error: {type(err).__name__}: {err}"
    facts = clip_facts(clip, Path(source.path).stat().st_size) | {"md5": file_md5(source.path)}
    warning = ""
    if clip.rms_dbfs < cfg.silence_dbfs:
        reason = silence_reason(clip.rms_dbfs, clip.peak, clip.dc_offset)
        warning = f"near-silent test file kept: {reason}"
    return source, to_int16(peak_normalise(clip.samples)), facts, warning


COPIES_NAME = "test_train_copies.csv"


def test_train_copies(manifest: pd.DataFrame) -> pd.DataFrame:
    """Test files whose bytes (md5) equal a usable training file's: name, id, train id, speaker."""
    train = manifest[(manifest["split"] == "train") & (manifest["status"] == "ok")]
    first_train = train.drop_duplicates("md5").set_index("md5")
    test = manifest[manifest["split"] == "test"]
    copies = test[test["md5"].isin(first_train.index)]
    return pd.DataFrame(
        {
            "name": copies["name"].to_numpy(),
            "id": copies["id"].to_numpy(),
            "train_id": first_train.loc[copies["md5"], "id"].to_numpy(),
            "speaker": first_train.loc[copies["md5"], "speaker"].to_numpy(),
        }
    )


def check_test_train_copies(copies: pd.DataFrame, policy: str, where: Path) -> None:
    """Log (or, with ``data.test_train_copies=error``, refuse) test clips copied from training."""
    if copies.empty:
        return
    shown = ", ".join(
        f"{n} = {t}" for n, t in zip(copies["name"][:5], copies["train_id"][:5], strict=True)
    )
    message = (
        f"{len(copies)} test file(s) are exact copies of training files ({shown}"
        f"{', ...' if len(copies) > 5 else ''}); listed in {where}"
    )
    if policy == "error":
        raise DataLayoutError(f"{message} (data.test_train_copies=error)")
    action = {
        "report": "scored like any test clip",
        "use_identity": "pairs of two such clips are labelled by their training speakers",
    }[policy]
    log.warning("%s; %s (data.test_train_copies=%s)", message, action, policy)


def _mark_duplicates(manifest: pd.DataFrame) -> pd.DataFrame:
    """Keep the first file of each md5 group; later training copies get status `duplicate`."""
    first = manifest.groupby("md5")["id"].transform("first")
    is_copy = first != manifest["id"]
    manifest["duplicate_of"] = first.where(is_copy, "")
    manifest.loc[is_copy & (manifest["split"] == "train"), "status"] = "duplicate"
    if is_copy.any():
        log.warning(
            "%d exact duplicate file(s) (same md5); training copies are kept out of training",
            int(is_copy.sum()),
        )
    return manifest


def _decode_all(
    files: list[SourceFile], cfg: DataConfig, cache_path: Path, skipped: list[SkippedFile]
) -> pd.DataFrame:
    """Decode files on all cores, appending samples to the cache; return manifest rows."""
    workers = cfg.workers or os.cpu_count() or 1
    rows: list[dict] = []
    offset = 0
    started = time.perf_counter()
    jobs = [(f, cfg) for f in files]
    with atomic_path(cache_path) as tmp, open(tmp, "wb") as cache:
        if workers > 1 and len(files) > 8:
            with get_context("fork").Pool(workers) as pool:
                results = pool.imap(_decode_job, jobs, chunksize=4)
                offset = _collect(results, cache, rows, skipped, len(files))
        else:
            offset = _collect(map(_decode_job, jobs), cache, rows, skipped, len(files))
        cache.flush()
        # the old manifest's offsets point into the old cache: it goes before the cache is replaced
        (cache_path.parent / "manifest.csv").unlink(missing_ok=True)
    seconds = offset / cfg.sample_rate
    wall = time.perf_counter() - started
    log.info(
        "decoded %d files, %.1f s of audio in %.1f s wall (%.0f s audio / s, %d workers)",
        len(rows), seconds, wall, seconds / max(wall, 1e-9), workers,
    )  # fmt: skip
    return pd.DataFrame(rows, columns=MANIFEST_COLUMNS)


def _collect(results, cache, rows: list[dict], skipped: list[SkippedFile], total: int) -> int:
    offset = 0
    for source, samples, facts, error in progress(results, "decode", total=total, unit="file"):
        if error and samples is not None:
            log.warning("%s: %s", source.path, error)
        elif error:
            skipped.append(SkippedFile(source.path, source.split, error))
            log.warning("skipping %s: %s", source.path, error)
            continue
        cache.write(samples.tobytes())
        rows.append(
            {
                "id": source.id, "name": source.name, "path": source.path,
                "split": source.split, "speaker": source.speaker, "gender": source.gender,
                "age": source.age, **facts, "status": "ok", "duplicate_of": "",
                "offset": offset, "length": samples.size,
            }
        )  # fmt: skip
        offset += samples.size
    return offset


def prepare_stage(cfg: ExperimentConfig, force: bool = False) -> Path:
    """Scan ``cfg.paths.input``, decode to the cache and write the manifest; returns prep dir."""
    root = cfg.paths.input
    prep_dir = cfg.paths.prep_dir
    skipped: list[SkippedFile] = []
    files = scan_train(root, cfg.data, skipped) + scan_test(root, cfg.data, skipped)
    csv_path = root / cfg.data.test_csv
    pairs = read_pair_csv(csv_path) if csv_path.is_file() else None
    if pairs is None:
        log.warning("no %s: there will be no submission for this data", csv_path)
    stamp = fingerprint(
        DECODE_VERSION,
        cfg.data.model_dump(mode="json"),
        [(f.id, os.stat(f.path).st_size, os.stat(f.path).st_mtime_ns) for f in files],
        [s.path for s in skipped],
        pairs.to_csv(index=False) if pairs is not None else None,
    )
    outputs = [prep_dir / n for n in ("manifest.csv", CACHE_NAME, "bad_files.csv", COPIES_NAME)]
    if not force and is_fresh(prep_dir, "prepare", stamp, outputs):
        log.info("prepare: inputs unchanged, reusing %s", prep_dir)
        return prep_dir
    if pairs is not None and cfg.data.strict_test:
        check_pairs_exist(pairs, {f.name for f in files if f.split == "test"}, csv_path)

    staging = prep_dir / ".staging"  # built aside: a failure leaves the last good outputs
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        manifest = build_outputs(cfg, files, skipped, pairs, csv_path, staging)
        mark_started(prep_dir, "prepare")
        promote(staging, prep_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if pairs is None:  # an earlier run's pairs must not outlive the CSV they came from
        (prep_dir / "test_pairs.csv").unlink(missing_ok=True)
        (prep_dir / FALLBACK_NAME).unlink(missing_ok=True)
    _log_counts(manifest, skipped)
    mark_done(prep_dir, "prepare", stamp)
    return prep_dir


def build_outputs(
    cfg: ExperimentConfig,
    files: list[SourceFile],
    skipped: list[SkippedFile],
    pairs: pd.DataFrame | None,
    csv_path: Path,
    out: Path,
) -> pd.DataFrame:
    """Decode every file and write the cache, manifest and lists into ``out``; the manifest."""
    manifest = _decode_all(files, cfg.data, out / CACHE_NAME, skipped)
    manifest = _mark_duplicates(manifest)
    copies = test_train_copies(manifest)
    where = cfg.paths.prep_dir / COPIES_NAME
    check_test_train_copies(copies, cfg.data.test_train_copies, where)
    write_csv(out / COPIES_NAME, copies)
    write_csv(out / "bad_files.csv", skipped_frame(skipped))
    if pairs is not None:
        usable = set(manifest.loc[manifest["split"] == "test", "name"])
        bad = cfg.paths.prep_dir / "bad_files.csv"
        fallback = fallback_pairs(pairs, usable, skipped)
        try:
            if cfg.data.strict_test:
                check_pairs_exist(pairs, usable, csv_path)
            elif len(fallback) == len(pairs):
                reasons = "; ".join(sorted(set(fallback["reason"]))[:5])
                raise DataLayoutError(f"{csv_path}: no pair has two usable files: {reasons}")
        except DataLayoutError as err:
            write_csv(bad, skipped_frame(skipped))  # the reasons, beside the last good outputs
            raise DataLayoutError(f"{err} (reasons in {bad})") from None
        if len(fallback):
            log.warning(
                "%d of %d test pairs name a missing or unusable file and get a fallback answer "
                "(listed in %s; data.strict_test=true stops instead): %s",
                len(fallback),
                len(pairs),
                FALLBACK_NAME,
                "; ".join(sorted(set(fallback["reason"]))[:5]),
            )
        write_csv(out / FALLBACK_NAME, fallback)
        write_csv(out / "test_pairs.csv", pairs.drop(index=fallback["row"]))
    write_csv(out / "manifest.csv", manifest)
    write_text(out / "README.txt", "Written by `python -m src prepare`; see src/data/prepare.py\n")
    return manifest


def fallback_pairs(
    pairs: pd.DataFrame, usable: set[str], skipped: list[SkippedFile]
) -> pd.DataFrame:
    """Rows of the test CSV that name a file with no usable audio, and why (``row`` is the
    0-based row of the CSV)."""
    reasons = {Path(s.path).name: s.reason for s in skipped if s.split == "test"}

    def why(name: str) -> str:
        return f"{name}: {reasons.get(name, 'not in the test folder')}"

    rows = []
    for row, (first, second) in enumerate(zip(pairs["audio_1"], pairs["audio_2"], strict=True)):
        bad = [why(name) for name in dict.fromkeys((first, second)) if name not in usable]
        if bad:
            rows.append((row, first, second, "; ".join(bad)))
    return pd.DataFrame(rows, columns=["row", "audio_1", "audio_2", "reason"])


def read_fallback_pairs(prep_dir: Path) -> pd.DataFrame:
    """``fallback_pairs.csv`` (row, audio_1, audio_2, reason): the test CSV rows that name a
    damaged file; empty when there are none or the file is absent (no test CSV)."""
    path = prep_dir / FALLBACK_NAME
    if not path.is_file():
        return pd.DataFrame(columns=["row", "audio_1", "audio_2", "reason"]).astype({"row": int})
    table = pd.read_csv(path, dtype={"audio_1": str, "audio_2": str, "reason": str})
    return table.astype({"row": int})


def promote(staging: Path, target: Path) -> None:
    """Move every file of ``staging`` into ``target``; the manifest goes first and comes last.

    The old manifest's offsets point into the old cache, so it is removed before the cache is
    replaced and the new one arrives last: a crash in between leaves no manifest (and no
    stamp), so the next run redoes the stage and no reader sees a manifest beside a wrong cache.
    """
    (target / "manifest.csv").unlink(missing_ok=True)
    for item in sorted(staging.iterdir()):
        if item.name != "manifest.csv":
            os.replace(item, target / item.name)
    os.replace(staging / "manifest.csv", target / "manifest.csv")


def _log_counts(manifest: pd.DataFrame, skipped: list[SkippedFile]) -> None:
    train = manifest[manifest["split"] == "train"]
    log.info(
        "manifest: %d train files of %d speakers (%d duplicates), %d test files, %d skipped; "
        "%.2f h of audio",
        len(train), train["speaker"].nunique(), int((train["status"] == "duplicate").sum()),
        int((manifest["split"] == "test").sum()), len(skipped), manifest["duration"].sum() / 3600,
    )  # fmt: skip
