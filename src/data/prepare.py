"""The `prepare` stage: scan the data folder, decode every file once, write manifest and cache.

Outputs in ``<prep_dir>``:

- ``manifest.csv``: one row per usable file (see ``MANIFEST_COLUMNS``), with ``offset`` and
  ``length`` locating its 16 kHz int16 samples in ``audio.int16``;
- ``audio.int16``: all decoded clips back to back, each without its DC offset and
  peak-normalised so quiet clips keep their resolution (the original level is in the manifest's
  ``rms_dbfs`` and ``peak``, the offset removed in ``dc_offset``, how the channels were mixed in
  ``downmix``), read later as a memory map;
- ``bad_files.csv``: every file that was skipped, with the reason;
- ``test_pairs.csv``: the validated public-test pair list (when the CSV exists), names cleaned
  by :mod:`src.data.pairs` (spaces stripped, Unicode NFC) as the manifest's names are;
- ``sources.csv``: each scanned file's size, times, inode and md5, so a rerun notices changed
  content (:mod:`src.data.sources`) and decodes only the files that changed.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from src.config import DataConfig, ExperimentConfig
from src.data.audio import (
    DECODE_VERSION,
    AudioError,
    clip_facts,
    decode_audio,
    file_md5,
    peak_normalise,
    to_int16,
)
from src.data.cache import CACHE_NAME, read_manifest
from src.data.pairs import DataLayoutError, clean_name, read_pair_list
from src.data.sources import SOURCES_NAME, SourceCheck, check_sources, describe, write_records
from src.data.zalo import (
    SkippedFile,
    SourceFile,
    check_pairs_exist,
    scan_test,
    scan_train,
    skipped_frame,
)
from src.util.io import atomic_path, write_csv, write_text
from src.util.logs import progress
from src.util.stage_cache import fingerprint, is_fresh, mark_done, mark_started, read_stamp

log = logging.getLogger(__name__)

FALLBACK_NAME = "fallback_pairs.csv"  # test pairs naming an unusable file: answered by submit
MANIFEST_COLUMNS = [
    "id", "name", "path", "split", "speaker", "gender", "age", "duration", "sample_rate",
    "channels", "frames", "bytes", "md5", "status", "duplicate_of", "rms_dbfs", "peak", "snr_db",
    "truncated", "dc_offset", "downmix", "clipped_share", "speech_seconds", "effective_bits",
    "offset", "length",
]  # fmt: skip


def _decode_job(job: tuple[SourceFile, DataConfig]) -> tuple[SourceFile, Any, dict | None, str]:
    """Decode one file in a worker; returns (file, int16 samples, facts, error message).

    A file that cannot be used has samples ``None`` and facts ``{"md5": ...}`` (empty when the
    file cannot be read), so its content is still recorded for the next run's check."""
    source, cfg = job
    # one rule with the API's (src.data.audio.unusable_reason): a silent clip is unusable; a test
    # file that is too short too (its pairs get the fallback answer), a train clip is kept
    min_scored = cfg.min_scored_seconds if source.split == "test" else None
    try:
        md5 = file_md5(source.path)
    except OSError as err:
        return source, None, {"md5": ""}, f"unreadable file: {err}"
    try:
        clip = decode_audio(
            source.path,
            target_rate=cfg.sample_rate,
            min_seconds=cfg.min_duration,
            max_seconds=cfg.max_duration,
            silence_dbfs=cfg.silence_dbfs,
            silent_channel_db=cfg.downmix_silent_db,
            cancel_db=cfg.downmix_cancel_db,
            min_scored_seconds=min_scored,
        )
    except AudioError as err:
        return source, None, {"md5": md5}, str(err)
    except Exception as err:  # any decoder failure becomes a skip with its reason
        return source, None, {"md5": md5}, f"unexpected decoding error: {type(err).__name__}: {err}"
    facts = clip_facts(clip, Path(source.path).stat().st_size) | {"md5": md5}
    return source, to_int16(peak_normalise(clip.samples)), facts, ""


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


@dataclass
class Reuse:
    """Clips of the previous run whose file is unchanged: manifest rows by id and its cache."""

    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    cache: np.ndarray | None = None  # the previous audio.int16, memory-mapped


IDENTITY_COLUMNS = ("id", "name", "path", "split", "speaker", "gender", "age", "status",
                    "duplicate_of", "offset", "length")  # fmt: skip


def decode_settings(cfg: DataConfig) -> str:
    """Fingerprint of the ``data`` settings that change how a file decodes; every key not known
    to leave decoding alone counts, so a new setting re-decodes rather than reuses."""
    neutral = {"demo", "layout", "train_dir", "test_dir", "test_csv", "extensions", "workers",
               "strict_test", "test_train_copies", "short_clip_seconds"}  # fmt: skip
    settings = {k: v for k, v in cfg.model_dump(mode="json").items() if k not in neutral}
    return fingerprint(DECODE_VERSION, settings)


