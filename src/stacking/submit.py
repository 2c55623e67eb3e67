"""The submit stage: scores -> 0/1 labels by a threshold policy -> a checked submission file.

Policies
--------
``balanced``
    Label exactly ``round(positive_share * pairs)`` pairs as same-speaker: the highest scores,
    ties broken by row order (earlier row first). Needs no OOF data and is robust to any shift
    of the score scale between OOF and test; the Zalo public test is 50 % same-speaker.
``oof_accuracy``
    The threshold with the best accuracy on the OOF predictions.
``eer``
    The OOF equal-error-rate threshold.

The submission is written only after it has been checked against ``public-test.csv``: every row
in the same order (duplicates included) and labels in {0, 1}; otherwise nothing is written.

Example
-------
>>> import numpy as np
>>> balanced_labels(np.array([0.2, 0.9, 0.5, 0.5]), 0.5)[0].tolist()
[0, 1, 1, 0]
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pandas as pd

from src.config import ExperimentConfig
from src.data.checks import short_clip_note
from src.data.pairs import PairList, first_difference
from src.data.prepare import FALLBACK_NAME, read_fallback_pairs
from src.util.io import write_csv

from .inputs import PAIR_KEYS, read_csv, read_test_pair_list
from .threshold import apply_policy

log = logging.getLogger(__name__)


class SubmissionError(ValueError):
    """A submission that does not match ``public-test.csv`` or has invalid labels."""


@dataclass(frozen=True)
class ScoreSource:
    """Test scores to label, and OOF scores with labels to place a threshold."""

    name: str
    test: pd.DataFrame  # audio_1, audio_2, score (public-test.csv names and order)
    oof_scores: np.ndarray
    oof_labels: np.ndarray
    oof: pd.DataFrame | None = None  # the OOF table read (the stack's: fold and trial ids too)


def _rows(frame: pd.DataFrame) -> list[tuple[str, str]]:
    return list(zip(frame["audio_1"].astype(str), frame["audio_2"].astype(str), strict=True))


def check_submission(submission: pd.DataFrame, expected: pd.DataFrame) -> None:
    """Raise :class:`SubmissionError` unless ``submission`` labels every expected row in order.

    Parameters
    ----------
    submission
        ``audio_1, audio_2, label``.
    expected
        ``public-test.csv``: ``audio_1, audio_2`` (duplicate rows must be repeated too).
    """
    missing_cols = [c for c in (*PAIR_KEYS, "label") if c not in submission.columns]
    if missing_cols:
        raise SubmissionError(f"submission lacks columns {missing_cols}")
    got, want = _rows(submission), _rows(expected)
    if got != want:
        got_count, want_count = Counter(got), Counter(want)
        missing = list((want_count - got_count).elements())
        extra = list((got_count - want_count).elements())
        where = first_difference(submission, expected)
        where = f"first difference (submission vs public-test.csv) at {where}"
        if missing or extra:
            raise SubmissionError(
                f"submission has {len(got)} rows, public-test.csv {len(want)}: "
                f"{len(missing)} missing (e.g. {missing[:3]}), "
                f"{len(extra)} extra (e.g. {extra[:3]}); {where}"
            )
        raise SubmissionError(f"submission rows are out of order: {where}")
    labels = pd.to_numeric(submission["label"], errors="coerce")
    if labels.isna().any() or not labels.isin([0, 1]).all():
        bad = submission["label"][labels.isna() | ~labels.isin([0, 1])]
        raise SubmissionError(f"labels must be 0 or 1; {len(bad)} are not (e.g. {bad.iloc[0]!r})")


def load_source(cfg: ExperimentConfig) -> ScoreSource:
    """The scores ``cfg.submit.source`` names: stack predictions or one experiment's score."""
    outputs = cfg.paths.outputs
    if cfg.submit.source == "stack":
        stack = cfg.stack_dir
        test = read_csv(stack / "test_predictions.csv", [*PAIR_KEYS, "prob"], "stack predictions")
        oof = read_csv(stack / "oof_predictions.csv", ["label", "prob"], "stack OOF predictions")
        test = test.rename(columns={"prob": "score"})
        return ScoreSource("stack", test, oof["prob"].to_numpy(), oof["label"].to_numpy(), oof)
    experiment = cfg.submit.experiment or cfg.run_name
    column = cfg.submit.score
    directory = outputs / experiment
    test = read_csv(directory / "test_scores.csv", [*PAIR_KEYS, column], f"{experiment} test")
    oof = read_csv(directory / "oof_scores.csv", ["label", column], f"{experiment} OOF")
    if cfg.submit.policy != "balanced":
        log.warning(
            "%s test %s is a fold-mean (smaller spread than the OOF scores its %s threshold "
            "comes from); the balanced policy does not depend on that",
            experiment,
            column,
            cfg.submit.policy,
        )
    test = test[[*PAIR_KEYS, column]].rename(columns={column: "score"})
    return ScoreSource(
        f"{experiment}/{column}", test, oof[column].to_numpy(), oof["label"].to_numpy()
    )


