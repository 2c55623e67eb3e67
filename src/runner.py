"""The whole pipeline in one process: ``python -m src run`` (what ``bash run.sh`` calls).

One process imports torch once, so a fully cached rerun (every stage reused) takes seconds.
Stages are named or numbered (``--stage train --stop-stage 4``); an empty range is refused. Demo
data is generated only into the default ``input/`` by a demo config (``data.demo: true``), or
wherever ``--demo`` is given; an input folder that is missing or empty otherwise (one the user
named on the command line or in a config, or any folder of a non-demo config) stops with the
path and the expected layout.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from src import early_submission
from src.config import ExperimentConfig

log = logging.getLogger("src.run")

PIPELINE = ("prepare", "folds", "train", "embed", "score", "stack", "submit", "report", "export")
LAYOUT = (  # the expected layout, and the override for data elsewhere (in every no-data error)
    "train/<id>-<gender>-<age>/*.wav, public-test/*.wav and public-test.csv (audio_1,audio_2); "
    "data elsewhere: add paths.input=/path/to/data to the command line"
)


class RunError(ValueError):
    """A run that cannot start: bad stage range, no input data."""


def stage_index(text: str) -> int:
    """Position of a stage given by number (``"2"``) or name (``"train"``)."""
    if text.isdigit() and int(text) < len(PIPELINE):
        return int(text)
    if text in PIPELINE:
        return PIPELINE.index(text)
    choices = ", ".join(f"{i} {name}" for i, name in enumerate(PIPELINE))
    raise RunError(f"unknown stage {text!r}; choose one of: {choices}")


def stage_range(start: str, stop: str) -> list[str]:
    """The stages from ``start`` to ``stop`` inclusive.

    >>> stage_range("embed", "5")
    ['embed', 'score', 'stack']
    """
    first, last = stage_index(start), stage_index(stop)
    if first > last:
        raise RunError(
            f"empty stage range: --stage {start} ({PIPELINE[first]}) comes after "
            f"--stop-stage {stop} ({PIPELINE[last]})"
        )
    return list(PIPELINE[first : last + 1])


DEFAULT_INPUT = Path("input")  # paths.input's default: the only folder demo data goes to unasked


def has_input(folder: Path) -> bool:
    return folder.is_dir() and any(p.name != ".gitkeep" for p in folder.iterdir())


def is_default_input(folder: Path) -> bool:
    """Whether ``folder`` is the default ``input/`` (relative to the working directory)."""
    return Path(folder).resolve() == DEFAULT_INPUT.resolve()


def no_input_error(folder: Path, hint: str) -> RunError:
    """The error for a named input folder that is missing or empty: the path, the layout."""
    state = "is empty" if folder.is_dir() else "does not exist"
    return RunError(
        f"input folder {folder} {state}: put your data there in the Zalo layout ({LAYOUT}), {hint}"
    )


def is_demo_data(folder: Path) -> bool:
    """Whether ``folder`` holds the generated demo data set (it alone writes
    ``public-test-meta.csv``, the test speakers' identities)."""
    return (folder / "public-test-meta.csv").is_file()


def default_config(folder: Path, configs: Path) -> tuple[Path, str]:
    """The config ``bash run.sh`` uses without ``--config``, and why, from the data in ``folder``.

    The demo's toy settings apply to the demo data only: real data gets the GPU recipe
    (``zalo.yaml``) when CUDA is present, the CPU-sized one (``zalo_cpu.yaml``) otherwise.
    """
    if not has_input(folder):
        return configs / "demo.yaml", f"{folder} is empty: the demo"
    if is_demo_data(folder):
        return configs / "demo.yaml", f"{folder} holds the generated demo data: the demo"
    import torch

    if torch.cuda.is_available():
        return configs / "zalo.yaml", f"real data in {folder} and a CUDA GPU: the GPU recipe"
    return configs / "zalo_cpu.yaml", f"real data in {folder}, no GPU: the CPU-sized recipe"


def ensure_input(cfg: ExperimentConfig, demo: bool) -> None:
    """Check the data folder; generate the demo data there only for a demo run.

    Raises
    ------
    RunError
        For an input folder that is missing or empty, unless ``demo`` (``--demo``) asks for
        the demo data there, or a demo config (``data.demo``) reads the default ``input/``.
    """
    folder = cfg.paths.input
    if has_input(folder):
        return
    if not (demo or (cfg.data.demo and is_default_input(folder))):
        raise no_input_error(
            folder,
            "or point paths.input at it; demo data is generated only into the default input/ "
            "(configs/demo.yaml), or with --demo",
        )
    from src.data.demo import generate_demo

    log.info("%s is empty: generating the demo data set there", folder)
    partial = folder.with_name(folder.name + ".demo-partial")  # moved in only when complete
    shutil.rmtree(partial, ignore_errors=True)
    generate_demo(partial, seed=cfg.seed)
    folder.mkdir(parents=True, exist_ok=True)
    for item in partial.iterdir():
        item.rename(folder / item.name)
    partial.rmdir()


def adapted_runs(cfg: ExperimentConfig) -> list[str]:
    """The first-level runs of ``cfg`` (companions included) scored with ``score.adapt``."""
    from src.training.large_margin import first_level_configs

    return [r.run_name for r in first_level_configs(cfg) if r.score.adapt != "none"]


def run_pipeline(
    cfg: ExperimentConfig, stages: list[str], force: bool = False, demo: bool = False
) -> dict[str, float]:
    """Run ``stages`` in order in this process; returns each stage's wall time in seconds."""
    from src.stages import call_stage

    if "prepare" in stages or not (cfg.paths.prep_dir / "manifest.csv").is_file():
        ensure_input(cfg, demo)
    log.info("run %s (variant %s): stages %s", cfg.run_name, cfg.variant or "-", " ".join(stages))
    timings: dict[str, float] = {}

    def timed(stage: str, run: ExperimentConfig) -> None:
        label = stage if run is cfg else f"{stage} ({run.run_name}, {run.variant or '-'})"
        if stage in ("submit", "report") and run.submission_path != cfg.submission_path:
            label = f"{stage} ({run.run_name}, {run.submission_path.name})"
        log.info("stage %s", label)
        started = time.perf_counter()
        call_stage(stage, run, force=force)
        seconds = time.perf_counter() - started
        timings[stage] = timings.get(stage, 0.0) + seconds
        log.info("stage %s done in %.1f s", label, seconds)

    if "export" in stages and (adapted := adapted_runs(cfg)):
        log.warning(
            "export skipped: %s scored with score.adapt=%s (test-set adaptation), which the "
            "served bundle cannot compute for single pairs; the submission and report stand",
            ", ".join(adapted),
            cfg.score.adapt,
        )
        stages = [s for s in stages if s != "export"]
    if early_submission.applies(cfg, stages):
        early_submission.run_early_first(cfg, stages, timed)
    else:
        for stage in stages:
            timed(stage, cfg)
    wrote = f"; submission: {cfg.submission_path}" if "submit" in stages else ""
    if "submit" in stages and cfg.submission_source_path.is_file():
        record = early_submission.read_source(cfg)
        wrote += f" (from {record.get('stack')}, OOF EER {100 * record.get('oof_eer', 0):.2f} %)"
    log.info("done in %.1f s%s", sum(timings.values()), wrote)
    return timings