def reusable_clips(cfg: ExperimentConfig, check: SourceCheck) -> Reuse:
    """The previous run's clips that need no decoding: same decode settings, file content
    unchanged (same md5). Empty when the previous run did not finish or decoded otherwise."""
    prep_dir = cfg.paths.prep_dir
    cache_path = prep_dir / CACHE_NAME
    stamp = read_stamp(prep_dir, "prepare")
    if stamp.get("decode") != decode_settings(cfg.data) or not cache_path.is_file():
        return Reuse()
    try:
        manifest = read_manifest(prep_dir)
    except (FileNotFoundError, ValueError, pd.errors.ParserError):
        return Reuse()
    if not set(MANIFEST_COLUMNS) <= set(manifest.columns):  # written by an older version
        return Reuse()
    unchanged = manifest["md5"].to_numpy() == manifest["id"].map(check.md5).to_numpy()
    rows = {row["id"]: row for row in manifest[unchanged].to_dict("records")}
    size = cache_path.stat().st_size // 2
    cache = np.memmap(cache_path, dtype=np.int16, mode="r", shape=(size,)) if size else None
    if cache is None or any(r["offset"] + r["length"] > size for r in rows.values()):
        return Reuse()
    return Reuse(rows, cache)


def _reused_result(source: SourceFile, reuse: Reuse) -> tuple[SourceFile, Any, dict, str]:
    """A previous run's clip as :func:`_decode_job` would return it (samples from its cache)."""
    row = reuse.rows[source.id]
    samples = reuse.cache[int(row["offset"]) : int(row["offset"]) + int(row["length"])]
    facts = {k: v for k, v in row.items() if k not in IDENTITY_COLUMNS}
    return source, samples, facts, ""


def _decode_all(
    files: list[SourceFile],
    cfg: DataConfig,
    cache_path: Path,
    skipped: list[SkippedFile],
    reuse: Reuse | None = None,
) -> tuple[pd.DataFrame, dict[str, str]]:
    """Decode files on all cores (clips in ``reuse`` are copied from the previous cache),
    appending samples to the cache; return manifest rows and every file's md5 by id."""
    reuse = reuse or Reuse()
    workers = cfg.workers or os.cpu_count() or 1
    rows: list[dict] = []
    md5: dict[str, str] = {}
    offset = 0
    started = time.perf_counter()
    jobs = [(f, cfg) for f in files if f.id not in reuse.rows]
    if reuse.rows:
        log.info("decoding %d new or changed file(s); %d reused", len(jobs), len(reuse.rows))
    with atomic_path(cache_path) as tmp, open(tmp, "wb") as cache:
        if workers > 1 and len(jobs) > 8:
            with get_context("fork").Pool(workers) as pool:
                decoded = pool.imap(_decode_job, jobs, chunksize=4)
                results = _in_order(files, decoded, reuse)
                offset = _collect(results, cache, rows, skipped, md5, len(files))
        else:
            results = _in_order(files, map(_decode_job, jobs), reuse)
            offset = _collect(results, cache, rows, skipped, md5, len(files))
        cache.flush()
        # the old manifest's offsets point into the old cache: it goes before the cache is replaced
        (cache_path.parent / "manifest.csv").unlink(missing_ok=True)
    seconds = offset / cfg.sample_rate
    wall = time.perf_counter() - started
    log.info(
        "decoded %d files, %.1f s of audio in %.1f s wall (%.0f s audio / s, %d workers)",
        len(rows), seconds, wall, seconds / max(wall, 1e-9), workers,
    )  # fmt: skip
    return pd.DataFrame(rows, columns=MANIFEST_COLUMNS), md5


def _in_order(files: list[SourceFile], decoded: Iterator, reuse: Reuse) -> Iterator[list]:
    """Results in ``files`` order: reused clips in place, decoded ones in job order.

    Each result is a list that :func:`_collect` empties once written, so no clip outlives its
    turn (an iterator in between, e.g. the progress log, may hold the last item while the
    next clip decodes)."""
    for source in files:
        yield list(_reused_result(source, reuse) if source.id in reuse.rows else next(decoded))


def _collect(
    results, cache, rows: list[dict], skipped: list[SkippedFile], md5: dict[str, str], total: int
) -> int:
    offset = 0
    for result in progress(results, "decode", total=total, unit="file"):
        source, samples, facts, error = result
        result.clear()
        md5[source.id] = (facts or {}).get("md5", "")
        if error and samples is not None:
            log.warning("%s: %s", source.path, error)
        elif error:
            skipped.append(SkippedFile(source.path, source.split, error))
            log.warning("skipping %s: %s", source.path, error)
            continue
        cache.write(memoryview(np.ascontiguousarray(samples)).cast("B"))  # no copy of a long clip
        rows.append(
            {
                "id": source.id, "name": source.name, "path": source.path,
                "split": source.split, "speaker": source.speaker, "gender": source.gender,
                "age": source.age, **facts, "status": "ok", "duplicate_of": "",
                "offset": offset, "length": samples.size,
            }
        )  # fmt: skip
        offset += samples.size
        del samples  # before the next clip decodes
    return offset