def build_submission(
    source: ScoreSource, expected: pd.DataFrame, policy: str, positive_share: float
) -> tuple[pd.DataFrame, float]:
    """Checked ``audio_1, audio_2, score, label`` table in ``expected``'s row order."""
    table = source.test[[*PAIR_KEYS, "score"]].copy()
    check_submission(table.assign(label=0), expected)  # rows first: labels follow row order
    if not np.isfinite(table["score"].to_numpy(dtype=np.float64)).all():
        raise SubmissionError(f"{source.name}: test scores contain NaN or infinity")
    labels, threshold = apply_policy(
        policy, table["score"].to_numpy(), source.oof_scores, source.oof_labels, positive_share
    )
    table["label"] = labels
    check_submission(table, expected)
    return table, threshold


def apply_transitive(
    cfg: ExperimentConfig, table: pd.DataFrame, expected: pd.DataFrame, oof: pd.DataFrame
) -> pd.DataFrame:
    """Relabel with transitive consistency when OOF says it helps (or when forced ``on``);
    ``oof`` is the stack's ``oof_predictions.csv``. The shares of confident pairs are chosen on
    OOF folds (their labels) and placed on the test graph's own probabilities
    (:mod:`src.stacking.transitive`); moved pairs keep their order (ties: the probability
    before)."""
    from .transitive import propagate, share_thresholds

    needed = ["fold", *PAIR_KEYS, "label", "prob"]
    if not set(needed) <= set(oof.columns):
        if cfg.submit.transitive == "on":
            raise SubmissionError("submit.transitive=on needs OOF trials with fold and clip ids")
        log.info("transitive consistency: OOF predictions without trial ids; off")
        return table
    share = cfg.submit.positive_share
    probs = oof["prob"].to_numpy()
    choice = transitive_choice(cfg, oof)
    if choice.high_share is None:
        log.info(
            "transitive consistency off: no gain on OOF trials (accuracy %.4f%s)",
            choice.oof_accuracy_before,
            ""
            if choice.oof_accuracy_nested is None
            else f", nested {choice.oof_accuracy_nested:.4f}",
        )
        return table
    before = table["score"].to_numpy()
    high, low = share_thresholds(before, choice.high_share, choice.low_share)
    adjusted = propagate(table, before, high, low)
    out = table.assign(score_before_transitive=table["score"], score=adjusted)
    labels, _ = apply_policy(
        cfg.submit.policy, adjusted, probs, oof["label"].to_numpy(), share, tiebreak=before
    )
    out["transitive_flipped"] = (labels != out["label"]).astype(np.int64)
    out["label"] = labels
    check_submission(out, expected)
    log.info(
        "transitive consistency (top %.0f %% / bottom %.0f %% of test pairs confident: "
        "probabilities >= %.3f / <= %.3f; OOF accuracy %.4f -> %.4f, nested %s): "
        "%d of %d test labels changed",
        100 * choice.high_share,
        100 * choice.low_share,
        high,
        low,
        choice.oof_accuracy_before,
        choice.oof_accuracy_after,
        choice.oof_accuracy_nested,
        int(out["transitive_flipped"].sum()),
        len(out),
    )
    return out


