"""`carto compare` on real study results: the tiny whole-graph study against a copy of itself
under another name (its database and files copied), so the answer is known: every unit is its
own copy's match, and CKA through the two (identical) networks is 1 layer for layer."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

from carto_assets.stages.comparison import layer_activations
from carto_assets.stages.prepared import PreparedStudy
from carto_assets.storage.store import CartoStore
from carto_assets.study import load_study
from carto_assets.study.comparison import load_comparison

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compared(materialized, tmp_path_factory):
    study, _, study_file = materialized
    folder = tmp_path_factory.mktemp("copy")
    raw = yaml.safe_load(study_file.read_text())
    copy_file = folder / "copy.yaml"
    copy_file.write_text(yaml.safe_dump({**raw, "name": "tiny-copy", "database": "copy.duckdb"}))
    copy = load_study(copy_file)
    shutil.copyfile(study.database_path, copy.database_path)
    shutil.copytree(study.files_dir, copy.files_dir)
    comparison = folder / "cmp.yaml"
    comparison.write_text(
        yaml.safe_dump(
            {
                "name": "tiny-vs-copy",
                "studies": [str(study_file), str(copy_file)],
                "cka_images": 60,
                "null_draws": 1,
                "embedding": {"epochs": 2},
            }
        )
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.setdefault("NUMBA_CACHE_DIR", str(ROOT / ".numba_cache"))
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "carto_assets.cli.main",
            "compare",
            str(comparison),
            "-v",
            "--dagster-home",
            str(folder / "dagster"),
        ],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    result = load_comparison(comparison)
    return study, result, CartoStore(result.database_path), out


def test_every_unit_matches_its_copy_and_cka_is_one(compared):
    _, comparison, store, out = compared
    units = store.query("SELECT unit_id, study, layer FROM compare_units ORDER BY unit_id")
    n = len(units) // 2
    assert "block3:features" in units["layer"].to_list()
    matches = store.query(
        "SELECT unit_id, match_id, jaccard, mutual FROM unit_matches ORDER BY unit_id"
    )
    assert len(matches) == 2 * n
    assert (matches["jaccard"] == 1.0).all() and matches["mutual"].all()
    # A unit is its copy's match unless another unit of its study has the same top images in
    # the same order (then either is right).
    top = store.query(
        f"SELECT unit_id, rank, image_id FROM compare_top_images WHERE unit_id < {n} ORDER BY ALL"
    )
    keys = top.group_by("unit_id", maintain_order=True).agg(pl.col("image_id"))
    duplicated = keys.filter(pl.col("image_id").is_duplicated())["unit_id"].to_list()
    own = matches.filter(~pl.col("unit_id").is_in(duplicated) & (pl.col("unit_id") < n))
    assert own.height > 0.9 * n
    assert (own["match_id"] == own["unit_id"] + n).all()
    layers = store.query("SELECT * FROM layer_matches WHERE study = 'tiny'")
    same = layers.filter(pl.col("layer") == pl.col("other_layer"))
    assert np.allclose(same["cka"].to_numpy(), 1.0)
    assert (same["share"] == 1.0).all()
    assert layers.filter(pl.col("layer") != pl.col("other_layer"))["share"].max() == 0.0
    # The copy has the same words: every cluster with words is shared, matched by them; a
    # cluster without words is no concept (no status).
    concepts = store.query("SELECT status, formula, matched_by FROM concept_matches")
    assert (concepts["matched_by"] == "formula").all()
    assert concepts.filter(pl.col("formula").is_not_null())["status"].to_list() == (
        ["shared"] * concepts["formula"].is_not_null().sum()
    )
    assert concepts.filter(pl.col("formula").is_null())["status"].is_null().all()
    assert "(matched by words; " in out.stdout
    assert "'tiny' vs 'tiny-copy': 100.0% of units with a mutual match" in out.stdout
    assert "STEP_SUCCESS" in out.stderr  # -v: Dagster's event log on the terminal
    assert f"Page:     {comparison.views_path / 'index.html'}" in out.stdout
    assert (comparison.views_path / "index.html").is_file()


def test_cka_activations_are_the_ones_the_study_stored(compared):
    study, *_ = compared
    stored = CartoStore(study.database_path).query(
        "SELECT neuron_id, image_id, activation FROM top_images WHERE rank = 1 ORDER BY neuron_id"
    )
    images = np.unique(stored["image_id"].to_numpy())
    values, layers = layer_activations(PreparedStudy.open(study), images, batch_size=32)
    column = np.searchsorted(images, stored["image_id"].to_numpy())
    recomputed = values[column, stored["neuron_id"].to_numpy()]
    assert len(layers) == values.shape[1] == stored.height
    assert np.allclose(recomputed, stored["activation"].to_numpy(), rtol=1e-4, atol=1e-5)
