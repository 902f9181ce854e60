"""Shared fixtures: tiny offline studies in temporary folders."""

from pathlib import Path

import pytest
import torch
import yaml


def write_study(folder: Path, **fields) -> Path:
    """Write a study YAML into ``folder`` (database inside it) and return its path."""
    raw = {
        "name": "tiny",
        "dataset": {"kind": "shapes", "size": 240, "image_size": 32},
        "shards": 2,
        "top_k": 8,
        "batch_size": 50,
        "training": {"epochs": 1, "batch_size": 64},
        "database": "tiny.duckdb",
        "seed": 3,
    }
    raw.update(fields)
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture
def tiny_study(tmp_path) -> Path:
    return write_study(tmp_path)


@pytest.fixture(scope="session")
def make_study():
    """``make_study(folder, **fields)`` writes a tiny study YAML and returns its path."""
    return write_study


@pytest.fixture
def one_torch_thread():
    """One intra-op thread: on a shared 2-core machine, two threads per test oversubscribe."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


#: Dictionary features of one layer in the whole-graph fixture: small enough to train in
#: seconds, so every stage runs with a pseudo-layer between two mapped layers.
TINY_FEATURES = {
    "layers": ["block3"],
    "samples": 5000,
    "sample_images": 120,
    "epochs": 5,
    "batch_size": 256,
}


@pytest.fixture(scope="session")
def materialized(tmp_path_factory):
    """The whole asset graph materialized once on a tiny shapes study, with dictionary
    features of ``block3`` (pseudo-layer ``block3:features``).

    Returns (study, instance, study_file).
    """
    import dagster as dg

    from carto_assets.cli.run import materialize_all
    from carto_assets.study import load_study

    folder = tmp_path_factory.mktemp("study")
    study_file = write_study(folder, features=TINY_FEATURES)
    instance = dg.DagsterInstance.ephemeral()
    materialize_all(str(study_file), instance, say=lambda m: None)
    return load_study(study_file), instance, study_file


def pytest_collection_modifyitems(config, items):
    """Whatever materializes the whole asset graph is slow, marked or not, so that
    ``make test-fast`` (``-m "not slow and not browser"``) never runs it.

    Under pytest-xdist (``make test`` runs two workers, ``--dist loadgroup``) the tests of one
    shared session study run in one worker, which builds it once."""
    for item in items:
        if "materialized" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
            item.add_marker(pytest.mark.xdist_group("materialized"))