def prepare_stage(cfg: ExperimentConfig, force: bool = False) -> Path:
    """Scan ``cfg.paths.input``, decode to the cache and write the manifest; returns prep dir.

    Reused when the config, the pair list and every file's content are unchanged; otherwise
    only new or changed files are decoded (all of them with ``force`` or other decode settings).
    """
    root = cfg.paths.input
    prep_dir = cfg.paths.prep_dir
    skipped: list[SkippedFile] = []
    files = scan_train(root, cfg.data, skipped) + scan_test(root, cfg.data, skipped)
    scan_skips = [s.path for s in skipped]
    csv_path = root / cfg.data.test_csv
    pair_list = read_pair_list(csv_path) if csv_path.is_file() else None
    pairs = pair_list.pairs if pair_list is not None else None
    if pairs is None:
        log.warning("no %s: there will be no submission for this data", csv_path)
    check = check_sources(files, prep_dir)

    def stamp(md5: dict[str, str]) -> str:
        return fingerprint(
            DECODE_VERSION,
            MANIFEST_COLUMNS,  # a manifest without a newer column is written again
            cfg.data.model_dump(mode="json"),
            [(f.id, md5.get(f.id)) for f in files],
            scan_skips,
            pairs.to_csv(index=False) if pairs is not None else None,
        )

    names = ("manifest.csv", CACHE_NAME, "bad_files.csv", COPIES_NAME, SOURCES_NAME)
    outputs = [prep_dir / name for name in names]
    if not force and not check.changed and is_fresh(prep_dir, "prepare", stamp(check.md5), outputs):
        if check.hashed:  # same content under new times or inodes: remember them
            write_records(prep_dir / SOURCES_NAME, files, check, check.md5)
        log.info("prepare: inputs unchanged (%s), reusing %s", describe(check, files), prep_dir)
        return prep_dir
    if check.changed and (prep_dir / SOURCES_NAME).is_file():
        log.info(
            "prepare: %d file(s) new or changed since the last run (e.g. %s)",
            len(check.changed), ", ".join(check.changed[:3]),
        )  # fmt: skip
    if pairs is not None and cfg.data.strict_test:
        check_pairs_exist(pairs, {f.name for f in files if f.split == "test"}, csv_path)

    reuse = Reuse() if force else reusable_clips(cfg, check)
    staging = prep_dir / ".staging"  # built aside: a failure leaves the last good outputs
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        manifest, md5 = build_outputs(cfg, files, skipped, pairs, csv_path, staging, reuse)
        del reuse  # the previous cache's memory map, before that cache is replaced
        write_records(staging / SOURCES_NAME, files, check, md5)
        mark_started(prep_dir, "prepare")
        promote(staging, prep_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if pairs is None:  # an earlier run's pairs must not outlive the CSV they came from
        (prep_dir / "test_pairs.csv").unlink(missing_ok=True)
        (prep_dir / FALLBACK_NAME).unlink(missing_ok=True)
    _log_counts(manifest, skipped)
    mark_done(prep_dir, "prepare", stamp(md5), decode=decode_settings(cfg.data))
    return prep_dir


def build_outputs(
    cfg: ExperimentConfig,
    files: list[SourceFile],
    skipped: list[SkippedFile],
    pairs: pd.DataFrame | None,
    csv_path: Path,
    out: Path,
    reuse: Reuse | None = None,
) -> tuple[pd.DataFrame, dict[str, str]]:
    """Decode every file and write the cache, manifest and lists into ``out``; the manifest and
    each file's md5 by id."""
    manifest, md5 = _decode_all(files, cfg.data, out / CACHE_NAME, skipped, reuse)
    manifest = _mark_duplicates(manifest)
    _log_truncated(manifest, cfg.data.max_duration)
    _log_coarse(manifest, cfg.checks.min_effective_bits)
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
    return manifest, md5


def fallback_pairs(
    pairs: pd.DataFrame, usable: set[str], skipped: list[SkippedFile]
) -> pd.DataFrame:
    """Rows of the test CSV that name a file with no usable audio, and why (``row`` is the
    0-based row of the CSV)."""
    reasons = {clean_name(Path(s.path).name): s.reason for s in skipped if s.split == "test"}

    def why(name: str) -> str:
        return f"{name}: {reasons.get(name, 'not in the test folder')}"

    rows = []
    for row, (first, second) in enumerate(zip(pairs["audio_1"], pairs["audio_2"], strict=True)):
        bad = [why(name) for name in dict.fromkeys((first, second)) if name not in usable]
        if bad:
            rows.append((row, first, second, "; ".join(bad)))
    return pd.DataFrame(rows, columns=["row", "audio_1", "audio_2", "reason"])


def read_fallback_pairs(prep_dir: Path) -> pd.DataFrame:
    """``fallback_pairs.csv`` (row, audio_1, audio_2, reason): the test CSV rows that name an
    unusable file (missing, damaged, silent, too short); empty when there are none or the file
    is absent (no test CSV)."""
    path = prep_dir / FALLBACK_NAME
    if not path.is_file():
        return pd.DataFrame(columns=["row", "audio_1", "audio_2", "reason"]).astype({"row": int})
    table = pd.read_csv(path, dtype={"audio_1": str, "audio_2": str, "reason": str})
    return table.astype({"row": int})


def scored_rows(
    pairs: pd.DataFrame, expected: pd.DataFrame, fallback_rows: np.ndarray
) -> np.ndarray | None:
    """Positions in ``expected`` (the public-test rows) of a scored table's ``pairs``.

    Shapes: ``pairs`` and ``expected`` with columns ``audio_1, audio_2``; ``fallback_rows``
    the rows of ``fallback_pairs.csv`` -> ``(len(pairs),)`` positions. All rows when the pairs
    are the public-test rows in order; the other rows, in order, when exactly the
    ``fallback_rows`` are missing (their pairs have no score: submit answers them); ``None``
    otherwise (a stale or truncated table, or another test set).

    >>> rows = pd.DataFrame({"audio_1": ["a", "b", "c"], "audio_2": ["x", "y", "z"]})
    >>> scored_rows(rows.iloc[[0, 2]], rows, np.array([1]))
    array([0, 2])
    >>> print(scored_rows(rows.iloc[[0, 1]], rows, np.array([1])))
    None
    """
    got = pairs[["audio_1", "audio_2"]].astype(str).reset_index(drop=True)
    wanted = expected[["audio_1", "audio_2"]].astype(str).reset_index(drop=True)
    if got.equals(wanted):
        return np.arange(len(wanted))
    kept = np.setdiff1d(np.arange(len(wanted)), fallback_rows)
    if len(kept) < len(wanted) and got.equals(wanted.iloc[kept].reset_index(drop=True)):
        return kept
    return None


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


def _log_truncated(manifest: pd.DataFrame, max_duration: float) -> None:
    """Name the clips cut at ``data.max_duration`` (flagged ``truncated`` in the manifest, listed
    in the report): only their first ``max_duration`` seconds are used."""
    cut = manifest.loc[manifest["truncated"].astype(bool), "id"]
    if len(cut):
        log.warning(
            "%d clip(s) longer than data.max_duration=%g s are truncated to it (manifest column "
            "'truncated', listed in the report): %s%s",
            len(cut), max_duration, ", ".join(cut[:5]), ", ..." if len(cut) > 5 else "",
        )  # fmt: skip


def coarse_clips(manifest: pd.DataFrame, min_bits: float) -> pd.DataFrame:
    """Rows of ``manifest`` whose samples are coarser than ``min_bits`` (``effective_bits``,
    :func:`src.data.audio.effective_bits`; a clip not measured, NaN or empty, is not one)."""
    bits = pd.to_numeric(manifest["effective_bits"], errors="coerce")
    return manifest[bits < min_bits]


def _log_coarse(manifest: pd.DataFrame, min_bits: float) -> None:
    """Name the clips coarser than ``checks.min_effective_bits``, per split: kept and scored
    (a test file's warning is in the report's ``file_warnings.csv`` and the API's answer)."""
    coarse = coarse_clips(manifest, min_bits)
    for split, rows in coarse.groupby("split"):
        head = rows.head(5)
        bits = pd.to_numeric(head["effective_bits"])
        shown = ", ".join(f"{i} ({b:g} bits)" for i, b in zip(head["id"], bits, strict=True))
        log.warning(
            "%d %s clip(s) have coarse samples (< %g effective bits, checks.min_effective_bits: "
            "an 8-bit file or a very quiet recording; manifest column 'effective_bits'), kept: "
            "%s%s",
            len(rows), split, min_bits, shown, ", ..." if len(rows) > 5 else "",
        )  # fmt: skip


def _log_counts(manifest: pd.DataFrame, skipped: list[SkippedFile]) -> None:
    train = manifest[manifest["split"] == "train"]
    log.info(
        "manifest: %d train files of %d speakers (%d duplicates), %d test files, %d skipped; "
        "%.2f h of audio",
        len(train), train["speaker"].nunique(), int((train["status"] == "duplicate").sum()),
        int((manifest["split"] == "test").sum()), len(skipped), manifest["duration"].sum() / 3600,
    )  # fmt: skip