def transitive_choice(cfg: ExperimentConfig, oof: pd.DataFrame):
    """The transitive-consistency shares ``submit.transitive`` picks on the stack's OOF trials
    (``auto``: only when the nested OOF accuracy gains; ``on``: the best shares); ``oof`` is
    ``oof_predictions.csv`` with fold, clip ids, label and prob. Returns a ``TransitiveChoice``
    (``high_share`` None: off). Shared by ``submit`` and the export of the graph stacker."""
    from .transitive import choose_shares, decide

    choose = decide if cfg.submit.transitive == "auto" else choose_shares
    return choose(oof, oof["prob"].to_numpy(), cfg.submit.positive_share)


BUNDLE_COLUMN = "prob_bundle"  # the stack's column with the exported bundle's probabilities


def bundle_threshold(
    policy: str,
    positive_share: float,
    test_probs: np.ndarray,
    oof_probs: np.ndarray,
    oof_labels: np.ndarray,
) -> float:
    """The threshold an exported bundle labels with: ``policy`` applied to its own stacker's
    test (balanced) or OOF probabilities; a pair is same-speaker at or above it."""
    return apply_policy(policy, test_probs, oof_probs, oof_labels, positive_share)[1]


def with_bundle_answers(
    table: pd.DataFrame, source: ScoreSource, policy: str, positive_share: float
) -> pd.DataFrame:
    """Add what the exported bundle answers for each test pair (``bundle_probability``,
    ``bundle_label``): the API, sent these pairs, must give the same."""
    oof = source.oof
    if BUNDLE_COLUMN not in source.test.columns or oof is None or BUNDLE_COLUMN not in oof:
        log.info("stack predictions without %s (an older stack): no bundle columns", BUNDLE_COLUMN)
        return table
    probs = source.test[BUNDLE_COLUMN].to_numpy(np.float64)
    threshold = bundle_threshold(
        policy,
        positive_share,
        probs,
        oof[BUNDLE_COLUMN].to_numpy(np.float64),
        oof["label"].to_numpy(),
    )
    return table.assign(bundle_probability=probs, bundle_label=(probs >= threshold).astype(int))


def label_known_copies(table: pd.DataFrame, copies: pd.DataFrame) -> pd.DataFrame:
    """Label pairs whose two files are copies of training files by those files' speakers.

    Adds ``label_source``: ``"policy"`` or ``"train_copies"`` for the rows this relabels.

    Example
    -------
    >>> table = pd.DataFrame({"audio_1": ["a", "a"], "audio_2": ["b", "c"], "label": [0, 1]})
    >>> copies = pd.DataFrame({"name": ["a", "b"], "speaker": ["s1", "s1"]})
    >>> label_known_copies(table, copies)[["label", "label_source"]].values.tolist()
    [[1, 'train_copies'], [1, 'policy']]
    """
    speaker = dict(zip(copies["name"].astype(str), copies["speaker"].astype(str), strict=True))
    first, second = table["audio_1"].map(speaker), table["audio_2"].map(speaker)
    known = first.notna() & second.notna()
    out = table.copy()
    out["label_source"] = np.where(known, "train_copies", "policy")
    out.loc[known, "label"] = (first[known] == second[known]).astype(np.int64)
    return out


