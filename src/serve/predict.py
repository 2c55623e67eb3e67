"""``python -m src predict``: the served bundle's answers for a folder of clips and a pair list,
offline, exactly as ``/api/predict_batch`` answers them.

Every audio file of the folder (``data.extensions``, as ``prepare`` reads a test folder) is sent,
paired or not, so the folder is one trial graph; the pair list is read by the pipeline's one
pair-list reader (``src/data/pairs.py``). The batch goes through the API's own code
(:class:`src.serve.app.BundleService`, no HTTP): the graph stacker answers when the folder holds
at least ``serve.graph_min_share`` of the test clips it was fitted with, else the stacker without
graph features; every row says which (``stacker``).

Writes ``--out`` (default ``<outputs>/predictions.csv``): ``audio_1, audio_2`` as the list spells
them, ``label``, ``probability``, ``stacker``, ``error`` (a clip that cannot be decoded or must
not be scored: no label) and ``warnings``.

Example
-------
>>> python -m src predict --config configs/demo.yaml --audio input/public-test \\
...     --pairs input/public-test.csv --out answers.csv   # doctest: +SKIP
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pandas as pd

from src.config import ExperimentConfig
from src.data.pairs import DataLayoutError, clean_name, read_pair_list
from src.util.io import write_csv

log = logging.getLogger(__name__)


def folder_clips(folder: Path, extensions: list[str] | tuple[str, ...]) -> dict[str, bytes]:
    """``name -> file bytes`` of every audio file directly in ``folder`` (sorted names).

    Raises
    ------
    FileNotFoundError
        When ``folder`` is not a folder or holds no audio file.
    ValueError
        When two file names are equal once cleaned (:func:`src.data.pairs.clean_name`).
    """
    if not folder.is_dir():
        raise FileNotFoundError(f"predict: no folder {folder}")
    wanted = {e.lower() for e in extensions}
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in wanted)
    if not files:
        raise FileNotFoundError(f"predict: no audio file ({', '.join(sorted(wanted))}) in {folder}")
    clips: dict[str, bytes] = {}
    shown: dict[str, str] = {}
    for path in files:
        name = clean_name(path.name)
        if name in clips:  # as the API refuses two uploads of one name (upload_name)
            raise ValueError(
                f"predict: {shown[name]!r} and {path.name!r} in {folder} are the same name "
                f"{name!r} once normalised (Unicode NFC, surrounding spaces removed)"
            )
        clips[name], shown[name] = path.read_bytes(), path.name
    return clips


def predict_folder(
    cfg: ExperimentConfig, audio: Path, pairs_csv: Path, out: Path, stacker: str = "auto"
) -> pd.DataFrame:
    """Answer every pair of ``pairs_csv`` with the clips of ``audio`` and write ``out``.

    Raises
    ------
    FileNotFoundError
        A missing folder, pair list, or a file the pair list names (all such names listed).
    src.serve.bundle.BundleError
        No bundle, or a damaged one (see ``bundle.py``).
    """
    from .app import BundleService
    from .ensemble import BundleModel

    started = time.perf_counter()
    if not pairs_csv.is_file():
        raise FileNotFoundError(f"predict: no pair list {pairs_csv}")
    try:
        pair_list = read_pair_list(pairs_csv, log_rows=False)
    except DataLayoutError as err:
        raise ValueError(f"predict: {err}") from None
    uploads = folder_clips(audio, cfg.data.extensions)
    named = pd.concat([pair_list.pairs["audio_1"], pair_list.pairs["audio_2"]])
    missing = sorted(set(named) - uploads.keys())
    if missing:
        raise FileNotFoundError(
            f"predict: {pairs_csv} names {len(missing)} file(s) not in {audio}, e.g. {missing[:5]}"
        )
    model = BundleModel.load(cfg.served_bundle, cfg.serve.runtime)
    service = BundleService(model, cfg.serve, cfg.checks, stacker)
    batch = service.score_batch(uploads, pair_list.pairs.reset_index(drop=True))
    table = pd.DataFrame(
        {
            "audio_1": pair_list.written["audio_1"].to_numpy(),
            "audio_2": pair_list.written["audio_2"].to_numpy(),
            "label": pd.array([r.label for r in batch.results], dtype="Int64"),
            "probability": [r.probability for r in batch.results],
            "stacker": [r.stacker or "" for r in batch.results],
            "error": [r.error or "" for r in batch.results],
            "warnings": ["; ".join(r.warnings) for r in batch.results],
        }
    )
    write_csv(out, table)
    log.info(
        "predict: %d pairs of %d clips answered by the %s stacker (%s), %d refused, in %.1f s: %s",
        len(table),
        len(uploads),
        batch.stacker,
        batch.stacker_reason,
        batch.refused,
        time.perf_counter() - started,
        out,
    )
    return table
