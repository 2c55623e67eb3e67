"""A complete submission from the frozen encoders first, the full stack's after training.

With ``early_submission`` (on by default), a run of a config that trains a first level (the CNN,
its large-margin phase) and has frozen companions (pretrained encoders that need no training:
CAM++, GE2E) goes in this order (:func:`run_early_first`):

1. prepare and folds;
2. the frozen runs' embed and score, then their own second level under the variant
   ``frozen``: ``stack-frozen/``, ``submission-frozen.csv``, ``report-frozen/``,
   ``bundle-frozen/``. Each is copied at once to the run's own ``submission.csv``,
   ``submission_scores.csv`` and ``bundle/`` (:func:`promote_frozen`);
3. train, embed and score of the trained runs, and the full stack of every run (``stack/``);
4. the full stack writes ``submission.csv``, ``bundle/`` and ``report/`` when its OOF EER is not
   higher than the frozen stack's; otherwise its submission goes to ``submission-full.csv``
   (``report/`` describes it, without a bundle of its own), and the frozen one stays in place
   with its bundle.

The same choice is made by a run that starts later (``--stage stack``: the second level redone
after a change of its settings) once a frozen stack has finished. Stages run one at a time
(``python -m src submit``) write the config's own stack's answer and drop the record.

So a run stopped at any point leaves the best finished submission in ``submission.csv``;
``submission_source.json`` beside it says which stack wrote it, its OOF EER and when, and the
log says it at each point. A rerun reuses every finished stage: training resumes from its last
checkpoint. A frozen submission never replaces a full one made from the same data (manifest and
test pair list unchanged); after a change of data it does, until the full stack is redone.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from src.config import ExperimentConfig, companion_configs
from src.stages import SECOND_LEVEL_STAGES
from src.training.large_margin import first_level_configs
from src.util.io import atomic_path, write_json
from src.util.stage_cache import files_fingerprint

log = logging.getLogger("src.run")

FROZEN = "frozen"  # the variant of the frozen encoders' second level
FULL = "full"  # the suffix of the full stack's submission when the frozen one stays
SECOND_LEVEL = (*SECOND_LEVEL_STAGES, "export")


def is_frozen(run: ExperimentConfig) -> bool:
    """Whether a first level needs no training (a pretrained encoder used as it is)."""
    return run.extractor.kind != "cnn"


def frozen_and_trained(cfg: ExperimentConfig) -> tuple[list[ExperimentConfig], list[str]]:
    """The frozen first-level runs (installed companions included) and the trained runs'
    names (large-margin phases included), in the order the first-level stages take them."""
    runs = first_level_configs(cfg)
    return [r for r in runs if is_frozen(r)], [r.run_name for r in runs if not is_frozen(r)]


def applies(cfg: ExperimentConfig, stages: list[str]) -> bool:
    """Whether ``stages`` of ``cfg`` run frozen encoders first: ``early_submission`` is on,
    ``submit`` is among the stages, the stack is the config's own (no ``stack.experiments``)
    and submitted (``submit.source: stack``), there are both frozen and trained first levels,
    and the stages train, or a frozen stack has finished before (so that ``--stage stack``
    after a change of second-level settings keeps the better of the two as well)."""
    if not cfg.early_submission or cfg.stack.experiments or cfg.submit.source != "stack":
        return False
    if "submit" not in stages:
        return False
    frozen, trained = frozen_and_trained(cfg)
    if not frozen or not trained:
        return False
    finished = frozen_config(cfg, [r.run_name for r in frozen]).stack_dir / "metrics.json"
    return "train" in stages or finished.is_file()


def frozen_config(cfg: ExperimentConfig, frozen_runs: list[str]) -> ExperimentConfig:
    """``cfg``'s second level over the frozen runs alone, under the variant ``frozen``
    (``<variant>-frozen`` for a variant run): its own stack, report, submission and bundle."""
    variant = f"{cfg.variant}-{FROZEN}" if cfg.variant else FROZEN
    stack = cfg.stack.model_copy(update={"experiments": list(frozen_runs)})
    return cfg.model_copy(update={"variant": variant, "stack": stack})


def oof_eer(stack_dir: Path) -> float:
    """The stack's OOF EER (a fraction) from its ``metrics.json`` (``stack.eer``).

    Raises
    ------
    FileNotFoundError
        The stack has not finished.
    """
    path = stack_dir / "metrics.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run the stack stage for {stack_dir.name}")
    return float(json.loads(path.read_text())["stack"]["eer"])


def data_fingerprint(cfg: ExperimentConfig) -> str:
    """Content of the manifest and the test pair list: what a submission was made from."""
    return files_fingerprint(
        [cfg.paths.prep_dir / "manifest.csv", cfg.paths.input / cfg.data.test_csv]
    )


def read_source(cfg: ExperimentConfig) -> dict[str, Any]:
    """``submission_source.json`` (empty when there is none or it is unreadable)."""
    try:
        record = json.loads(cfg.submission_source_path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return record if isinstance(record, dict) else {}


def write_source(
    cfg: ExperimentConfig, source: str, stack_cfg: ExperimentConfig, eers: dict[str, float]
) -> None:
    """Record which stack wrote ``submission.csv`` (``source``: frozen or full), with the OOF
    EER of each stack compared and the data it was made from."""
    record = {
        "source": source,
        "stack": stack_cfg.stack_dir.name,
        "runs": stack_cfg.stacked_runs,
        "oof_eer": eers[source],
        "oof_eer_by_stack": eers,
        "data": data_fingerprint(cfg),
        "written": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    write_json(cfg.submission_source_path, record)


def copy_file(source: Path, target: Path) -> None:
    """Copy ``source`` onto ``target`` atomically (a reader sees the old or the new file)."""
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


def copy_bundle(source: Path, target: Path) -> bool:
    """Put a copy of the bundle folder ``source`` at ``target`` (replaced only when complete);
    nothing is copied (``False``) when ``target`` already holds the same bundle (same source
    stamp)."""
    from src.serve.export import bundle_stamp, replace_folder

    stamp = bundle_stamp(target)
    if stamp is not None and stamp == bundle_stamp(source):
        return False
    staging = target.with_name(f"{target.name}.partial-copy")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging)
    replace_folder(staging, target)
    return True


def drop_full_copies(cfg: ExperimentConfig) -> None:
    """Remove ``submission[_scores]-full.csv`` (a full stack's answer that lost on OOF): stale
    once the full stack wins or the data change."""
    loser = cfg.with_submission_name(FULL)
    for path in (loser.submission_path, loser.submission_scores_path):
        path.unlink(missing_ok=True)


def current_source(cfg: ExperimentConfig) -> str | None:
    """Which stack's answer ``submission.csv`` holds for the current data (``frozen`` or
    ``full``; ``None``: no record, or one made from other data)."""
    record = read_source(cfg)
    return record.get("source") if record.get("data") == data_fingerprint(cfg) else None


def install_frozen(cfg: ExperimentConfig, frozen: ExperimentConfig) -> None:
    """Copy the frozen stack's submission and its scores to the run's own names."""
    copy_file(frozen.submission_scores_path, cfg.submission_scores_path)
    copy_file(frozen.submission_path, cfg.submission_path)


def promote_frozen(cfg: ExperimentConfig, frozen: ExperimentConfig, elapsed: float) -> None:
    """Copy the frozen stack's submission to the run's own names, unless a full stack's
    submission of the same data is already there."""
    source = current_source(cfg)
    if source == FULL:
        log.info(
            "submission source: %s stays the full stack's (%s); the frozen stack's is %s",
            cfg.submission_path,
            read_source(cfg).get("stack"),
            frozen.submission_path,
        )
        return
    if source is None:
        drop_full_copies(cfg)  # made from other data, if any
    install_frozen(cfg, frozen)
    eer = oof_eer(frozen.stack_dir)
    write_source(cfg, FROZEN, frozen, {FROZEN: eer})
    log.info(
        "submission source: %s <- the frozen encoders' stack %s (%s; OOF EER %.2f %%), "
        "%.1f min into the run; it stays until the full stack (after training) is not worse",
        cfg.submission_path,
        frozen.stack_dir.name,
        ", ".join(frozen.stacked_runs),
        100 * eer,
        elapsed / 60,
    )


def promote_frozen_bundle(cfg: ExperimentConfig, frozen: ExperimentConfig) -> None:
    """Copy the frozen stack's exported bundle to the run's own bundle folder while the
    submission in place is the frozen stack's."""
    if read_source(cfg).get("source") == FROZEN and copy_bundle(frozen.bundle_dir, cfg.bundle_dir):
        log.info("bundle: %s <- %s (the submission's stack)", cfg.bundle_dir, frozen.bundle_dir)


