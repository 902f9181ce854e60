"""The README tier: what the README shows, typed as a user types it, on studies written here
(helpers in walk.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from readme.walk import BUILTIN_STUDY, CARTO, Ran, run, write_awkward_folder, write_study


@pytest.fixture(scope="session")
def awkward_study(tmp_path_factory) -> tuple[Path, Path, dict[str, int]]:
    """(folder, study file, what the image folder holds): the builtin study, not yet run."""
    folder = tmp_path_factory.mktemp("awkward")
    holds = write_awkward_folder(folder / "images")
    return folder, write_study(folder, "builtin", BUILTIN_STUDY), holds


@pytest.fixture(scope="session")
def first_run(awkward_study) -> Ran:
    """``carto run --study builtin.yaml`` from the study's folder, once per session."""
    folder, study, _ = awkward_study
    return run([CARTO, "run", "--study", study.name], cwd=folder)
