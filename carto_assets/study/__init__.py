"""Study files: one model + one dataset + the layers to map + parameters.

A study is a YAML file chosen with the environment variable ``CARTO_STUDY``; without it the
built-in demo study (:data:`DEMO_STUDY`) runs. Its fields are the typed, frozen models in
:mod:`carto_assets.study.fields` (type, default, range and description of every field, in one
place). Everything is validated there, before any work, and an invalid study raises
:class:`StudyError` naming the field, what it must be and the value it got
(:mod:`carto_assets.study.messages`).

This package never imports dagster or torch, so a study can be checked anywhere.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from carto_assets.study.fields import (
    DATASET_KINDS,
    DEVICES,
    DIGITS_COUNT,
    LOADER_FIELDS,
    SHAPES_DEFAULT_SIZE,
    WEIGHTS_KEYWORDS,
    ClusteringConfig,
    DatasetConfig,
    EmbeddingConfig,
    ExplainConfig,
    FeaturesConfig,
    GraphConfig,
    Study,
    TrainingConfig,
)
from carto_assets.study.messages import StudyError, study_error, unknown_field

__all__ = [
    "DATASET_KINDS",
    "DEMO_STUDY",
    "DEVICES",
    "DIGITS_COUNT",
    "SHAPES_DEFAULT_SIZE",
    "STUDY_ENV_VAR",
    "WEIGHTS_KEYWORDS",
    "ClusteringConfig",
    "DatasetConfig",
    "EmbeddingConfig",
    "ExplainConfig",
    "FeaturesConfig",
    "GraphConfig",
    "Study",
    "StudyError",
    "TrainingConfig",
    "demo_study",
    "load_study",
    "study_from_dict",
]

STUDY_ENV_VAR = "CARTO_STUDY"

DEMO_STUDY: dict[str, Any] = {
    "name": "shapes-demo",
    "model": "builtin",
    "dataset": {"kind": "shapes", "size": 4000, "image_size": 64},
    "layers": "auto",
    "device": "auto",
    "batch_size": 128,
    "shards": 4,
    "top_k": 50,
    "seed": 0,
    "database": "data/carto.duckdb",
    # Dictionary features of the two deepest layers, mapped beside their channels.
    "features": {"layers": ["block3", "block4"]},
}


def study_from_dict(raw: dict[str, Any], base_dir: str | Path = ".") -> Study:
    """Validate a study mapping (as parsed from YAML) and return a :class:`Study`.

    Relative paths in it resolve against ``base_dir`` (the study file's folder).

    Raises
    ------
    StudyError
        Naming the first bad field, what it must be and the value it got.
    """
    if not isinstance(raw, dict):
        raise StudyError(f"a study must be a YAML mapping of fields, got {type(raw).__name__}")
    for field in LOADER_FIELDS:
        if field in raw:
            raise unknown_field(field)
    try:
        return Study.model_validate({**raw, "base_dir": str(Path(base_dir).resolve())})
    except ValidationError as exc:
        raise study_error(exc) from None


def demo_study() -> Study:
    """The built-in demo study, its paths relative to the current folder."""
    return study_from_dict(DEMO_STUDY, base_dir=Path.cwd())


def load_study(path: str | Path | None = None) -> Study:
    """Load the study at ``path``, else at ``$CARTO_STUDY``, else the built-in demo study.

    Reads and validates the file on every call: a step loads its study once
    (:class:`carto_assets.prepared.PreparedStudy`) and hands it down.
    """
    if path is None:
        path = os.environ.get(STUDY_ENV_VAR) or None
    if path is None:
        return demo_study()
    p = Path(path).expanduser().resolve()
    if not p.is_file():
        raise StudyError(f"study file not found: {p} (from {STUDY_ENV_VAR} or --study)")
    text = p.read_bytes()
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise StudyError(f"study file {p} is not valid YAML: {exc}") from exc
    try:
        return study_from_dict(raw, base_dir=p.parent)
    except StudyError as exc:
        raise StudyError(f"{p}: {exc}") from None
