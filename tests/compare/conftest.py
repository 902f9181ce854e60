"""Fixtures of the comparison tests (helpers in known.py)."""

from __future__ import annotations

import pytest
from compare.known import compare_in_process, permuted_pair, write_study_database


@pytest.fixture(scope="session")
def write_study():
    return write_study_database


@pytest.fixture(scope="module")
def permuted(tmp_path_factory, write_study):
    """(comparison, permutation, store): 'orig' and its permuted 'copy', compared in process."""
    folder = tmp_path_factory.mktemp("permuted")
    comparison, perm = permuted_pair(folder, write_study)
    return comparison, perm, compare_in_process(comparison)