def run_early_first(
    cfg: ExperimentConfig,
    stages: list[str],
    call: Callable[[str, ExperimentConfig], None],
) -> None:
    """Run ``stages`` (submit among them) frozen encoders first; ``call(stage, cfg)`` runs one
    stage (``src.runner`` times and logs it). After the frozen runs' own stages, the first-level
    stages run on the trained runs alone (a ``--force`` does not redo the frozen ones twice)."""
    started = time.perf_counter()
    frozen_runs, trained = frozen_and_trained(cfg)
    frozen = frozen_config(cfg, [r.run_name for r in frozen_runs])
    log.info(
        "early submission: the frozen encoders (%s) are stacked and submitted first, then %s "
        "train and the full stack replaces that submission if its OOF EER is not higher",
        ", ".join(r.run_name for r in frozen_runs),
        ", ".join(trained),
    )
    for stage in [s for s in stages if s in ("prepare", "folds")]:
        call(stage, cfg)
    for stage in ("embed", "score"):
        for run in frozen_runs:
            if stage in stages:
                call(stage, run)
    second = [s for s in SECOND_LEVEL if s in stages]
    for stage in second:
        call(stage, frozen)
        if stage == "submit":
            promote_frozen(cfg, frozen, time.perf_counter() - started)
        elif stage == "export":
            promote_frozen_bundle(cfg, frozen)
    # each trained config without its companions (its large-margin phase comes with it)
    trained_configs = [
        run.model_copy(update={"companions": []})
        for run in [cfg, *companion_configs(cfg)]
        if not is_frozen(run)
    ]
    for stage in [s for s in stages if s in ("train", "embed", "score")]:
        for run in trained_configs:
            call(stage, run)
    if "stack" in stages:
        call("stack", cfg)
    finish_full(cfg, frozen, [s for s in second if s != "stack"], call)


