"""Study files: one model + one dataset + the layers to map + parameters.

A study is a YAML file chosen with the environment variable ``CARTO_STUDY``; without it the
built-in demo study (:data:`DEMO_STUDY`) runs. Its fields are the typed, frozen models in
:mod:`carto_assets.study.fields` (type, default, range and description of every field, in one
place). Everything is validated there, before any work, and an invalid study raises
:class:`StudyError` naming the field, what it must be and the value it got
(:mod:`carto_assets.study.messages`). Study and comparison files share one loader
(:mod:`carto_assets.study.loading`) and one wording.

This package never imports dagster or torch, so a study can be checked anywhere.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from carto_assets.runtime.environment import STUDY_ENV_VAR
from carto_assets.study.blocks import (
    DATASET_KINDS,
    DIGITS_COUNT,
    SHAPES_DEFAULT_SIZE,
    AuditConfig,
    ClusteringConfig,
    DatasetConfig,
    EmbeddingConfig,
    ExplainConfig,
    FeaturesConfig,
    GraphConfig,
    LabelsConfig,
    ShortcutConfig,
    TrainingConfig,
)
from carto_assets.study.fields import DEVICES, WEIGHTS_KEYWORDS, Study
from carto_assets.study.loading import ConfigKind, config_file, config_from_dict, config_from_text
from carto_assets.study.messages import ConfigError, StudyError

__all__ = [
    "DATASET_KINDS",
    "DEMO_STUDY",
    "DEVICES",
    "DIGITS_COUNT",
    "SHAPES_DEFAULT_SIZE",
    "STUDY_ENV_VAR",
    "WEIGHTS_KEYWORDS",
    "AuditConfig",
    "ClusteringConfig",
    "ConfigError",
    "DatasetConfig",
    "EmbeddingConfig",
    "ExplainConfig",
    "FeaturesConfig",
    "GraphConfig",
    "LabelsConfig",
    "ShortcutConfig",
    "Study",
    "StudyError",
    "TrainingConfig",
    "demo_study",
    "load_study",
    "study_from_dict",
]

#: Study files, for the loader they share with comparisons.
STUDY = ConfigKind("study", Study, StudyError, source_hint=f" (from {STUDY_ENV_VAR} or --study)")

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
    return config_from_dict(STUDY, raw, base_dir)


def demo_study() -> Study:
    """The built-in demo study, its paths relative to the current folder."""
    return study_from_dict(DEMO_STUDY, base_dir=Path.cwd())


def load_study(path: str | Path | None = None) -> Study:
    """Load the study at ``path``, else at ``$CARTO_STUDY``, else the built-in demo study.

    Reads and validates the file on every call: a step loads its study once
    (:class:`carto_assets.stages.prepared.PreparedStudy`) and hands it down.
    """
    if path is None:
        path = os.environ.get(STUDY_ENV_VAR) or None
    if path is None:
        return demo_study()
    p = config_file(STUDY, path)
    text = p.read_bytes()
    return config_from_text(STUDY, p, text)
