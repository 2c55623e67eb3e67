"""Safe iteration: demo data only for the demo, runs that never collide, the leaderboard, CLI."""

from pathlib import Path

import pandas as pd
import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from src.cli import main
from src.config import load_config
from src.config_reference import config_reference, undocumented_keys
from src.data.demo import generate_demo
from src.inference.extractors import model_mismatches
from src.report.leaderboard import leaderboard
from src.runner import RunError, ensure_input, run_pipeline, stage_range
from tests.conftest import TINY

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "demo.yaml"


def test_stage_ranges_by_name_or_number_and_refusals() -> None:
    assert stage_range("train", "4") == ["train", "embed", "score"]
    assert stage_range("0", "export")[-1] == "export" and len(stage_range("0", "8")) == 9
    with pytest.raises(RunError, match="unknown stage '9'"):
        stage_range("9", "9")
    with pytest.raises(RunError, match="empty stage range"):
        stage_range("5", "3")


@pytest.mark.parametrize(
    "argv, code, message",
    [
        (["run", "--stage", "9"], 1, "unknown stage '9'"),
        (["run", "--stage", "stack", "--stop-stage", "folds"], 1, "empty stage range"),
        (["run", "train.epchs=3"], 2, "unknown config key 'train.epchs'"),
        (["run", "--config"], 2, "expected one argument"),
        (["run", "--bogus"], 2, "unrecognized arguments: --bogus"),
    ],
)
def test_bad_command_lines_are_one_error_line(argv, code, message, caplog) -> None:
    with caplog.at_level("ERROR"):
        assert main(argv) == code
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and message in errors[0]


def test_stage_help_says_what_a_stage_does(capsys) -> None:
    assert main(["score", "--help"]) == 0
    assert "oof_scores.csv" in capsys.readouterr().out


def test_config_reference_documents_every_key_and_is_current() -> None:
    assert undocumented_keys() == []
    assert (REPO / "configs" / "REFERENCE.md").read_text() == config_reference()


def test_demo_data_only_for_the_demo(tmp_path: Path) -> None:
    """A non-demo config with no data stops naming the folder; it never gets demo clips."""
    libri = load_config(REPO / "configs" / "libri.yaml", [f"paths.input={tmp_path / 'none'}"])
    with pytest.raises(RunError, match=r"none does not exist: put your data there"):
        ensure_input(libri, demo=False)
    (tmp_path / "empty").mkdir()
    empty = libri.model_copy(
        update={"paths": libri.paths.model_copy(update={"input": tmp_path / "empty"})}
    )
    with pytest.raises(RunError, match="is empty"):
        ensure_input(empty, demo=False)
    assert not any((tmp_path / "empty").iterdir())
    assert load_config(DEMO).data.demo and not libri.data.demo


def test_overrides_that_change_results_get_their_own_run() -> None:
    base = load_config(DEMO)
    assert (base.run_name, base.variant) == ("demo_cnn", None)
    assert load_config(DEMO, ["paths.outputs=elsewhere", "data.workers=1"]).run_name == "demo_cnn"
    assert load_config(DEMO, ["train.epochs=9"]).run_name == "demo_cnn"  # the config's value
    variant = load_config(DEMO, ["model.backbone=convnext_atto"])
    assert variant.run_name.startswith("demo_cnn-") and variant.variant
    assert variant.experiment_dir != base.experiment_dir and variant.stack_dir != base.stack_dir
    assert variant.submission_path != base.submission_path
    stack_only = load_config(DEMO, ["stack.model=logistic"])
    assert stack_only.run_name == "demo_cnn" and stack_only.stack_dir != base.stack_dir
    named = load_config(DEMO, ["model.width=0.5", "run=wide", "variant=wide"])
    assert named.experiment_dir.name == "wide" and named.stack_dir.name == "stack-wide"
    assert named.origin["changed"] == {"model.width": 0.5}


