"""The bundle's on-disk contract: its layout, its manifest, and the checks made before serving.

A bundle is one folder that holds everything the API needs and nothing from ``outputs/``::

    manifest.json                 format, versions, checksums, threshold, OOF figures
    stack/config.yaml             the stacking run's resolved config
    stack/stacker/stacker.json    groups of experiments, feature columns, fold models
    stack/stacker/group{g}_fold{k}.txt|.json   LightGBM model text; logistic or blend as JSON
    stack/graph_stacker/...       the submission's stacker (trial-graph features in), same layout;
                                  stacker.json also names each graph's experiments and settings
    experiments/<run>/config.yaml              the run's resolved config, paths inside the bundle
    experiments/<run>/fold{k}/best.pt          the fold model (weights, config, gender head)
    experiments/<run>/fold{k}/cohort.npy       AS-norm cohort: unit speaker means
    experiments/<run>/fold{k}/held_out.npy     with a graph stacker: the fold's held-out clips'
                                               unit embeddings, the fixed rows of its trial graph
    experiments/<run>/fold{k}/model.onnx       with export.onnx: the fold model after its front-end
    experiments/<run>/model.onnx               with export.onnx: a frozen model, for every fold
    experiments/<run>/files/...                weights an extractor reads (pretrained, onnx kinds)

:func:`verify_bundle` reads the manifest and refuses a damaged bundle (a file missing, changed or
truncated: its size or sha256 differs) or an incompatible one (another format version, a package
the experiments need that is not installed), each with a :class:`BundleError` that says what is
wrong and how to get a good bundle. (One sample rate for all runs is checked at export.)
"""

from __future__ import annotations

import importlib.metadata
import json
import platform
from pathlib import Path
from typing import Any

import yaml

from src.config import ExperimentConfig, config_from_dict
from src.util.stage_cache import file_digest

FORMAT = "speaker-verification-bundle"
FORMAT_VERSION = 2  # 2: blended stackers; the logistic model clips its features
MANIFEST = "manifest.json"
STACK = "stack"
EXPERIMENTS = "experiments"
HELD_OUT_FILE = "held_out.npy"  # a fold's held-out clips' embeddings: its trial graph's fixed rows
PACKAGES = ("torch", "numpy", "pandas", "lightgbm", "scikit-learn", "onnxruntime", "resemblyzer")
EXPORT_AGAIN = "export it again (python -m src export --config ...)"


class BundleError(ValueError):
    """A bundle that cannot be served: missing, damaged or incompatible (the message says which)."""


def package_versions() -> dict[str, str | None]:
    """Versions of the packages a bundle's numbers depend on (``None``: not installed)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        versions[name] = package_version(name)
    return versions


def checksums(root: Path) -> dict[str, dict[str, Any]]:
    """``relative path -> {bytes, sha256}`` of every file under ``root`` but the manifest."""
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST)
    return {
        p.relative_to(root).as_posix(): {"bytes": p.stat().st_size, "sha256": file_digest(p)}
        for p in files
    }


def read_manifest(root: Path) -> dict[str, Any]:
    """The manifest of the bundle at ``root``; a missing or unreadable one is a BundleError."""
    path = root / MANIFEST
    if not root.is_dir():
        raise BundleError(
            f"no bundle at {root}: run the export stage first "
            "(python -m src export --config ..., or bash run.sh)"
        )
    if not path.is_file():
        raise BundleError(f"{root} is not a bundle: {MANIFEST} is missing; {EXPORT_AGAIN}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BundleError(f"{path} is not valid JSON ({err}); {EXPORT_AGAIN}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{path} is not a {FORMAT} manifest; {EXPORT_AGAIN}")
    return manifest


def verify_bundle(root: Path) -> dict[str, Any]:
    """Read and check the bundle at ``root``; returns its manifest.

    Raises
    ------
    BundleError
        Another format version, a file listed in the manifest missing or changed, or a package
        the bundle's experiments need missing.
    """
    manifest = read_manifest(root)
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(
            f"{root}: bundle format {version}, this code reads format {FORMAT_VERSION}; "
            f"{EXPORT_AGAIN} with this version of the code"
        )
    files = manifest.get("files", {})
    if not files:
        raise BundleError(f"{root}: the manifest lists no files; {EXPORT_AGAIN}")
    for name, expected in files.items():
        path = root / name
        if not path.is_file():
            raise BundleError(f"{root} is damaged: {name} is missing; {EXPORT_AGAIN}")
        size = path.stat().st_size
        if size != expected["bytes"]:
            raise BundleError(
                f"{root} is damaged: {name} has {size} bytes, the manifest says "
                f"{expected['bytes']}; {EXPORT_AGAIN}"
            )
        if file_digest(path) != expected["sha256"]:
            raise BundleError(
                f"{root} is damaged: the sha256 of {name} differs from the manifest's; "
                f"{EXPORT_AGAIN}"
            )
    needed = [p for p in manifest.get("requires", []) if package_version(p) is None]
    if needed:
        raise BundleError(
            f"{root} needs the package(s) {needed}, which are not installed here "
            "(pip install -r requirements-resemblyzer.txt for resemblyzer)"
        )
    return manifest


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def version_warnings(manifest: dict[str, Any]) -> list[str]:
    """Packages whose installed version differs from the one the bundle was exported with: it
    still serves, but the numbers may drift from the measured ones."""
    here = package_versions()
    warnings = []
    for name, then in manifest.get("versions", {}).items():
        now = here.get(name)
        if then is not None and now is not None and now != then and name != "python":
            warnings.append(f"{name} {now} here, {then} when the bundle was exported")
    return warnings


def bundle_config(root: Path, name: str) -> ExperimentConfig:
    """A run's config inside a bundle, its paths pointed into the bundle."""
    settings = yaml.safe_load((root / EXPERIMENTS / name / "config.yaml").read_text("utf-8"))
    settings["paths"]["outputs"] = str(root / EXPERIMENTS)
    for section, key in (("model", "weights"), ("extractor", "path")):
        value = settings[section].get(key)
        if value is not None and not Path(value).is_absolute():
            settings[section][key] = str(root / value)
    return config_from_dict(settings)
