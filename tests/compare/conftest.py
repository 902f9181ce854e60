"""Fixtures of the comparison tests (helpers in known.py)."""

from __future__ import annotations

import pytest
from compare.known import compare_in_process, permuted_pair, worded_trio, write_study_database

from carto_assets.study.comparison import load_comparison


@pytest.fixture(scope="session")
def write_study():
    return write_study_database


@pytest.fixture(scope="module")
def permuted(tmp_path_factory, write_study):
    """(comparison, permutation, store): 'orig' and its permuted 'copy', compared in process."""
    folder = tmp_path_factory.mktemp("permuted")
    comparison, perm = permuted_pair(folder, write_study)
    return comparison, perm, compare_in_process(comparison)


@pytest.fixture(scope="module")
def trio(tmp_path_factory, write_study):
    """(comparison, sets of 'a', sets of 'b', store): 'a' and 'b' with words, 'c' without
    (:func:`compare.known.worded_trio`), compared in process."""
    folder = tmp_path_factory.mktemp("trio")
    path, sets_a, sets_b = worded_trio(folder, write_study)
    comparison = load_comparison(path)
    return comparison, sets_a, sets_b, compare_in_process(comparison)