def test_fold_files_are_keyed_by_the_folds_settings() -> None:
    five, two = load_config(DEMO), load_config(DEMO, ["folds.n_folds=2"])
    assert five.folds_dir != two.folds_dir and five.folds_dir.parent == two.folds_dir.parent
    assert load_config(DEMO, ["seed=7"]).folds_dir != five.folds_dir


def test_a_checkpoint_of_other_model_settings_is_named_and_refused() -> None:
    cfg = load_config(DEMO)
    saved = cfg.model_dump(mode="json")
    assert model_mismatches(saved, cfg) == []
    saved["model"]["backbone"] = "efficientnet_b0"
    assert model_mismatches(saved, cfg) == ["model.backbone: 'efficientnet_b0' -> 'resnet18'"]


def _tiny_config_file(tmp_path: Path) -> Path:
    generate_demo(tmp_path / "data", n_speakers=8, clips_per_speaker=4, n_test_speakers=2,
                  test_clips_per_speaker=3, seed=2)  # fmt: skip
    settings: dict = {}
    for text in (*TINY, "train.epochs=2", "train.steps_per_epoch=2", "data.workers=1",
                 f"paths.input={tmp_path / 'data'}", f"paths.outputs={tmp_path / 'outputs'}",
                 f"paths.folds={tmp_path / 'folds'}", "tracking=tensorboard"):  # fmt: skip
        key, value = text.split("=", 1)
        *parents, leaf = key.split(".")
        node = settings
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


def test_a_variant_never_overwrites_and_the_leaderboard_lists_both(tmp_path: Path, capsys) -> None:
    path = _tiny_config_file(tmp_path)
    base = load_config(path)
    run_pipeline(base, stage_range("0", "7"))
    first = (base.fold_dir(0) / "best.pt").read_bytes(), base.submission_path.read_bytes()
    variant = load_config(path, ["head.margin=0.3"])
    run_pipeline(variant, stage_range("0", "7"))
    assert (base.fold_dir(0) / "best.pt").read_bytes() == first[0]
    assert base.submission_path.read_bytes() == first[1]
    assert variant.submission_path.is_file() and variant.submission_path != base.submission_path

    table = leaderboard(base.paths.outputs)
    assert len(table) == 4 and set(table["kind"]) == {"stack", "first level (AS-norm)"}
    assert table["oof_eer"].is_monotonic_increasing
    changed = dict(zip(table["run"], table["changed"], strict=True))
    assert changed[variant.run_name] == "head.margin=0.3" and changed[base.run_name] == ""
    assert main(["leaderboard", "--config", str(path)]) == 0
    assert variant.run_name in capsys.readouterr().out
    assert len(pd.read_csv(base.paths.outputs / "leaderboard.csv")) == 4
    assert (base.report_dir / "training_curves.png").stat().st_size > 0

    # the offline tensorboard log holds one run per first-level run and per stack
    runs = {folder.name: folder for folder in (base.paths.outputs / "tensorboard").iterdir()}
    assert len(runs) == 4 and {base.run_name, variant.run_name} <= set(runs)
    events = EventAccumulator(str(runs[variant.run_name]))
    events.Reload()
    assert [e.step for e in events.Scalars("fold0/loss")] == [1, 2]  # one point per epoch
    assert events.Scalars("oof/asnorm/eer")[0].value == pytest.approx(
        table.set_index("run").loc[variant.run_name, "oof_eer"]
    )
    stack = runs[f"{variant.stack_dir.name} ({variant.run_name})"]
    assert "figures/det" in EventAccumulator(str(stack)).Reload().Tags()["images"]


def test_progress_is_logged_when_the_output_is_not_a_terminal(caplog, monkeypatch) -> None:
    from src.util import logs

    monkeypatch.setattr(logs, "LOG_EVERY_S", 0.0)
    with caplog.at_level("INFO"):
        assert list(logs.progress(range(20), "embed", unit="batch")) == list(range(20))
    lines = [r.getMessage() for r in caplog.records if r.name == "src.progress"]
    assert len(lines) == 10 and lines[-1].startswith("embed: 20/20 batch")
