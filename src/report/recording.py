"""The report's "Recording conditions" section: how much the answers lean on how clips were
recorded, and which test files are outside the model's range.

- the served bundle's stacker with and without the recording-condition features (OOF figures
  from the stack's ``metrics.json``: ``bundle_stackers``), so the cost of leaving them out, the
  default ``export.recording_features=false``, is visible;
- the invariance check of the last exported bundle (``invariance.csv`` beside its manifest:
  answers changed when one clip's gain, DC offset or channel layout is altered);
- per test file, the warnings the API would give for it (``src/data/checks.py``, a short clip's
  flag first), written to ``file_warnings.csv``.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from src.config import ExperimentConfig
from src.data.checks import recording_warnings, short_clip_note
from src.util.io import read_json

STACKER_NAMES = {
    "content_only": "without the recording group (content only)",
    "with_recording": "with the recording group (level, SNR, bytes, channels, sample rate)",
}


def file_warnings(manifest: pd.DataFrame, cfg: ExperimentConfig) -> pd.DataFrame:
    """``name``, ``warning``: one row per warning about a test file (none: an empty table)."""
    rows = []
    for facts in manifest[manifest["split"] == "test"].to_dict("records"):
        said = recording_warnings(
            facts, cfg.checks, cfg.embed.window_seconds, cfg.data.silence_dbfs
        )
        short = short_clip_note(float(facts["duration"]), cfg.data.short_clip_seconds)
        rows += [(facts["name"], line) for line in ([short] if short else []) + said]
    return pd.DataFrame(rows, columns=["name", "warning"])


def bundle_stackers(cfg: ExperimentConfig) -> pd.DataFrame | None:
    """OOF figures of the bundle stacker with and without the recording group, which is served."""
    path = cfg.stack_dir / "metrics.json"
    if not path.is_file():
        return None
    metrics = read_json(path)
    variants = metrics.get("bundle_stackers") or {}
    if not variants:
        return None
    served = "with_recording" if cfg.export.recording_features else "content_only"
    return pd.DataFrame(
        [
            {
                "bundle stacker": STACKER_NAMES.get(name, name),
                "OOF EER": f"{100 * figures['eer']:.2f} %",
                "minDCF 0.01": f"{figures['min_dcf_0.01']:.3f}",
                "served": "yes" if name == served else "",
            }
            for name, figures in variants.items()
        ]
    )


def bundle_invariance(cfg: ExperimentConfig) -> dict[str, Any] | None:
    """The invariance summary of the exported bundle (``None``: no bundle, or no check)."""
    path = cfg.bundle_dir / "manifest.json"
    if not path.is_file():
        return None
    manifest = read_json(path)
    found = manifest.get("invariance")
    return None if not found else found | {"created": manifest.get("created")}


def recording_markdown(
    stackers: pd.DataFrame | None,
    invariance: dict[str, Any] | None,
    warnings: pd.DataFrame | None,
    table: Any,
) -> list[str]:
    """The section's lines; ``table`` renders a frame as markdown (the report's own)."""
    lines = ["", "## Recording conditions", ""]
    if stackers is not None:
        lines += [
            "The exported bundle's stacker, with and without the recording-condition features "
            "(OOF; `export.recording_features` chooses which is served):",
            "",
            table(stackers),
            "",
        ]
    if invariance is not None:
        rows = pd.DataFrame(invariance["alterations"])
        with_recording = "with" if invariance.get("recording_features") else "without"
        lines += [
            f"Invariance of the bundle exported {invariance.get('created')} (stacker "
            f"{with_recording} the recording group): {invariance['pairs']} test pairs "
            "re-answered with the second clip altered (`invariance.csv` in the bundle):",
            "",
            table(rows.round(6)),
            "",
        ]
    else:
        lines += ["No exported bundle with an invariance check yet (run `export`).", ""]
    if warnings is not None and len(warnings):
        shown = warnings.head(20)
        lines += [
            f"{warnings['name'].nunique()} test file(s) are outside the model's range "
            f"({len(warnings)} warning(s), all in `file_warnings.csv`):",
            "",
            table(shown),
        ]
    elif warnings is not None:
        lines.append("No test file is outside the model's range (`checks.*`).")
    return lines
