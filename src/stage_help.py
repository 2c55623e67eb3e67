"""``python -m src <stage> --help``: what a stage reads and writes, then what it does.

Each stage's help opens with :data:`READS_WRITES` (paths as the defaults of ``configs/base.yaml``
name them: ``outputs/``, ``input/``, ``<run>`` is the run folder, ``[-variant]`` the suffix of a
run with result-changing overrides), then the stage module's and function's docstrings without
their developer examples (doctest blocks).
"""

from __future__ import annotations

import inspect
import re
import textwrap
from importlib import import_module

# stage -> (what it reads, what it writes)
READS_WRITES: dict[str, tuple[str, str]] = {
    "prepare": (
        "input/ (paths.input) in the Zalo layout: train/<id>-<gender>-<age>/*.wav, "
        "public-test/*.wav, public-test.csv (audio_1,audio_2)",
        "outputs/prep/: manifest.csv, audio.int16 (every clip decoded once), bad_files.csv, "
        "test_pairs.csv, test_train_copies.csv, fallback_pairs.csv",
    ),
    "folds": (
        "outputs/prep/manifest.csv",
        "outputs/folds/<K>fold-<hash>/: folds.csv (speaker -> fold), trials_fold{k}.csv",
    ),
    "train": (
        "outputs/prep/manifest.csv and audio.int16 (the clips of the other folds' speakers), "
        "outputs/folds/<K>fold-<hash>/folds.csv; model.weights / train.init_checkpoint when set",
        "outputs/<run>/fold{k}/: best.pt, last.pt (resume), history.csv, snapshots/ or "
        "validation_trials.csv; outputs/<run>/config.yaml, run.json",
    ),
    "embed": (
        "outputs/<run>/fold{k}/best.pt (or the frozen extractor's weights), outputs/prep/ "
        "(audio.int16, manifest.csv, test_pairs.csv), the fold's trials_fold{k}.csv",
        "outputs/<run>/fold{k}/embeddings.npz (OOF, test and cohort clips)",
    ),
    "score": (
        "outputs/<run>/fold*/embeddings.npz, outputs/folds/<K>fold-<hash>/trials_fold*.csv, "
        "outputs/prep/test_pairs.csv, input/public-test-labels.csv (optional answer key)",
        "outputs/<run>/: oof_scores.csv, test_scores.csv, metrics.json",
    ),
    "stack": (
        "each stacked run's (stack.experiments) oof_scores.csv, test_scores.csv and "
        "fold*/embeddings.npz (trial-graph features), outputs/prep/manifest.csv",
        "outputs/stack[-variant]/: oof_predictions.csv, test_predictions.csv, metrics.json, "
        "importances.csv, adversarial.csv/.json, stacker/ (read by export)",
    ),
    "submit": (
        "outputs/stack[-variant]/oof_predictions.csv and test_predictions.csv, "
        "input/public-test.csv, outputs/prep/fallback_pairs.csv",
        "outputs/submission[-variant].csv, outputs/submission_scores[-variant].csv",
    ),
    "report": (
        "each stacked run's oof_scores.csv, test_scores.csv, metrics.json, fold*/history.csv; "
        "outputs/stack[-variant]/; outputs/prep/manifest.csv; input/public-test.csv and "
        "public-test-labels.csv (optional)",
        "outputs/report[-variant]/: summary.md, metrics.json, PNG figures, by_duration.csv, "
        "by_gender.csv, eer_by_fold.csv (reused while its inputs are unchanged)",
    ),
    "export": (
        "outputs/stack[-variant]/ (stacker/, metrics.json, predictions), each stacked run's "
        "config.yaml, fold*/best.pt and fold*/embeddings.npz (AS-norm cohorts)",
        "outputs/bundle[-variant]/, or with export.onnx=true outputs/bundle-onnx[-variant]/",
    ),
    "serve": (
        "the bundle: serve.bundle, else outputs/bundle[-variant]/ (serve.runtime=onnx: "
        "outputs/bundle-onnx[-variant]/); nothing else from outputs/",
        "nothing: answers HTTP on serve.host:serve.port (POST /api/predict, "
        "/api/predict_batch; GET /health)",
    ),
    "pretrain": (
        "paths.input: a corpus of speaker folders (data.layout: speaker_folders) or Zalo layout",
        "paths.prep (its decoded cache), outputs/<run>/pretrained.pt and fold0/ (training state)",
    ),
}

# a numpy-style "Example(s)" section: its header, underline and lines up to a blank line
EXAMPLE = re.compile(r"^Examples?\n-+\n.*?(?:\n\s*\n|\Z)", re.MULTILINE | re.DOTALL)


def is_shell_example(section: str) -> bool:
    """Whether every ``>>>`` line of an Example section is a shell command a user runs (curl)."""
    lines = [line for line in section.splitlines() if line.startswith(">>>")]
    return bool(lines) and all(line.startswith(">>> curl ") for line in lines)


def without_examples(text: str) -> str:
    """``text`` without its numpy-style Example sections of Python doctest lines (``>>>``);
    an example of a shell command (curl) stays.

    >>> without_examples("Does X.\\n\\nExample\\n-------\\n>>> f(1)\\n2\\n\\nMore.")
    'Does X.\\n\\nMore.'
    """
    kept = EXAMPLE.sub(lambda m: m.group(0) if is_shell_example(m.group(0)) else "", text)
    return re.sub(r"\n{3,}", "\n\n", kept).strip()


def stage_help(stage: str, target: str) -> str:
    """The help of ``stage`` whose entry point is ``target`` (``"module:function"``)."""
    module, function = target.split(":")
    loaded = import_module(module)
    reads, writes = READS_WRITES.get(stage, ("", ""))
    parts = [
        f"usage: python -m src {stage} --config configs/X.yaml [options] [key.sub=value ...]",
    ]
    if reads:
        wrap = {"width": 100, "subsequent_indent": " " * 8, "break_on_hyphens": False}
        parts.append(
            textwrap.fill(f"Reads:  {reads}", **wrap)
            + "\n"
            + textwrap.fill(f"Writes: {writes}", **wrap)
        )
    parts.append(without_examples(inspect.getdoc(loaded) or ""))
    parts.append(without_examples(inspect.getdoc(getattr(loaded, function)) or ""))
    return "\n\n".join(p for p in parts if p) + "\n"