def with_fallback_rows(
    table: pd.DataFrame, expected: pd.DataFrame, fallback: pd.DataFrame, positive_share: float
) -> pd.DataFrame:
    """The scored rows plus the rows that name an unusable file (missing, damaged, silent, too
    short), in ``expected``'s order.

    A pair without two usable files has no score and no feature to stack: it gets the label the
    policy's prior favours (same speaker when ``positive_share >= 0.5``), ``score`` NaN and its
    reason in the ``fallback`` column (empty for scored rows).

    Example
    -------
    >>> expected = pd.DataFrame({"audio_1": ["a", "b", "c"], "audio_2": ["x", "y", "z"]})
    >>> scored = pd.DataFrame({"audio_1": ["a", "c"], "audio_2": ["x", "z"],
    ...                        "score": [0.9, 0.1], "label": [1, 0]})
    >>> fallback = pd.DataFrame({"row": [1], "reason": ["b: empty file"]})
    >>> with_fallback_rows(scored, expected, fallback, 0.5)["label"].tolist()
    [1, 1, 0]
    """
    missing = fallback["row"].to_numpy()
    scored = table.set_axis(np.setdiff1d(np.arange(len(expected)), missing)).assign(fallback="")
    filler = pd.DataFrame(
        {
            "audio_1": expected["audio_1"].to_numpy()[missing],
            "audio_2": expected["audio_2"].to_numpy()[missing],
            "score": np.nan,
            "label": int(positive_share >= 0.5),
            "fallback": fallback["reason"].astype(str).to_numpy(),
        },
        index=missing,
    )
    out = pd.concat([scored, filler]).sort_index()
    return out.assign(label=out["label"].astype(np.int64)).reset_index(drop=True)


def short_clip_flags(
    table: pd.DataFrame, durations: dict[str, float], short_clip_seconds: float
) -> pd.Series:
    """Per row of ``table`` (columns ``audio_1``, ``audio_2``, maybe ``fallback``), the short
    clips it was scored with, best-effort (:func:`src.data.checks.short_clip_note`), as
    ``"name: short clip: 0.15 s (...)"`` joined by ``"; "``; empty for a row with no short clip
    and for a fallback row (it has no score). ``durations``: seconds of audio per test name.

    Example
    -------
    >>> rows = pd.DataFrame({"audio_1": ["a", "b"], "audio_2": ["b", "c"], "fallback": ["", ""]})
    >>> short_clip_flags(rows, {"a": 3.0, "b": 0.15, "c": 2.0}, 0.2).str.slice(0, 20).tolist()
    ['b: short clip: 0.15 ', 'b: short clip: 0.15 ']
    """
    notes = {}
    for name, seconds in durations.items():
        note = short_clip_note(seconds, short_clip_seconds)
        if note is not None:
            notes[name] = f"{name}: {note}"
    flags = [
        "" if failed else "; ".join(notes[n] for n in dict.fromkeys((a, b)) if n in notes)
        for a, b, failed in zip(
            table["audio_1"],
            table["audio_2"],
            table.get("fallback", pd.Series("", index=table.index)).astype(bool),
            strict=True,
        )
    ]
    return pd.Series(flags, index=table.index, dtype=str)


def durations_of_test_files(cfg: ExperimentConfig) -> dict[str, float]:
    """Seconds of audio of each usable test file, by name (the manifest's ``duration``); empty
    without a manifest (stack outputs submitted on their own: no row is flagged)."""
    path = cfg.paths.prep_dir / "manifest.csv"
    if not path.is_file():
        log.info("no %s: no test pair is checked for a short clip", path)
        return {}
    manifest = read_csv(path, ["name", "split", "duration"], "manifest")
    test = manifest[manifest["split"] == "test"]
    return dict(zip(test["name"].astype(str), test["duration"].astype(float), strict=True))


def read_fallback(cfg: ExperimentConfig, expected: pd.DataFrame) -> pd.DataFrame:
    """``prep/fallback_pairs.csv`` checked against the test CSV; empty without."""
    fallback = read_fallback_pairs(cfg.paths.prep_dir)
    rows = fallback["row"].to_numpy()
    in_range = rows.size == 0 or (rows.min() >= 0 and rows.max() < len(expected))
    if (
        not in_range
        or not (expected.iloc[rows][PAIR_KEYS].to_numpy() == fallback[PAIR_KEYS].to_numpy()).all()
    ):
        raise SubmissionError(
            f"{cfg.paths.prep_dir / FALLBACK_NAME} does not match {len(expected)} test "
            "rows: rerun prepare"
        )
    return fallback


