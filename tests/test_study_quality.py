"""study_quality: each asset's figures written once, replaced per asset, read by everyone."""

import math

import polars as pl
import pytest

from carto_assets.storage import quality
from carto_assets.storage.quality import Figure
from carto_assets.storage.store import CartoStore


def _store(tmp_path) -> CartoStore:
    return CartoStore(tmp_path / "q.duckdb")


def test_an_asset_rewrite_replaces_only_its_own_rows(tmp_path):
    store = _store(tmp_path)
    store.replace_tables(
        {},
        figures=(
            "cluster_quality",
            [
                Figure("pair_recall", 0.97, "share of pairs found", name="recall", shown="0.970"),
                Figure("coverage", 0.25, "share of units clustered"),
            ],
        ),
    )
    store.replace_tables(
        {},
        figures=("concept_graph", [Figure("rho", 0.5, "rank correlation", name="faithfulness")]),
    )
    store.replace_tables(
        {"t": pl.DataFrame({"a": [1]})},
        figures=("cluster_quality", [Figure("pair_recall", 0.99, "share of pairs found")]),
    )
    rows = store.figures()
    assert quality.figures_of(rows) == {("pair_recall", None): 0.99, ("rho", None): 0.5}
    # The asset's table and its figures were published in one snapshot.
    assert store.query("SELECT a FROM t")["a"].to_list() == [1]


def test_headline_is_named_figures_in_pipeline_order(tmp_path):
    store = _store(tmp_path)
    store.replace_tables(
        {}, figures=("concept_graph", [Figure("rho", 0.5, "d", name="edge", shown="ρ 0.50")])
    )
    store.replace_tables(
        {},
        figures=(
            "cluster_quality",
            [
                Figure("a", 1.0, "d", name="first"),
                Figure("hidden", 2.0, "d"),
                Figure("b", 0.123456, "d", name="second"),
            ],
        ),
    )
    shown = quality.headline(store.figures())
    assert [(f["figure"], f["value"], f["asset"]) for f in shown] == [
        ("first", "1", "cluster_quality"),
        ("second", "0.123", "cluster_quality"),
        ("edge", "ρ 0.50", "concept_graph"),
    ]
    named = store.figures().filter(pl.col("name") != "")
    assert {f["figure"]: f["definition"] for f in shown} == dict(
        named.select("name", "definition").iter_rows()
    )
    assert quality.headline(None) == []


def test_metadata_groups_per_layer_figures_and_keeps_nan(tmp_path):
    store = _store(tmp_path)
    figures = [
        Figure("gain", float("nan"), "d"),
        *quality.per_layer("gain_by_layer", {"block1": 0.123456, "block2": 0.5}, "d"),
    ]
    store.replace_tables({}, figures=("cluster_quality", figures))
    meta = quality.metadata(store.figures(), "cluster_quality")
    assert math.isnan(meta["gain"])
    assert meta["gain_by_layer"] == {"block1": 0.1235, "block2": 0.5}


def test_bad_figures_are_refused_before_anything_is_published(tmp_path):
    store = _store(tmp_path)
    store.replace_tables({}, figures=("model", [Figure("acc", 0.9, "d")]))
    with pytest.raises(ValueError, match="twice"):
        store.replace_tables(
            {"t": pl.DataFrame({"a": [1]})},
            figures=("model", [Figure("acc", 0.9, "d"), Figure("acc", 0.8, "d")]),
        )
    assert not store.table_exists("t")
    assert quality.figures_of(store.figures()) == {("acc", None): 0.9}
    with pytest.raises(ValueError, match="study-level"):
        Figure("g", 1.0, "d", name="shown", layer="block1")
    with pytest.raises(ValueError, match="definition"):
        Figure("g", 1.0, "")


def test_figures_of_a_database_without_the_table_is_empty(tmp_path):
    store = _store(tmp_path)
    store.replace_tables({"t": pl.DataFrame({"a": [1]})})
    assert store.figures().height == 0
    assert store.figures().columns == [
        "asset",
        "figure",
        "layer",
        "value",
        "name",
        "shown",
        "definition",
        "position",
    ]