def finish_full(
    cfg: ExperimentConfig,
    frozen: ExperimentConfig,
    stages: list[str],
    call: Callable[[str, ExperimentConfig], None],
) -> None:
    """After the full stack: submit, export and report it in the run's own names when its OOF
    EER is not higher than the frozen stack's (export before report: the report reads the
    bundle it describes); else submit and report it as ``submission-full.csv`` (no bundle),
    leaving the frozen submission and bundle in place."""
    eers = {FROZEN: oof_eer(frozen.stack_dir), FULL: oof_eer(cfg.stack_dir)}
    if eers[FULL] <= eers[FROZEN]:
        drop_full_copies(cfg)
        for stage in [s for s in ("submit", "export", "report") if s in stages]:
            call(stage, cfg)
            if stage == "submit":
                write_source(cfg, FULL, cfg, eers)
                log.info(
                    "submission source: %s <- the full stack %s (%s; OOF EER %.2f %%, frozen "
                    "stack %.2f %%)",
                    cfg.submission_path,
                    cfg.stack_dir.name,
                    ", ".join(cfg.stacked_runs),
                    100 * eers[FULL],
                    100 * eers[FROZEN],
                )
        return
    loser = cfg.with_submission_name(FULL)
    for stage in [s for s in stages if s != "export"]:
        call(stage, loser)
    if current_source(cfg) != FROZEN:  # e.g. a full stack of this data redone since: worse now
        install_frozen(cfg, frozen)
    exported = "export" in stages and frozen.bundle_dir.is_dir()
    if exported:
        copy_bundle(frozen.bundle_dir, cfg.bundle_dir)
    write_source(cfg, FROZEN, frozen, eers)
    log.info(
        "submission source: %s stays the frozen encoders' stack %s (OOF EER %.2f %%): the full "
        "stack %s has a higher OOF EER (%.2f %%); its submission is %s, its report %s%s",
        cfg.submission_path,
        frozen.stack_dir.name,
        100 * eers[FROZEN],
        cfg.stack_dir.name,
        100 * eers[FULL],
        loser.submission_path,
        cfg.report_dir,
        f", and {cfg.bundle_dir} stays the frozen stack's" if exported else "",
    )