def as_written(table: pd.DataFrame, pair_list: PairList) -> pd.DataFrame:
    """``table`` (checked against the cleaned test rows, in their order) with the file names
    as the test CSV spells them, so the submission repeats the user's rows exactly.

    Example
    -------
    >>> from src.data.pairs import pair_list_from_text
    >>> rows = pair_list_from_text("audio_1,audio_2\na.wav, b.wav\n", "csv")
    >>> as_written(rows.pairs.assign(label=1), rows)["audio_2"].tolist()
    [' b.wav']
    """
    check_submission(table.assign(label=0), pair_list.pairs)
    return table.assign(
        audio_1=pair_list.written["audio_1"].to_numpy(),
        audio_2=pair_list.written["audio_2"].to_numpy(),
    )


def submit_stage(cfg: ExperimentConfig) -> None:
    """CLI entry: write ``<outputs>/submission.csv`` and ``<outputs>/submission_scores.csv``.

    Rows naming a test file that prepare could not use (``prep/fallback_pairs.csv``) get a
    fallback answer (see :func:`with_fallback_rows`), flagged in the scores file; the submission
    still has every row of the test CSV.
    """
    pair_list = read_test_pair_list(cfg.paths.input / cfg.data.test_csv)
    full = pair_list.pairs
    fallback = read_fallback(cfg, full)
    expected = full.drop(index=fallback["row"]).reset_index(drop=True)
    source = load_source(cfg)
    table, threshold = build_submission(
        source, expected, cfg.submit.policy, cfg.submit.positive_share
    )
    if cfg.submit.source == "stack":
        table = with_bundle_answers(table, source, cfg.submit.policy, cfg.submit.positive_share)
    if cfg.submit.source == "stack" and cfg.submit.transitive != "off":
        table = apply_transitive(cfg, table, expected, source.oof)
    if cfg.data.test_train_copies == "use_identity":
        copies = read_csv(
            cfg.paths.prep_dir / "test_train_copies.csv", ["name", "speaker"], "test copy list"
        )
        table = label_known_copies(table, copies)
        check_submission(table, expected)
        log.info(
            "%d pair(s) labelled by the training speakers of copied test files",
            int((table["label_source"] == "train_copies").sum()),
        )
    if len(fallback):
        table = with_fallback_rows(table, full, fallback, cfg.submit.positive_share)
        check_submission(table, full)
        log.warning(
            "%d test pair(s) answered by the fallback (label %d): they name a missing, damaged, "
            "silent or too short file (reasons in column 'fallback' of %s); the submission's "
            "share of same-speaker labels includes them, so it can differ from "
            "submit.positive_share",
            len(fallback),
            int(cfg.submit.positive_share >= 0.5),
            cfg.submission_scores_path.name,
        )
    table["short_clip"] = short_clip_flags(
        table, durations_of_test_files(cfg), cfg.data.short_clip_seconds
    )
    if (flagged := int((table["short_clip"] != "").sum())) > 0:
        log.warning(
            "%d test pair(s) scored best-effort with a clip under data.short_clip_seconds "
            "(%g s): flagged in column 'short_clip' of %s",
            flagged,
            cfg.data.short_clip_seconds,
            cfg.submission_scores_path.name,
        )
    table = as_written(table, pair_list)
    # a record of which stack wrote the file before (src/early_submission.py) no longer holds
    cfg.submission_source_path.unlink(missing_ok=True)
    write_csv(cfg.submission_scores_path, table)
    write_csv(cfg.submission_path, table[[*PAIR_KEYS, "label"]])
    log.info(
        "%s from %s, policy %s (threshold %.4f): %d pairs, %.1f %% same speaker",
        cfg.submission_path,
        source.name,
        cfg.submit.policy,
        threshold,
        len(table),
        100 * table["label"].mean(),
    )
